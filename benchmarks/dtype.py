"""float32 vs bf16 for a built-in real model on this CPU, with and without the CPU's bf16 instructions.

Each configuration runs in its own subprocess (oneDNN reads ``ONEDNN_MAX_CPU_ISA`` once, at start): the default
ISA, and ``AVX2`` (what a CPU without AVX-512 / bf16 instructions runs). Per configuration: full prefill of a
``--tokens``-token prompt (median of ``--repeats``), one decode step (median of 16) and the block-mode warm TTFT
through the engine. Prints a table and, last, one JSON line; ``--out`` writes the results file.

    python benchmarks/dtype.py --tokens 1024 --out benchmarks/reference-dtype-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import bench_common as bc


def _measure(model_name: str, dtype_name: str, tokens: int, repeats: int) -> dict:
    import torch

    from block_attention.core.blocks import Block
    from block_attention.models import load_engine

    torch.manual_seed(0)
    dtype = {"float32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    engine = load_engine(model_name, dtype=dtype)
    model = engine.model
    ids = torch.randint(100, 20000, (1, tokens))
    with torch.inference_mode():
        model(ids[:, :32])  # warm-up
        prefill = []
        for _ in range(repeats):
            start = time.perf_counter()
            out = model(ids, use_cache=True)
            prefill.append(time.perf_counter() - start)
        cache = out.past_key_values
        step = []
        nxt = ids[:, -1:]
        for i in range(16):
            start = time.perf_counter()
            model(nxt, past_key_values=cache, use_cache=True,
                  position_ids=torch.tensor([[tokens + i]]))
            step.append(time.perf_counter() - start)
    words = "the lighthouse keeper climbed the stairs every evening to light the lamp and watch the sea".split()
    docs = [Block(" ".join(words[(i + j) % len(words)] for j in range(tokens // 5)), doc_id=f"d{i}") for i in range(4)]
    engine.generate(docs, "What did the keeper do?", max_new_tokens=1)  # cold: encodes and caches the blocks
    warm = []
    for _ in range(repeats):
        warm.append(engine.generate(docs, "What did the keeper do?", max_new_tokens=1).stats.ttft_s)
    return {"prefill_s": statistics.median(prefill), "decode_step_s": statistics.median(step),
            "warm_ttft_s": statistics.median(warm)}


def main() -> int:
    bc.setup()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--tokens", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--isa", default="default,AVX2", help="comma-separated ONEDNN_MAX_CPU_ISA values")
    p.add_argument("--out", default=None)
    p.add_argument("--child", nargs=2, metavar=("DTYPE", "ISA"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(_measure(args.model, args.child[0], args.tokens, args.repeats)))
        return 0
    rows = []
    for isa in args.isa.split(","):
        for dtype in ("float32", "bf16"):
            env = dict(os.environ)
            if isa != "default":
                env["ONEDNN_MAX_CPU_ISA"] = isa
            done = subprocess.run([sys.executable, __file__, "--model", args.model, "--tokens", str(args.tokens),
                                   "--repeats", str(args.repeats), "--child", dtype, isa],
                                  env=env, capture_output=True, text=True, check=True)
            rows.append({"isa": isa, "dtype": dtype, **json.loads(done.stdout.strip().splitlines()[-1])})
    print(f"{'ISA':8} {'dtype':8} {'prefill ' + str(args.tokens):>14} {'decode step':>12} {'warm TTFT':>10}")
    for r in rows:
        print(f"{r['isa']:8} {r['dtype']:8} {r['prefill_s'] * 1e3:12.0f}ms {r['decode_step_s'] * 1e3:10.1f}ms "
              f"{r['warm_ttft_s'] * 1e3:8.0f}ms")
    cpu = bc.cpu_model() + (" (avx512_bf16)" if "avx512_bf16" in bc.cpu_flags() else " (no avx512_bf16)")
    result = {"benchmark": "dtype", "model": args.model, "tokens": args.tokens, "cpu": cpu,
              "machine": platform.machine(), "threads": os.cpu_count(), "rows": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
