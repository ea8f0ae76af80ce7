"""Time to first token of Block-Attention vs full prefill vs transformers prefix-cache reuse (issue #5).

For each context length (N passages of ~256 tokens + a fixed ~50-token final block), side by side, interleaved
round by round so machine noise hits every method alike (medians over ``--repeats`` after ``--warmup`` rounds):

  full                  full-attention prefill of the whole prompt (engine mode="full")
  prefix_miss           transformers DynamicCache of the previous request, reused up to the longest common token
                        prefix; the retrieved passages come back in a different order, so only the system prefix
                        is reused (the common case in RAG)
  prefix_same_docs      prefix cache, same passages in the same order, new question (its realistic best case)
  prefix_identical      prefix cache, identical prompt (1 token prefilled; the absolute best case)
  block_cold            block-attention, empty KV store: passages encoded alone (batched), stored, final block run
  block_cold_fused      block-attention, empty KV store, EngineConfig(cold_prefill="fused"): passages and final block
                        in one forward with block-sparse attention, passages cut out and stored
  block_warm_memory     block-attention, every block in the memory tier
  block_warm_disk       block-attention after a restart: new KVStore on the same directory (empty memory tier),
                        every block read from the disk tier (OS page cache hot, as after a process restart)
  block_warm_disk_cold  same, after evicting the directory's pages from the OS page cache (fadvise DONTNEED)
  lower_bound           the final-block forward alone over an already-assembled cache

Also: analytic prefill FLOPs (full vs block), KV bytes per token, cache bytes per tier, store put/get throughput,
peak memory per method, and a realistic RAG request stream (benchmarks/workload.py). Outputs: a table on stdout,
``<out>/<timestamp>.json`` (with versions and hardware), ``<out>/<timestamp>.png`` (TTFT vs length, log y) and a
final single-line JSON on stdout.

The default model is Qwen2-0.5B-shaped with random weights built from a config (no download): timings are real,
outputs are meaningless. ``--model`` loads real weights (local path or hub id).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import random
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import bench_common as bc
import torch
import workload as wl

from block_attention import BlockAttentionEngine, EngineConfig, KVStore, StoreConfig
from block_attention.hf.compat import cache_kwargs, output_cache
from block_attention.store import serialize

METHODS = ("full", "prefix_miss", "prefix_same_docs", "prefix_identical", "block_cold", "block_cold_fused",
           "block_warm_memory", "block_warm_disk", "block_warm_disk_cold", "lower_bound")
LABELS = {
    "full": "full prefill", "prefix_miss": "prefix cache (order changed)",
    "prefix_same_docs": "prefix cache (same docs, new q)", "prefix_identical": "prefix cache (identical prompt)",
    "block_cold": "block cold", "block_cold_fused": "block cold (fused)", "block_warm_memory": "block warm (memory)",
    "block_warm_disk": "block warm (disk, restart)", "block_warm_disk_cold": "block warm (disk, page cache dropped)",
    "lower_bound": "final-block forward only",
}
SHORT = {"full": "full", "prefix_miss": "pfx-miss", "prefix_same_docs": "pfx-docs", "prefix_identical": "pfx-ident",
         "block_cold": "blk-cold", "block_cold_fused": "blk-fused", "block_warm_memory": "blk-mem", "block_warm_disk": "blk-disk",
         "block_warm_disk_cold": "blk-disk0", "lower_bound": "bound"}
TARGETS = {"warm_speedup_vs_full": (">=", 15.0), "warm_over_lower_bound": ("<=", 1.05),
           "cold_speed_vs_full": (">=", 1.0), "fused_cold_speed_vs_full": (">=", 1.25),
           "disk_over_memory_warm": ("<=", 1.1), "disk_cold_pages_over_memory_warm": ("<=", 1.3)}
GiB = 1024**3


def log(*a: Any) -> None:
    print(*a, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="local path or hub id (default: random-weight Qwen2-0.5B shape)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default="bfloat16", help="bfloat16 (default; fastest on AMX CPUs and GPUs) or float32")
    ap.add_argument("--lengths", default=None,
                    help="comma-separated context lengths (default CPU 512,1024,2048,4096; CUDA up to 32768)")
    ap.add_argument("--passage-tokens", type=int, default=None, help="tokens per passage (default 256)")
    ap.add_argument("--final-tokens", type=int, default=50, help="approximate final-block (question) tokens")
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds per length (default 5, quick 2)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds per length (peak memory is probed there)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (default: torch's choice; 1 with --quick)")
    ap.add_argument("--target-length", type=int, default=4096, help="length at which the targets are checked")
    ap.add_argument("--workload-requests", type=int, default=None, help="RAG stream length (default 24; 0 skips)")
    ap.add_argument("--workload-k", type=int, default=None, help="passages per request in the stream (default 8)")
    ap.add_argument("--workload-corpus", type=int, default=None, help="corpus size of the stream (default 48)")
    ap.add_argument("--no-workload-full", action="store_true", help="skip the no-cache reference in the stream")
    ap.add_argument("--dtype-probe", action="store_true",
                    help="also time float32 vs bfloat16 (1K full prefill + final-block forward) and record it")
    ap.add_argument("--profile", action="store_true",
                    help="cProfile warm (memory and disk) requests at the largest length and record the top functions")
    ap.add_argument("--quick", action="store_true", help="tiny model, short lengths, few repeats (CI smoke run)")
    ap.add_argument("--out", default=str(bc.HERE / "results"), help="directory for the JSON results and the PNG plot")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but torch.cuda.is_available() is False")
    if args.lengths is None:
        args.lengths = ("256,512" if args.quick else
                        "512,1024,2048,4096,8192,16384,32768" if args.device == "cuda" else "512,1024,2048,4096")
    args.lengths = sorted({int(x) for x in args.lengths.split(",") if x.strip()})
    args.passage_tokens = args.passage_tokens or (128 if args.quick else 256)
    args.repeats = args.repeats or (2 if args.quick else 5)
    if args.threads is None and args.quick:
        args.threads = 1  # a smoke run: one thread is fastest and steadiest for a tiny model on a shared machine
    if args.workload_requests is None:
        args.workload_requests = 6 if args.quick else 24
    args.workload_k = args.workload_k or (3 if args.quick else 8)
    args.workload_corpus = args.workload_corpus or (10 if args.quick else 48)
    if any(n < args.passage_tokens for n in args.lengths):
        ap.error(f"every length must be at least --passage-tokens ({args.passage_tokens})")
    return args


# -- the sweep ------------------------------------------------------------------------------------------------------

class Sweep:
    """All engines/stores of the TTFT sweep, sharing one model."""

    def __init__(self, model: Any, tok: Any, device: str, pool: list[Any], questions: list[str], tmp: str) -> None:
        self.model, self.device, self.pool, self.questions = model, device, pool, questions
        mem_device = device if device != "cpu" else None
        self.mem_cfg = StoreConfig(memory_bytes=64 * GiB, memory_device=mem_device)
        self.disk_dir = os.path.join(tmp, "kv")
        self.disk_cfg = StoreConfig(memory_bytes=64 * GiB, disk_dir=self.disk_dir, disk_bytes=64 * GiB,
                                    memory_device=mem_device)
        self.tok = tok
        self.full = BlockAttentionEngine(model, tok, store=False)
        self.prefix = bc.PrefixCache(self.full)
        self.cold = BlockAttentionEngine(model, tok, store=self.mem_cfg)
        self.fused = BlockAttentionEngine(model, tok, EngineConfig(cold_prefill="fused"), store=self.mem_cfg)
        self.warm = BlockAttentionEngine(model, tok, store=self.mem_cfg)
        t0 = time.perf_counter()
        self.warm_report = self.warm.warm(pool)
        self.warm_s = time.perf_counter() - t0
        # the disk tier gets the same tensors (written through, as a cold request would)
        with KVStore(StoreConfig(memory_bytes=0, disk_dir=self.disk_dir, disk_bytes=64 * GiB)) as disk:
            plan = self.warm.plan(pool, "?")
            for key in plan.keys:
                disk.put(key, self.warm.store.get(key))
        self.disk: BlockAttentionEngine | None = None
        self.rng = random.Random(0)
        self.last_first: str | None = None

    def cache_bytes(self) -> dict[str, Any]:
        mem = self.warm.store.stats()
        with KVStore(self.disk_cfg) as disk:
            d = disk.stats()
        return {"memory_bytes": mem.memory_bytes, "memory_entries": mem.memory_entries,
                "disk_bytes": d.disk_bytes, "disk_entries": d.disk_entries,
                "disk_dir_bytes": sum(f.stat().st_size for f in Path(self.disk_dir).rglob("*") if f.is_file())}

    def permutation(self, blocks: list[Any]) -> list[Any]:
        """A new order of ``blocks`` whose first passage differs from the previous request's (retrieval reorders)."""
        order = list(blocks)
        for _ in range(100):
            self.rng.shuffle(order)
            if len(order) < 2 or order[0].key != self.last_first:
                break
        self.last_first = order[0].key
        return order

    def _open_disk(self, drop_pages: bool) -> None:
        if drop_pages:
            bc.drop_page_cache(self.disk_dir)
        # a restart: a new engine and store (empty memory tier) on the same directory
        self.disk = BlockAttentionEngine(self.model, self.tok, store=self.disk_cfg)

    def _close_disk(self) -> None:
        if self.disk is not None:
            self.disk.close()
            self.disk = None

    def _assembled(self, blocks: list[Any], question: str) -> tuple[Any, Any]:
        """The plan and assembled cache of a warm request (the lower bound then times only the final block)."""
        plan = self.warm.plan(blocks, question, mode="block")
        lookup = self.warm.lookup(plan)
        assert not lookup.missing, "the lower bound needs every block cached"
        return plan, self.warm.assemble(plan, self.warm.encode(plan, lookup))

    def _final_forward(self, plan: Any, assembled: Any) -> Any:
        return self.warm.prefill_final(plan, assembled)

    def round(self, blocks: list[Any], r: int, results: dict[str, bc.Samples] | None, probe: bool) -> None:
        """One request of every method (``results=None``: warmup, peak memory probed when ``probe``)."""
        bc.collect()
        order = self.permutation(blocks)
        q1 = self.questions[(2 * r) % len(self.questions)]
        q2 = self.questions[(2 * r + 1) % len(self.questions)]
        dev = self.device

        def run(method: str, fn: Any, setup: Any = None, teardown: Any = None) -> None:
            if setup is not None:
                setup()
            t, out, mem = bc.timed(fn, dev, measure_memory=probe)
            stats = out.stats.as_dict() if hasattr(out, "stats") else (out if isinstance(out, dict) else {})
            stats = {k: v for k, v in stats.items() if k != "logits"}
            if "ttft_s" in stats:  # engine requests: what the per-stage timers do not cover (layout, bookkeeping)
                stats["other_s"] = stats["ttft_s"] - sum(stats[k] for k in ("lookup_s", "encode_s", "assemble_s",
                                                                             "prefill_s"))
            if teardown is not None:
                teardown()
            if mem is not None:
                self.memory.setdefault(method, bc.Samples()).peak_delta.append(mem.peak_delta)
                self.memory[method].peak.append(mem.peak)
            if results is not None:
                s = results.setdefault(method, bc.Samples())
                s.times.append(t)
                s.stats.append(stats)
            del out

        run("full", lambda: self.full.prefill(order, q1, mode="full"))
        run("prefix_miss", lambda: self.prefix.prefill(order, q1))
        run("prefix_same_docs", lambda: self.prefix.prefill(order, q2))
        run("prefix_identical", lambda: self.prefix.prefill(order, q2))
        run("block_cold", lambda: self.cold.prefill(order, q1, mode="block"), setup=self.cold.store.clear)
        run("block_cold_fused", lambda: self.fused.prefill(order, q1, mode="block"), setup=self.fused.store.clear)
        run("block_warm_memory", lambda: self.warm.prefill(order, q1, mode="block"))
        run("block_warm_disk", lambda: self.disk.prefill(order, q1, mode="block"),  # type: ignore[union-attr]
            setup=lambda: self._open_disk(False), teardown=self._close_disk)
        run("block_warm_disk_cold", lambda: self.disk.prefill(order, q1, mode="block"),  # type: ignore[union-attr]
            setup=lambda: self._open_disk(True), teardown=self._close_disk)
        layout_cache: list[Any] = []
        run("lower_bound", lambda: self._final_forward(*layout_cache[0]),
            setup=lambda: layout_cache.append(self._assembled(order, q1)))
        layout_cache.clear()

    memory: dict[str, bc.Samples]


