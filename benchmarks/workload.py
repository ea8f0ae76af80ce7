"""A realistic RAG request stream: block cache vs prefix cache (vs no cache).

A corpus of passages with Zipf-like popularity; each question retrieves ``k`` distinct passages (popular ones
recur) ranked by a noisy score, so consecutive requests share many passages but rarely in the same order. All
three methods start empty and serve the same stream (interleaved request by request, so machine noise hits them
alike):

* ``block``: the engine with an in-memory KV store (cold start included; every passage is encoded once).
* ``prefix``: :class:`PrefixCache`, the previous request's DynamicCache reused up to the longest common prefix.
* ``full``: plain full prefill, no reuse (reference; ``--no-full`` skips it).

With ``--musique PATH`` (e.g. ``../shared/data/musique_s.json``: 150 real MuSiQue questions, 10 passages of about
550 tokens each; MuSiQue, Trivedi et al., TACL 2022, CC BY 4.0) the stream is real text instead: questions are asked
with Zipf-like popularity, each with its own top-``k`` passages in a noisy relevance order, keyed by content (a
passage shared by two questions is one cache entry).

Run alone: ``python benchmarks/workload.py [--quick] [--musique PATH]``; ``benchmarks/ttft.py`` runs the synthetic
stream as one of its sections.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from typing import Any

import bench_common as bc

from block_attention import Block, BlockAttentionEngine, StoreConfig


def retrieval_stream(corpus: list[Block], n_requests: int, k: int, *, zipf: float = 1.0,
                     seed: int = 0) -> list[list[Block]]:
    """Top-k lists: k distinct passages drawn by popularity, ordered by popularity + Gumbel noise (a retriever's
    score varies with the question, so the same passages come back in different orders)."""
    rng = random.Random(seed)
    ranks = list(range(len(corpus)))
    rng.shuffle(ranks)  # which passage is the most popular
    weight = {i: 1.0 / (ranks[i] + 1) ** zipf for i in range(len(corpus))}
    stream = []
    for _ in range(n_requests):
        keyed = [(math.log(weight[i]) - math.log(-math.log(rng.random() or 1e-12)), i) for i in range(len(corpus))]
        top = sorted(keyed, reverse=True)[:k]  # Gumbel top-k == weighted sampling without replacement
        stream.append([corpus[i] for _, i in top])
    return stream


def musique_stream(path: str, n_requests: int, k: int, *, zipf: float = 1.0,
                   seed: int = 0) -> tuple[list[tuple[str, list[Block]]], int]:
    """``(question, top-k passages)`` requests over a ``ctxs``/``question`` JSON file (MuSiQue form): questions drawn
    by popularity, each question's passages ordered by a noisy score. Returns the stream and the passage count."""
    import json as _json

    data = _json.loads(open(path, encoding="utf-8").read())
    rng = random.Random(seed)
    ranks = list(range(len(data)))
    rng.shuffle(ranks)
    weights = [1.0 / (ranks[i] + 1) ** zipf for i in range(len(data))]
    passages = {c["text"] for item in data for c in item["ctxs"]}
    stream = []
    for _ in range(n_requests):
        item = data[rng.choices(range(len(data)), weights)[0]]
        ctxs = [Block(c["text"], title=c.get("title") or None) for c in item["ctxs"]]  # keyed by content digest
        noisy = sorted(range(len(ctxs)), key=lambda j: j + rng.gauss(0, 2.0))  # retrieval order varies per ask
        stream.append((item["question"], [ctxs[j] for j in noisy[:k]]))
    return stream, len(passages)


