"""Served TTFT (issue #14): the remote (Redis) tier vs the memory tier vs full prefill, and the HTTP server's overhead.

One run, side by side, interleaved round by round (medians over ``--repeats`` after one warm-up round). Every
method is one streaming ``POST /v1/chat/completions`` to a real uvicorn server (in this process, on loopback) over
one engine whose store is memory -> remote (a private ``redis-server`` started here, on loopback):

  full           mode="full": the whole prompt prefilled (no KV reuse)
  block_cold     every tier cleared first: passages encoded alone, stored (memory + Redis), final block run
  warm_remote    memory tier cleared first: every passage read from Redis (and promoted), final block run
  warm_memory    every passage in the memory tier

For each: engine TTFT (``block_attention.ttft_ms`` of the response: from planning the request to the first token)
and HTTP TTFT (client clock: sending the request to receiving the first token's chunk; ``max_tokens=1`` so that
chunk is sent right after the first token). ``overhead = HTTP TTFT - engine TTFT`` is what the server adds
(HTTP parsing, validation, hand-off to the model thread, SSE framing, loopback). Not measured: a Redis on another
machine (network latency and bandwidth add to ``warm_remote``), concurrent load, GPUs.

Outputs: a table on stdout, ``<out>/server-<timestamp>.json`` (with versions and hardware) and a final single-line
JSON on stdout. The default model is Qwen2-0.5B-shaped with random weights (timings only).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import bench_common as bc
import httpx
import torch

from block_attention import BlockAttentionEngine, StoreConfig
from block_attention.serving import ServerSettings, ServerThread, create_app
from block_attention.testing.redis_server import RedisProcess

METHODS = ("full", "block_cold", "warm_remote", "warm_memory")
LABELS = {"full": "full prefill", "block_cold": "block cold (encode + store)",
          "warm_remote": "block warm (remote: Redis)", "warm_memory": "block warm (memory)"}


def log(*parts: Any) -> None:
    print(*parts, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny model, few short passages, 2 rounds (CI smoke run)")
    ap.add_argument("--passages", type=int, default=None, help="passages per request (default 8, quick 3)")
    ap.add_argument("--passage-tokens", type=int, default=None, help="tokens per passage (default 256, quick 48)")
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5, quick 2)")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    ap.add_argument("--out", default=str(bc.HERE / "results"), help="directory for the JSON results")
    return ap.parse_args(argv)


def timed_request(client: httpx.Client, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """(HTTP TTFT in seconds, the ``block_attention`` object) of one streaming request."""
    started = time.perf_counter()
    first: float | None = None
    info: dict[str, Any] = {}
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if first is None and chunk["choices"] and "role" not in chunk["choices"][0]["delta"]:
                first = time.perf_counter()  # the first token's chunk (text, or the finish chunk)
            info = chunk.get("block_attention", info)
    assert first is not None and info, "the stream carried no token"
    return first - started, info


def main(argv: list[str] | None = None) -> int:
    bc.setup()
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    n_passages = args.passages or (3 if args.quick else 8)
    passage_tokens = args.passage_tokens or (48 if args.quick else 256)
    repeats = args.repeats or (2 if args.quick else 5)
    t_start = time.perf_counter()
    lm, tok, desc = bc.build_model(None, quick=args.quick, dtype=bc.parse_dtype(args.dtype), device="cpu",
                                   max_positions=32768)
    with RedisProcess(options={"maxmemory": "1gb", "maxmemory-policy": "allkeys-lru"}) as redis_proc:
        engine = BlockAttentionEngine(lm, tok, store=StoreConfig(memory_bytes=4 * 1024**3,
                                                                 remote_url=redis_proc.url))
        passages = bc.make_passages(engine.builder, n_passages, passage_tokens)
        question = bc.make_question(engine, 50)
        docs = [{"doc_id": b.doc_id, "text": b.text} for b in passages]
        body = {"messages": [{"role": "user", "content": question}], "documents": docs, "max_tokens": 1}
        store = engine.store
        assert store is not None
        prepare = {"full": lambda: None, "block_cold": store.clear,
                   "warm_remote": lambda: store.tier("memory").clear(), "warm_memory": lambda: None}
        samples: dict[str, list[tuple[float, dict[str, Any]]]] = {m: [] for m in METHODS}
        app = create_app(engine, ServerSettings(model_name=desc["name"]))
        with ServerThread(app) as server, httpx.Client(base_url=server.base_url, timeout=600) as client:
            for round_ in range(repeats + 1):  # round 0 warms everything up and is not kept
                for method in METHODS:
                    prepare[method]()
                    mode = "full" if method == "full" else "block"
                    http_s, info = timed_request(client, {**body, "mode": mode})
                    if round_:
                        samples[method].append((http_s, info))
                log(f"round {round_}/{repeats} done")
            kv_bytes = store.stats().as_dict()["tiers"]
        prompt_tokens = engine.plan(passages, question).layout.total_len
        engine.close()
    results = summarize(samples, repeats)
    results.update(benchmark="server", quick=args.quick, model=desc, passages=n_passages,
                   passage_tokens=passage_tokens, prompt_tokens=prompt_tokens, repeats=repeats,
                   kv_bytes_per_token=engine.kv_bytes_per_token, tiers=kv_bytes,
                   environment=bc.environment("cpu"), elapsed_s=round(time.perf_counter() - t_start, 1))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"server-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}.json"
    results["results_file"] = str(path)
    path.write_text(json.dumps(results, indent=2))
    print_table(results)
    print(json.dumps({k: results[k] for k in ("benchmark", "quick", "prompt_tokens", "passages", "repeats",
                                              "ttft_median_ms", "http_ttft_median_ms", "overhead_median_ms",
                                              "hits", "ratios", "results_file", "elapsed_s")}))
    return 0


def summarize(samples: dict[str, list[tuple[float, dict[str, Any]]]], repeats: int) -> dict[str, Any]:
    def median_ms(values: list[float]) -> float:
        return round(statistics.median(values) * 1000, 2)

    engine_ms = {m: round(statistics.median(info["ttft_ms"] for _, info in samples[m]), 2) for m in METHODS}
    http_ms = {m: median_ms([h for h, _ in samples[m]]) for m in METHODS}
    overhead = {m: round(statistics.median(h * 1000 - info["ttft_ms"] for h, info in samples[m]), 2)
                for m in METHODS}
    hits = {m: samples[m][-1][1]["hits_by_tier"] | {"misses": samples[m][-1][1]["misses"]} for m in METHODS}
    ratios = {
        "full_over_warm_memory": round(engine_ms["full"] / engine_ms["warm_memory"], 2),
        "full_over_warm_remote": round(engine_ms["full"] / engine_ms["warm_remote"], 2),
        "warm_remote_over_warm_memory": round(engine_ms["warm_remote"] / engine_ms["warm_memory"], 2),
    }
    return {"ttft_median_ms": engine_ms, "http_ttft_median_ms": http_ms, "overhead_median_ms": overhead,
            "hits": hits, "ratios": ratios}


def print_table(results: dict[str, Any]) -> None:
    log(f"\nServed TTFT, {results['prompt_tokens']} prompt tokens ({results['passages']} passages), "
           f"median of {results['repeats']} rounds, {results['model']['name']} ({results['model']['dtype']})")
    log(f"{'method':32} {'engine TTFT ms':>15} {'HTTP TTFT ms':>13} {'overhead ms':>12}  cache")
    for m in METHODS:
        log(f"{LABELS[m]:32} {results['ttft_median_ms'][m]:>15,.1f} {results['http_ttft_median_ms'][m]:>13,.1f} "
               f"{results['overhead_median_ms'][m]:>12,.1f}  {results['hits'][m]}")
    log(f"ratios: {results['ratios']}")


if __name__ == "__main__":
    raise SystemExit(main())