def sweep_length(sw: Sweep, length: int, args: argparse.Namespace) -> dict[str, Any]:
    n = max(1, length // args.passage_tokens)
    blocks = sw.pool[:n]
    sw.memory = {}
    results: dict[str, bc.Samples] = {}
    for r in range(args.warmup + args.repeats):
        timed_round = r >= args.warmup
        sw.round(blocks, r, results if timed_round else None, probe=not timed_round or args.warmup == 0)
    summary = {m: results[m].summary() for m in METHODS}
    for m in METHODS:
        mem = sw.memory.get(m)
        if mem is not None:
            summary[m]["peak_mem_delta_bytes"] = max(mem.peak_delta)
            summary[m]["peak_mem_bytes"] = max(mem.peak)
    last = {m: results[m].stats[-1] for m in METHODS}
    hits = {m: {k: last[m].get(k) for k in ("blocks", "memory_hits", "disk_hits", "misses", "encoded_tokens")}
            for m in ("block_cold", "block_cold_fused", "block_warm_memory", "block_warm_disk", "block_warm_disk_cold")}
    prompt_tokens = last["block_warm_memory"]["prompt_tokens"]
    return {"length": length, "passages": n, "prompt_tokens": prompt_tokens,
            "context_tokens": last["block_warm_memory"]["context_tokens"],
            "final_tokens": last["block_warm_memory"]["final_tokens"],
            "prefix_reused_tokens": {m: last[m]["reused_tokens"] for m in
                                     ("prefix_miss", "prefix_same_docs", "prefix_identical")},
            "hits": hits, "methods": summary}


def ratios(entry: dict[str, Any]) -> dict[str, float]:
    med = {m: entry["methods"][m]["median_s"] for m in METHODS}
    return {
        "warm_speedup_vs_full": med["full"] / med["block_warm_memory"],
        "warm_over_lower_bound": med["block_warm_memory"] / med["lower_bound"],
        "cold_speed_vs_full": med["full"] / med["block_cold"],
        "fused_cold_speed_vs_full": med["full"] / med["block_cold_fused"],
        "disk_over_memory_warm": med["block_warm_disk"] / med["block_warm_memory"],
        "disk_cold_pages_over_memory_warm": med["block_warm_disk_cold"] / med["block_warm_memory"],
        "prefix_miss_speed_vs_full": med["full"] / med["prefix_miss"],
        "warm_speedup_vs_prefix_miss": med["prefix_miss"] / med["block_warm_memory"],
    }


# -- store throughput -----------------------------------------------------------------------------------------------

def store_throughput(sw: Sweep, blocks: list[Any], tmp: str, repeats: int) -> dict[str, Any]:
    layout = sw.warm.layout(blocks, "?")
    keys = [sw.warm.cache_key(b.doc_id, b.token_ids) for b in layout.blocks]
    kvs = [sw.warm.store.get(k) for k in keys]
    nbytes = sum(kv.nbytes for kv in kvs)
    dev = sw.device
    out: dict[str, Any] = {"blocks": len(kvs), "bytes": nbytes, "block_tokens": [kv.n_tokens for kv in kvs]}

    def measure(name: str, fn: Any, setup: Any = None) -> None:
        times = []
        for _ in range(repeats):
            if setup is not None:
                setup()
            bc.sync(dev)
            t0 = time.perf_counter()
            fn()
            bc.sync(dev)
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        out[name] = {"median_s": med, "MB_per_s": nbytes / med / 1e6, "ms_per_block": 1e3 * med / len(kvs)}

    blobs = [serialize.dumps(k, kv) for k, kv in zip(keys, kvs)]
    measure("serialize_dumps", lambda: [serialize.dumps(k, kv) for k, kv in zip(keys, kvs)])
    measure("serialize_loads", lambda: [serialize.loads(k, b) for k, b in zip(keys, blobs)])
    mem = KVStore(StoreConfig(memory_bytes=64 * GiB, memory_device=sw.mem_cfg.memory_device))
    measure("memory_put", lambda: [mem.put(k, kv) for k, kv in zip(keys, kvs)], setup=mem.clear)
    measure("memory_get", lambda: [mem.get(k) for k in keys])
    mem.close()
    ddir = os.path.join(tmp, "throughput")
    disk = KVStore(StoreConfig(memory_bytes=0, disk_dir=ddir, disk_bytes=64 * GiB))
    measure("disk_put", lambda: [disk.put(k, kv) for k, kv in zip(keys, kvs)], setup=disk.clear)
    measure("disk_get_page_cache_hot", lambda: [disk.get(k) for k in keys])
    measure("disk_get_page_cache_dropped", lambda: [disk.get(k) for k in keys],
            setup=lambda: bc.drop_page_cache(ddir))
    assert disk.stats().disk_hits == 2 * repeats * len(keys), disk.stats()
    disk.close()
    shutil.rmtree(ddir, ignore_errors=True)
    return out


# -- optional extras ------------------------------------------------------------------------------------------------

def dtype_probe(args: argparse.Namespace, tokens: int = 1024, final: int = 50, repeats: int = 3) -> dict[str, Any]:
    """float32 vs bfloat16: a full prefill of ``tokens`` and a ``final``-token forward over that cache."""
    from transformers import DynamicCache

    out: dict[str, Any] = {"tokens": tokens, "final_tokens": final}
    models = {}
    for name in ("float32", "bfloat16"):
        models[name] = bc.build_model(args.model, quick=args.quick, dtype=bc.parse_dtype(name), device=args.device,
                                      max_positions=tokens + final + 16)[0]
    ids = torch.randint(10, 500, (1, tokens), device=args.device)
    q = torch.randint(10, 500, (1, final), device=args.device)
    times: dict[str, dict[str, list[float]]] = {n: {"full": [], "final": []} for n in models}
    with torch.inference_mode():
        for r in range(repeats + 1):
            for name, m in models.items():
                t0 = time.perf_counter()
                o = m(input_ids=ids, **cache_kwargs(m, DynamicCache()), use_cache=True, logits_to_keep=1)
                bc.sync(args.device)
                t1 = time.perf_counter()
                m(input_ids=q, position_ids=torch.arange(tokens, tokens + final, device=args.device)[None],
                  **cache_kwargs(m, output_cache(o)), use_cache=True, logits_to_keep=1)
                bc.sync(args.device)
                if r:
                    times[name]["full"].append(t1 - t0)
                    times[name]["final"].append(time.perf_counter() - t1)
    for name, t in times.items():
        out[name] = {"full_prefill_median_s": statistics.median(t["full"]),
                     "final_forward_median_s": statistics.median(t["final"])}
    del models
    bc.collect()
    return out


def profile_warm(sw: Sweep, blocks: list[Any], requests: int = 3) -> dict[str, str]:
    out = {}
    for name, setup, teardown, engine in (
        ("block_warm_memory", None, None, lambda: sw.warm),
        ("block_warm_disk", lambda: sw._open_disk(False), sw._close_disk, lambda: sw.disk),
    ):
        prof = cProfile.Profile()
        for i in range(requests):
            order = sw.permutation(blocks)
            if setup:
                setup()
            prof.enable()
            engine().prefill(order, sw.questions[i % len(sw.questions)], mode="block")
            prof.disable()
            if teardown:
                teardown()
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(25)
        out[name] = buf.getvalue()
        log(f"\ncProfile of {requests} {name} requests ({len(blocks)} passages), top 25 by cumulative time:")
        log("\n".join(out[name].splitlines()[:60]))
    return out


# -- reporting ------------------------------------------------------------------------------------------------------

def print_table(entries: list[dict[str, Any]]) -> None:
    log("\nTTFT, median ms (min..max over repeats)")
    head = f"{'ctx':>6} {'prompt':>6}" + "".join(f"{SHORT[m]:>11}" for m in METHODS)
    log(head)
    for e in entries:
        row = f"{e['length']:>6} {e['prompt_tokens']:>6}"
        row += "".join(f"{bc.fmt_ms(e['methods'][m]['median_s']):>11}" for m in METHODS)
        log(row)
    log("\n" + "  ".join(f"{SHORT[m]}={LABELS[m]}" for m in METHODS))
    log("\nRatios (medians)")
    log(f"{'ctx':>6} {'full/warm':>10} {'warm/bound':>11} {'full/cold':>10} {'full/fused':>11} {'disk/mem':>9} "
        f"{'disk0/mem':>10} {'pfx/warm':>9}")
    for e in entries:
        r = e["ratios"]
        log(f"{e['length']:>6} {r['warm_speedup_vs_full']:>10.1f} {r['warm_over_lower_bound']:>11.2f} "
            f"{r['cold_speed_vs_full']:>10.2f} {r['fused_cold_speed_vs_full']:>11.2f} {r['disk_over_memory_warm']:>9.2f} "
            f"{r['disk_cold_pages_over_memory_warm']:>10.2f} {r['warm_speedup_vs_prefix_miss']:>9.1f}")
    log("\nWarm request breakdown, median ms (engine RequestStats)")
    log(f"{'ctx':>6} {'method':<22}{'ttft':>8}{'lookup+enc':>11}{'assemble':>10}{'prefill':>9}{'other':>8}")
    for e in entries:
        for m in ("block_warm_memory", "block_warm_disk", "block_warm_disk_cold", "block_cold", "block_cold_fused"):
            s = e["methods"][m]["stats_median"]
            other = s["other_s"]
            lookup = s["lookup_s"] + s["encode_s"]
            log(f"{e['length']:>6} {m:<22}{bc.fmt_ms(s['ttft_s']):>8}{bc.fmt_ms(lookup):>11}"
                f"{bc.fmt_ms(s['assemble_s']):>10}{bc.fmt_ms(s['prefill_s']):>9}{bc.fmt_ms(other):>8}")


def check_targets(entry: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name, (op, goal) in TARGETS.items():
        value = entry["ratios"][name]
        ok = value >= goal if op == ">=" else value <= goal
        out[name] = {"value": round(value, 3), "target": f"{op} {goal}", "met": bool(ok)}
    return out


def plot(entries: list[dict[str, Any]], path: Path, title: str) -> str | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed (pip install matplotlib); skipping the plot")
        return None
    fig, ax = plt.subplots(figsize=(8, 5.5))
    xs = [e["length"] for e in entries]
    styles = {"full": ("k", "o", "-"), "prefix_miss": ("tab:red", "s", "-"),
              "prefix_same_docs": ("tab:red", "^", ":"), "prefix_identical": ("tab:pink", "v", ":"),
              "block_cold": ("tab:orange", "D", "-"), "block_cold_fused": ("tab:red", "v", "-"), "block_warm_memory": ("tab:blue", "o", "-"),
              "block_warm_disk": ("tab:green", "s", "--"), "block_warm_disk_cold": ("tab:olive", "x", "--"),
              "lower_bound": ("tab:gray", ".", ":")}
    for m in METHODS:
        color, marker, ls = styles[m]
        ax.plot(xs, [1e3 * e["methods"][m]["median_s"] for e in entries], color=color, marker=marker,
                linestyle=ls, label=LABELS[m])
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(xs)
    ax.set_xticklabels([str(x) for x in xs])
    ax.set_xlabel("context tokens (passages of ~256 tokens; + system prefix and ~50-token question)")
    ax.set_ylabel("time to first token, ms (median, log scale)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


# -- main -----------------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    bc.setup()
    args = parse_args(argv)
    start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    max_len = max(args.lengths)
    model, tok, desc = bc.build_model(args.model, quick=args.quick, dtype=bc.parse_dtype(args.dtype),
                                      device=args.device, max_positions=max_len + 4096)
    env = bc.environment(args.device)
    log(f"block_attention TTFT benchmark: model {desc['name']} ({desc['parameters'] / 1e6:.0f}M params, "
        f"{desc['dtype']}, {desc['weights']})")
    log(f"device {args.device}, {env['cpu_model']}, {env['cpu_cores']} cores, torch {env['torch']} "
        f"({env['torch_threads']} threads), transformers {env['transformers']}")

    probe_engine = BlockAttentionEngine(model, tok, store=False)
    n_pool = max(1, max_len // args.passage_tokens)
    pool = bc.make_passages(probe_engine.builder, n_pool, args.passage_tokens, prefix="passage")
    questions = [bc.make_question(probe_engine, args.final_tokens, seed=i) for i in range(8)]
    kv_per_token = probe_engine.kv_bytes_per_token

    tmp = tempfile.mkdtemp(prefix="ba-bench-")
    results: dict[str, Any] = {"benchmark": "block_attention.ttft", "quick": args.quick,
                               "args": {k: v for k, v in vars(args).items()}, "model": desc, "environment": env,
                               "kv_bytes_per_token": kv_per_token}
    try:
        sw = Sweep(model, tok, args.device, pool, questions, tmp)
        log(f"warmed {sw.warm_report.blocks} blocks ({sw.warm_report.encoded_tokens} tokens) in {sw.warm_s:.1f} s")
        results["cache_bytes"] = sw.cache_bytes()
        entries = []
        for length in args.lengths:
            t0 = time.perf_counter()
            log(f"\n== {length} context tokens ({max(1, length // args.passage_tokens)} passages) ...")
            e = sweep_length(sw, length, args)
            e["ratios"] = ratios(e)
            e["flops"] = bc.prefill_flops(desc, _block_lengths(sw, length, args), e["final_tokens"])
            entries.append(e)
            log("   " + "  ".join(f"{SHORT[m]} {bc.fmt_ms(e['methods'][m]['median_s'])}" for m in METHODS)
                + f"   ({time.perf_counter() - t0:.0f} s)")
        results["sweep"] = entries
        print_table(entries)

        target_len = args.target_length if args.target_length in args.lengths else max(args.lengths)
        target_entry = next(e for e in entries if e["length"] == target_len)
        results["targets"] = {"length": target_len, **check_targets(target_entry)}
        log(f"\nTargets at {target_len} context tokens ({target_entry['passages']} passages):")
        for name, t in results["targets"].items():
            if isinstance(t, dict):
                log(f"  {name:<26} {t['value']:>8.2f}  (target {t['target']})  {'MET' if t['met'] else 'NOT MET'}")

        flops_lengths = sorted(set(args.lengths) | {4096, 8192, 16384, 32768})
        results["flops"] = {n: bc.prefill_flops(desc, [args.passage_tokens] * max(1, n // args.passage_tokens),
                                                args.final_tokens) for n in flops_lengths}
        log("\nAnalytic prefill FLOPs (matmuls; %d-token passages, %d-token final block)"
            % (args.passage_tokens, args.final_tokens))
        log(f"{'ctx':>6}{'full GFLOP':>12}{'warm GFLOP':>12}{'cold GFLOP':>12}{'warm saves':>12}{'cold saves':>12}")
        for n, f in results["flops"].items():
            log(f"{n:>6}{f['full_gflop']:>12.1f}{f['block_warm_gflop']:>12.2f}{f['block_cold_gflop']:>12.1f}"
                f"{f['block_warm_reduction_pct']:>11.2f}%{f['block_cold_reduction_pct']:>11.2f}%")
        log(f"KV bytes per token: {kv_per_token} ({desc['dtype']}); {max_len} tokens = "
            f"{kv_per_token * max_len / 1e6:.1f} MB")
        cb = results["cache_bytes"]
        log(f"Cache bytes: memory tier {cb['memory_bytes'] / 1e6:.1f} MB in {cb['memory_entries']} entries; "
            f"disk tier {cb['disk_bytes'] / 1e6:.1f} MB (diskcache volume), {cb['disk_dir_bytes'] / 1e6:.1f} MB of "
            f"files, {cb['disk_entries']} entries")

        results["store_throughput"] = store_throughput(sw, pool[:max(1, target_len // args.passage_tokens)], tmp,
                                                       repeats=3)
        st = results["store_throughput"]
        log(f"\nStore throughput ({st['blocks']} blocks, {st['bytes'] / 1e6:.1f} MB):")
        for name in ("serialize_dumps", "serialize_loads", "memory_put", "memory_get", "disk_put",
                     "disk_get_page_cache_hot", "disk_get_page_cache_dropped"):
            note = "  (hands out a reference: no copy)" if name.startswith("memory") and args.device == "cpu" else ""
            log(f"  {name:<30}{st[name]['MB_per_s']:>12,.0f} MB/s  {st[name]['ms_per_block']:>8.2f} ms/block{note}")

        log("\nPeak memory during one request (delta over the process baseline; "
            + ("CUDA max_memory_allocated" if args.device == "cuda" else "sampled RSS") + f") at {target_len} tokens:")
        results["peak_memory"] = {m: target_entry["methods"][m]["peak_mem_delta_bytes"] for m in METHODS}
        log("  " + "  ".join(f"{SHORT[m]} {(v or 0) / 1e6:.0f} MB" for m, v in results["peak_memory"].items()))
        import resource
        results["process_max_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

        if args.profile:
            results["profile"] = profile_warm(sw, pool[:max(1, target_len // args.passage_tokens)])
        if args.dtype_probe:
            results["dtype_probe"] = dtype_probe(args)
            log(f"\ndtype probe: {json.dumps(results['dtype_probe'])}")

        if args.workload_requests > 0:
            log(f"\n== RAG workload: {args.workload_requests} requests, top-{args.workload_k} of "
                f"{args.workload_corpus} passages")
            corpus = bc.make_passages(probe_engine.builder, args.workload_corpus, args.passage_tokens,
                                      prefix="corpus")
            w = wl.run_workload(model, tok, device=args.device, corpus=corpus, questions=questions,
                                k=args.workload_k, n_requests=args.workload_requests,
                                include_full=not args.no_workload_full, log=log)
            wl.print_summary(w, log=log)
            results["workload"] = w
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    results["elapsed_s"] = time.perf_counter() - start
    if hasattr(os, "getloadavg"):
        results["environment"]["loadavg_end"] = os.getloadavg()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    json_path = out_dir / f"{stamp}.json"
    weights = "" if desc["weights"] == "pretrained" else ", random weights"
    title = f"Block-Attention TTFT, {desc['name']} ({desc['dtype']}{weights})"
    title += f"\n{args.device}: {env.get('gpu') or env['cpu_model']}, torch threads: {env['torch_threads']}"
    results["plot_file"] = plot(results["sweep"], out_dir / f"{stamp}.png", title)
    results["results_file"] = str(json_path)
    json_path.write_text(json.dumps(results, indent=1, default=str))
    log(f"\nresults: {json_path}\nplot:    {results['plot_file']}")
    log(json.dumps(_final_line(results), default=str))
    return 0


def _block_lengths(sw: Sweep, length: int, args: argparse.Namespace) -> list[int]:
    """Token counts of the cacheable blocks (system prefix + passages) of a request at ``length``."""
    layout = sw.warm.layout(sw.pool[:max(1, length // args.passage_tokens)], sw.questions[0])
    return [len(b.token_ids) for b in layout.blocks]


def _final_line(results: dict[str, Any]) -> dict[str, Any]:
    """The single-line JSON summary (no raw samples)."""
    sweep = results["sweep"]
    line: dict[str, Any] = {
        "benchmark": results["benchmark"], "quick": results["quick"],
        "model": results["model"]["name"], "dtype": results["model"]["dtype"],
        "device": results["environment"]["device"], "threads": results["environment"]["torch_threads"],
        "lengths": [e["length"] for e in sweep],
        "prompt_tokens": {e["length"]: e["prompt_tokens"] for e in sweep},
        "ttft_median_s": {m: {e["length"]: round(e["methods"][m]["median_s"], 5) for e in sweep} for m in METHODS},
        "ratios": {e["length"]: {k: round(v, 3) for k, v in e["ratios"].items()} for e in sweep},
        "hits": {e["length"]: e["hits"] for e in sweep},
        "targets": results["targets"],
        "flops_reduction_pct": {n: round(f["block_warm_reduction_pct"], 3) for n, f in results["flops"].items()},
        "kv_bytes_per_token": results["kv_bytes_per_token"],
        "cache_bytes": results["cache_bytes"],
        "store_MB_per_s": {k: round(v["MB_per_s"], 1) for k, v in results["store_throughput"].items()
                           if isinstance(v, dict)},
        "peak_memory_bytes": results["peak_memory"],
        "results_file": results["results_file"], "plot_file": results["plot_file"],
        "elapsed_s": round(results["elapsed_s"], 1),
    }
    if "workload" in results:
        w = results["workload"]
        line["workload"] = {
            "requests": w["requests"], "k": w["k"], "corpus": w["corpus"],
            "block_doc_hit_rate": round(w["block"]["doc_hit_rate"], 3),
            "block_hit_rate": round(w["block"]["block_hit_rate"], 3),
            "prefix_token_reuse_rate": round(w["prefix"]["token_reuse_rate"], 3),
            "prefix_request_hit_rate": round(w["prefix"]["request_hit_rate"], 3),
            "block_mean_ttft_s": round(w["block"]["mean_ttft_s"], 5),
            "prefix_mean_ttft_s": round(w["prefix"]["mean_ttft_s"], 5),
            "full_mean_ttft_s": round(w["full"]["mean_ttft_s"], 5) if "full" in w else None,
        }
    return line


if __name__ == "__main__":
    sys.exit(main())