def run_workload(model: Any, tokenizer: Any, *, device: str, corpus: list[Block], questions: list[str], k: int,
                 n_requests: int, include_full: bool = True, seed: int = 0, log: Any = print,
                 requests: list[tuple[str, list[Block]]] | None = None) -> dict[str, Any]:
    """Serve the stream (synthetic from ``corpus``/``questions``, or the given ``requests``) with all methods."""
    if requests is None:
        requests = [(questions[i % len(questions)], docs)
                    for i, docs in enumerate(retrieval_stream(corpus, n_requests, k, seed=seed))]
    n_requests = len(requests)
    block = BlockAttentionEngine(model, tokenizer, store=StoreConfig(memory_bytes=64 * 1024**3,
                                                                     memory_device=device if device != "cpu" else None))
    full_engine = BlockAttentionEngine(model, tokenizer, store=False)
    prefix = bc.PrefixCache(full_engine)
    seen: set[str] = set()
    rows: list[dict[str, Any]] = []
    for i, (question, docs) in enumerate(requests):
        bc.collect()
        row: dict[str, Any] = {"docs": [b.key for b in docs]}
        doc_hits = sum(b.key in seen for b in docs)
        seen.update(b.key for b in docs)
        t, out, _ = bc.timed(lambda: block.prefill(docs, question, mode="block"), device, measure_memory=False)
        s = out.stats
        row["block"] = {"ttft_s": t, "hits": s.hits, "misses": s.misses, "blocks": s.blocks, "doc_hits": doc_hits,
                        "encoded_tokens": s.encoded_tokens, "prompt_tokens": s.prompt_tokens}
        del out
        t, res, _ = bc.timed(lambda: prefix.prefill(docs, question), device, measure_memory=False)
        res.pop("logits")
        row["prefix"] = {"ttft_s": t, **res}
        if include_full:
            t, out, _ = bc.timed(lambda: full_engine.prefill(docs, question, mode="full"), device,
                                 measure_memory=False)
            row["full"] = {"ttft_s": t}
            del out
        rows.append(row)
        log(f"  request {i + 1:>3}/{n_requests}: block {bc.fmt_ms(row['block']['ttft_s'])} ms "
            f"({row['block']['hits']}/{row['block']['blocks']} blocks hit), prefix {bc.fmt_ms(row['prefix']['ttft_s'])}"
            f" ms (reused {row['prefix']['reused_tokens']}/{row['prefix']['prompt_tokens']} tokens)"
            + (f", full {bc.fmt_ms(row['full']['ttft_s'])} ms" if include_full else ""))
    return summarize(rows, k=k, corpus=len(corpus) or len({b.key for _, d in requests for b in d}),
                     include_full=include_full)


