"""Concurrent clients (issue #19): batched decoding vs serving requests one by one, in one run side by side.

Every passage is warmed into the memory tier first, so the run measures serving (final-block prefill + decoding),
not passage encoding. Then, for each client count ``c`` of ``--clients`` (default 1, 4, 8), ``c`` client threads
each send ``--rounds`` requests back to back (closed loop) to a
:class:`~block_attention.serving.batching.BatchScheduler` over one engine, in this process:

  sequential   max_batch=1: one request at a time in arrival order (the server before batching)
  batched      max_batch=c: concurrent requests' decode steps run as one forward (prefills one by one)

Each request: ``--context`` tokens of passages (a rotating choice from a pool of synthetic passages, so requests
differ), its own question, ``--max-new-tokens`` greedy tokens (EOS ignored, so every request makes all of them).
Per setting: tokens/s (all generated tokens / wall time from the first submit to the last answer), p50/p95 TTFT
(submit -> first token: queue wait + engine TTFT), mean request latency (submit -> last token), the largest batch
one forward decoded, and how many outputs are identical to greedy decoding of the request alone
(``engine.generate``, computed beforehand). Batched GEMMs are not bit-identical to one-row ones; in bf16 a greedy
near-tie can flip, which the identical count would show.

Outputs: a markdown table on stdout, ``<out>/concurrency-<timestamp>.json`` (with versions and hardware), a plot
``<out>/concurrency-<timestamp>.png`` and a final single-line JSON on stdout. The default model is Qwen2-0.5B-shaped
with random weights (timings only; ``--quick`` or ``--tiny-model``: a tiny one).
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import bench_common as bc
import torch

from block_attention import BlockAttentionEngine, StoreConfig
from block_attention.engine.decoding import DecodeState, decode_step
from block_attention.serving.batching import BatchScheduler

SETTINGS = ("sequential", "batched")


def log(*parts: Any) -> None:
    print(*parts, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny model, short contexts, clients 1,4 (CI smoke run)")
    ap.add_argument("--tiny-model", action="store_true", help="the tiny model with the other settings as given")
    ap.add_argument("--clients", default=None, help="comma-separated client counts (default 1,4,8; quick 1,4)")
    ap.add_argument("--rounds", type=int, default=None, help="requests per client (default 2, quick 1)")
    ap.add_argument("--context", type=int, default=None, help="context tokens per request (default 1024, quick 96)")
    ap.add_argument("--passage-tokens", type=int, default=None, help="tokens per passage (default 256, quick 32)")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="generated tokens per request (default 32, "
                                                                        "quick 8)")
    ap.add_argument("--dtype", default="bfloat16", help="bfloat16 (default) or float32")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--out", default=str(bc.HERE / "results"), help="directory for the JSON results and the plot")
    return ap.parse_args(argv)


def make_requests(engine: BlockAttentionEngine, n: int, context: int, passage_tokens: int,
                  max_new_tokens: int) -> tuple[list[dict[str, Any]], list[Any]]:
    """``n`` distinct requests of about ``context`` passage tokens each (rotating over a pool), and the pool."""
    per_request = max(1, round(context / passage_tokens))
    pool = bc.make_passages(engine.builder, max(2 * per_request, per_request + n), passage_tokens)
    requests = []
    for i in range(n):
        blocks = [pool[(i + j) % len(pool)] for j in range(per_request)]
        question = bc.make_question(engine, 30, seed=i)
        requests.append(dict(blocks=blocks, question=question, mode="block", max_new_tokens=max_new_tokens,
                             stop_on_eos=False))
    return requests, pool


def closed_loop(clients: int, rounds: int,
                serve: Callable[[int], dict[str, Any]]) -> tuple[list[dict[str, Any]], float]:
    """``clients`` threads, started together, each calling ``serve(index)`` for its ``rounds`` requests back to back
    (closed loop; client ``c`` serves indices ``c*rounds .. c*rounds+rounds-1``). Returns the records (each with its
    ``index``, sorted by it) and the wall seconds from the start to the last answer."""
    records: list[dict[str, Any]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def client(c: int) -> None:
        barrier.wait()
        for r in range(rounds):
            index = c * rounds + r
            record = serve(index)
            with lock:
                records.append({"index": index, **record})

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    return sorted(records, key=lambda r: r["index"]), wall


def run_setting(engine: BlockAttentionEngine, requests: list[dict[str, Any]], clients: int, rounds: int,
                max_batch: int) -> dict[str, Any]:
    """``clients`` closed-loop client threads over one scheduler; per-request timings and outputs."""
    rows: list[int] = []
    scheduler = BatchScheduler(engine, max_batch=max_batch, on_step=rows.append)

    def serve(index: int) -> dict[str, Any]:
        request = requests[index]
        submitted = time.perf_counter()
        stream = scheduler.stream(lambda: engine.plan_request(**request))
        for _ in stream:
            pass
        done = time.perf_counter()
        result = stream.result
        assert result is not None
        return {"ttft_s": stream.queue_s + result.stats.ttft_s, "latency_s": done - submitted,
                "tokens": len(result.token_ids), "token_ids": list(result.token_ids)}

    records, wall = closed_loop(clients, rounds, serve)
    scheduler.close()
    return {"records": records, "wall_s": wall, "max_batch_rows": max(rows, default=0), "decode_forwards": len(rows)}


def top2_margins(engine: BlockAttentionEngine, request: dict[str, Any]) -> tuple[list[int], list[float]]:
    """Greedy decoding of ``request`` alone through the public stages, with the gap between the two largest logits
    at every step (how close that step was to a tie); the tokens must equal ``engine.generate``'s."""
    plan, generation = engine.plan_request(**request)
    prefilled = engine.run_prefill(plan)[0]
    state = DecodeState(engine, plan, prefilled, generation)
    logits, margins = prefilled.logits[-1], []  # [V]
    while not state.finished:
        top = torch.topk(logits.float(), 2).values  # [2]
        margins.append(float(top[0] - top[1]))
        state.push(logits)
        if state.next_input is not None:
            logits = decode_step(engine.model, state, engine.device)  # [V]
    return list(state.result().token_ids), margins


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def first_difference(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def summarize(run: dict[str, Any], reference: list[list[int]], margins: list[list[float]]) -> dict[str, Any]:
    records = run["records"]
    tokens = sum(r["tokens"] for r in records)
    ttft = [r["ttft_s"] for r in records]
    identical = sum(r["token_ids"] == reference[r["index"]] for r in records)
    diverged = []  # where a batched output left the one-by-one output, and how near a tie that step was alone
    for r in records:
        if r["token_ids"] != reference[r["index"]]:
            step = first_difference(r["token_ids"], reference[r["index"]])
            gap = margins[r["index"]][step] if step < len(margins[r["index"]]) else None
            diverged.append({"request": r["index"], "step": step, "top2_margin_alone": gap})
    return {"requests": len(records), "tokens": tokens, "wall_s": round(run["wall_s"], 4),
            "tokens_per_s": round(tokens / run["wall_s"], 2),
            "ttft_p50_ms": round(1e3 * percentile(ttft, 0.5), 2), "ttft_p95_ms": round(1e3 * percentile(ttft, 0.95), 2),
            "latency_mean_ms": round(1e3 * statistics.mean(r["latency_s"] for r in records), 2),
            "identical": identical, "max_batch_rows": run["max_batch_rows"], "decode_forwards": run["decode_forwards"],
            "diverged": diverged}


def plot(results: dict[str, Any], path: Path) -> str | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed (pip install matplotlib); skipping the plot")
        return None
    levels = results["clients"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    styles = {"sequential": ("tab:gray", "s"), "batched": ("tab:blue", "o")}
    for setting in SETTINGS:
        color, marker = styles[setting]
        rows = [results["settings"][str(c)][setting] for c in levels]
        left.plot(levels, [r["tokens_per_s"] for r in rows], color=color, marker=marker, label=setting)
        right.plot(levels, [r["ttft_p50_ms"] for r in rows], color=color, marker=marker, label=f"{setting} p50")
        right.plot(levels, [r["ttft_p95_ms"] for r in rows], color=color, marker=marker, linestyle=":",
                   label=f"{setting} p95")
    left.set_ylabel("generated tokens / s (all clients)")
    right.set_ylabel("TTFT, ms (submit -> first token)")
    for ax in (left, right):
        ax.set_xlabel("concurrent clients")
        ax.set_xticks(levels)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{results['model']['name']} ({results['model']['dtype']}), {results['prompt_tokens']} prompt "
                 f"tokens, {results['max_new_tokens']} new tokens per request", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def print_table(results: dict[str, Any]) -> None:
    log(f"\nConcurrent clients, {results['model']['name']} ({results['model']['dtype']}), "
        f"{results['prompt_tokens']} prompt tokens (passages warm), {results['max_new_tokens']} new tokens, "
        f"{results['rounds']} request(s) per client\n")
    log("| clients | setting | tokens/s | TTFT p50 ms | TTFT p95 ms | mean latency ms | max batch | identical |")
    log("|--:|:--|--:|--:|--:|--:|--:|--:|")
    for c in results["clients"]:
        for setting in SETTINGS:
            r = results["settings"][str(c)][setting]
            log(f"| {c} | {setting} | {r['tokens_per_s']:,.1f} | {r['ttft_p50_ms']:,.1f} | {r['ttft_p95_ms']:,.1f} "
                f"| {r['latency_mean_ms']:,.1f} | {r['max_batch_rows']} | {r['identical']}/{r['requests']} |")
    log(f"\nbatched / sequential tokens/s: {results['speedup']}")
    margin = results["reference_top2_margin"]
    log(f"top-2 logit margin when decoded alone: median {margin['median']} over {margin['steps']} steps, "
        f"{margin['below_0.05']} below 0.05, min {margin['min']}")
    for c in results["clients"]:
        for d in results["settings"][str(c)]["batched"]["diverged"]:
            log(f"clients={c}: request {d['request']} left the one-by-one output at step {d['step']} "
                f"(top-2 margin there, decoded alone: {d['top2_margin_alone']})")


def main(argv: list[str] | None = None) -> int:
    bc.setup()
    args = parse_args(argv)
    t_start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    quick = args.quick
    levels = [int(c) for c in (args.clients or ("1,4" if quick else "1,4,8")).split(",")]
    if any(c < 1 for c in levels):
        raise SystemExit("--clients must list positive integers, e.g. 1,4,8")
    rounds = args.rounds or (1 if quick else 2)
    context = args.context or (96 if quick else 1024)
    passage_tokens = args.passage_tokens or (32 if quick else 256)
    max_new = args.max_new_tokens or (8 if quick else 32)
    lm, tok, desc = bc.build_model(None, quick=quick or args.tiny_model, dtype=bc.parse_dtype(args.dtype),
                                   device="cpu", max_positions=32768)
    engine = BlockAttentionEngine(lm, tok, store=StoreConfig(memory_bytes=8 * 1024**3))
    requests, pool = make_requests(engine, max(levels) * rounds, context, passage_tokens, max_new)
    warm = engine.warm(pool)
    log(f"warmed {warm.blocks} blocks ({warm.encoded_tokens} tokens)")
    reference = [list(engine.generate(**r).token_ids) for r in requests]  # greedy, alone (also warms the kernels)
    traced = [top2_margins(engine, r) for r in requests]
    assert [ids for ids, _ in traced] == reference, "the stage-by-stage decode must equal engine.generate"
    margins = [m for _, m in traced]
    every = sorted(m for ms in margins for m in ms)
    log(f"reference: {len(reference)} requests decoded alone; top-2 logit margin over {len(every)} steps: "
        f"median {statistics.median(every):.3f}, {sum(m < 0.05 for m in every)} steps below 0.05")
    settings: dict[str, dict[str, Any]] = {}
    for c in levels:
        subset = requests[: c * rounds]
        settings[str(c)] = {}
        for setting in SETTINGS:
            run = run_setting(engine, subset, c, rounds, 1 if setting == "sequential" else c)
            settings[str(c)][setting] = summarize(run, reference, margins)
            log(f"clients={c} {setting}: {settings[str(c)][setting]}")
    prompt_tokens = engine.plan(requests[0]["blocks"], requests[0]["question"]).layout.total_len
    results: dict[str, Any] = {
        "benchmark": "concurrency", "quick": quick, "model": desc, "clients": levels, "rounds": rounds,
        "context_tokens": context, "passage_tokens": passage_tokens, "prompt_tokens": prompt_tokens,
        "max_new_tokens": max_new, "settings": settings,
        "speedup": {str(c): round(settings[str(c)]["batched"]["tokens_per_s"]
                                  / settings[str(c)]["sequential"]["tokens_per_s"], 2) for c in levels},
        "all_identical": all(s["identical"] == s["requests"] for by in settings.values() for s in by.values()),
        "reference_top2_margin": {"steps": len(every), "median": round(statistics.median(every), 4),
                                  "below_0.05": sum(m < 0.05 for m in every), "min": round(every[0], 4)},
        "environment": bc.environment("cpu"),
    }
    engine.close()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    results["plot_file"] = plot(results, out / f"concurrency-{stamp}.png")
    path = out / f"concurrency-{stamp}.json"
    results["results_file"] = str(path)
    results["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    path.write_text(json.dumps(results, indent=2))
    print_table(results)
    print(json.dumps({k: results[k] for k in ("benchmark", "quick", "clients", "prompt_tokens", "max_new_tokens",
                                              "settings", "speedup", "all_identical", "reference_top2_margin",
                                              "results_file", "plot_file",
                                              "elapsed_s")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
