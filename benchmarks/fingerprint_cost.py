"""Cost of the weight fingerprint for a Qwen2-0.5B-shaped model (random bf16 weights, built offline), extrapolated
to 7B: the full hash at engine construction and the cheap per-request re-check.

    python benchmarks/fingerprint_cost.py [--repeat 3]

Prints one JSON object. The 7B figures scale the full hash by weight bytes and the re-check by tensor count
(Qwen2-7B: 7.6e9 parameters, 339 weight tensors).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
from transformers import AutoModelForCausalLM, Qwen2Config

from block_attention.hf.fingerprint import WeightsWatch, adapter_state, weights_digest

QWEN2_05B = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                 num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                 tie_word_embeddings=True)
QWEN2_7B_PARAMS, QWEN2_7B_TENSORS = 7.62e9, 339


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_config(Qwen2Config(**QWEN2_05B), dtype=torch.bfloat16).eval()
    build_s = time.perf_counter() - t0
    state = model.state_dict(keep_vars=True)
    n_params = sum(t.numel() for t in state.values())
    n_bytes = sum(t.numel() * t.element_size() for t in state.values())
    full = min(_time(lambda: weights_digest(model)) for _ in range(args.repeat))
    watch = WeightsWatch(model)
    check = min(_time(watch.changed, 20) for _ in range(args.repeat))
    adapters = min(_time(lambda: adapter_state(model), 20) for _ in range(args.repeat))
    print(json.dumps({
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "model": "Qwen2-0.5B shape, bf16, random", "build_s": round(build_s, 1),
        "weight_tensors": len(state), "params": n_params, "weight_bytes": n_bytes,
        "full_hash_s": round(full, 3), "full_hash_GB_per_s": round(n_bytes / full / 1e9, 2),
        "per_request_check_ms": round(check * 1e3, 3), "of_which_adapter_walk_ms": round(adapters * 1e3, 3),
        "extrapolated_7B_full_hash_s": round(full * QWEN2_7B_PARAMS * 2 / n_bytes, 2),
        "extrapolated_7B_per_request_check_ms": round(check * 1e3 * QWEN2_7B_TENSORS / len(state), 3),
    }, indent=1))


def _time(fn, n: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


if __name__ == "__main__":
    main()