def summarize(rows: list[dict[str, Any]], *, k: int, corpus: int, include_full: bool) -> dict[str, Any]:
    n = len(rows)
    half = rows[n // 2:]  # steady state: the second half of the stream

    def mean(key: str, part: list[dict[str, Any]]) -> float:
        return statistics.fmean(r[key]["ttft_s"] for r in part)

    blocks = sum(r["block"]["blocks"] for r in rows)
    prefix_tokens = sum(r["prefix"]["prompt_tokens"] for r in rows)
    # a prefix-cache "hit" reuses at least one whole passage beyond the shared system prefix
    passage_hits = [r for r in rows if r["prefix"]["reused_tokens"] >= r["prefix"]["first_passage_end"]]
    out: dict[str, Any] = {
        "requests": n, "k": k, "corpus": corpus,
        "distinct_orders": len({tuple(r["docs"]) for r in rows}),
        "distinct_docs": len({d for r in rows for d in r["docs"]}),
        "block": {
            "block_hit_rate": sum(r["block"]["hits"] for r in rows) / blocks,  # prefix block included
            "doc_hit_rate": sum(r["block"]["doc_hits"] for r in rows) / (n * k),
            "encoded_tokens": sum(r["block"]["encoded_tokens"] for r in rows),
            "mean_ttft_s": mean("block", rows), "mean_ttft_steady_s": mean("block", half),
            "median_ttft_s": statistics.median(r["block"]["ttft_s"] for r in rows),
        },
        "prefix": {
            "token_reuse_rate": sum(r["prefix"]["reused_tokens"] for r in rows) / prefix_tokens,
            "request_hit_rate": len(passage_hits) / n,
            "prefilled_tokens": sum(r["prefix"]["prefilled_tokens"] for r in rows),
            "mean_ttft_s": mean("prefix", rows), "mean_ttft_steady_s": mean("prefix", half),
            "median_ttft_s": statistics.median(r["prefix"]["ttft_s"] for r in rows),
        },
        "rows": rows,
    }
    if include_full:
        out["full"] = {"mean_ttft_s": mean("full", rows), "mean_ttft_steady_s": mean("full", half),
                       "median_ttft_s": statistics.median(r["full"]["ttft_s"] for r in rows)}
    out["speedup_block_vs_prefix_mean"] = out["prefix"]["mean_ttft_s"] / out["block"]["mean_ttft_s"]
    return out


def print_summary(w: dict[str, Any], log: Any = print) -> None:
    b, p = w["block"], w["prefix"]
    log(f"\nRAG workload: {w['requests']} requests, top-{w['k']} of a {w['corpus']}-passage corpus "
        f"({w['distinct_docs']} passages used, {w['distinct_orders']} distinct orders)")
    log(f"  {'method':<14}{'hit rate':>24}{'mean TTFT ms':>15}{'steady ms':>12}{'median ms':>12}")
    block_rate = "%.0f%% docs (%.0f%% blocks)" % (100 * b["doc_hit_rate"], 100 * b["block_hit_rate"])
    prefix_rate = "%.0f%% tok, %.0f%% req" % (100 * p["token_reuse_rate"], 100 * p["request_hit_rate"])
    # hit rates: block cache = passages found in the store; prefix cache = share of prompt tokens reused and share of
    # requests that reused at least one whole passage
    log(f"  {'block cache':<14}{block_rate:>24}"
        f"{bc.fmt_ms(b['mean_ttft_s']):>15}{bc.fmt_ms(b['mean_ttft_steady_s']):>12}{bc.fmt_ms(b['median_ttft_s']):>12}")
    log(f"  {'prefix cache':<14}{prefix_rate:>24}"
        f"{bc.fmt_ms(p['mean_ttft_s']):>15}{bc.fmt_ms(p['mean_ttft_steady_s']):>12}{bc.fmt_ms(p['median_ttft_s']):>12}")
    if "full" in w:
        f = w["full"]
        log(f"  {'no cache':<14}{'-':>24}{bc.fmt_ms(f['mean_ttft_s']):>15}{bc.fmt_ms(f['mean_ttft_steady_s']):>12}"
            f"{bc.fmt_ms(f['median_ttft_s']):>12}")
    log(f"  block cache mean TTFT is {w['speedup_block_vs_prefix_mean']:.1f}x lower than the prefix cache's")


def main(argv: list[str] | None = None) -> None:
    bc.setup()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--requests", type=int, default=None)
    ap.add_argument("--k", type=int, default=None)
    ap.add_argument("--corpus", type=int, default=None)
    ap.add_argument("--passage-tokens", type=int, default=None)
    ap.add_argument("--no-full", action="store_true")
    ap.add_argument("--musique", default=None, metavar="PATH",
                    help="real passages: a ctxs/question JSON file such as ../shared/data/musique_s.json")
    args = ap.parse_args(argv)
    if args.threads or args.quick:
        bc.torch.set_num_threads(args.threads or 1)
    k = args.k or (3 if args.quick else 8)
    n = args.requests or (8 if args.quick else 24)
    corpus_n = args.corpus or (12 if args.quick else 48)
    ptoks = args.passage_tokens or (128 if args.quick else 256)
    requests, corpus, questions = None, [], []
    if args.musique:
        requests, corpus_n = musique_stream(args.musique, n, k)
        ptoks = 2000  # MuSiQue passages are about 550 words; room for any tokenizer (the random models use a small one)
    model, tok, desc = bc.build_model(args.model, quick=args.quick, dtype=bc.parse_dtype(args.dtype),
                                      device=args.device, max_positions=k * ptoks + 4096)
    engine = BlockAttentionEngine(model, tok, store=False)
    if requests is None:
        corpus = bc.make_passages(engine.builder, corpus_n, ptoks, prefix="corpus")
        questions = [bc.make_question(engine, 50, seed=i) for i in range(8)]
    t0 = time.perf_counter()
    w = run_workload(model, tok, device=args.device, corpus=corpus, questions=questions, k=k, n_requests=n,
                     include_full=not args.no_full, requests=requests)
    if args.musique:
        w["data"] = f"{args.musique} (MuSiQue, {corpus_n} distinct passages)"
    print_summary(w)
    w.pop("rows")
    print(json.dumps({"benchmark": "workload", "model": desc, "workload": w,
                      "elapsed_s": time.perf_counter() - t0}))


if __name__ == "__main__":
    sys.exit(main())
