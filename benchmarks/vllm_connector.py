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
one server serves both. Prints a table and a final JSON line; writes ``--out`` JSON and a bar plot beside it.

    python benchmarks/vllm_connector.py --questions 3 --passages 5
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from block_attention import Block, PromptBuilder  # noqa: E402
from block_attention.hf import registry  # noqa: E402
from block_attention.testing.vllm_server import SERVED_NAME, VLLMServer  # noqa: E402
from block_attention.vllm_connector import client  # noqa: E402

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
    ap.add_argument("--out", default=str(HERE / "reference-vllm-connector-cpu.json"))
    args = ap.parse_args(argv)
    from transformers import AutoTokenizer

    folder = registry.checkpoint_dir("smollm2-135m")
    builder = PromptBuilder(AutoTokenizer.from_pretrained(folder))
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="ba-vllm-bench-"))
    store = {"memory_bytes": 1 << 30, "disk_dir": str(work / "kv")}
    times: dict[str, list[float]] = {row: [] for row in ROWS}
    context_tokens, outcomes = [], []
    with VLLMServer(args.vllm_python, folder, store=store, log_path=work / "vllm.log", threads=args.threads,
                    kv_space_gib=2) as server:
        for question, docs in questions(Path(args.data), args.questions, args.passages, args.seed):
            order_a = client.plan(builder, docs, question)
            order_b = client.plan(builder, [docs[i] for i in derangement(len(docs), rng)], question)
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
    out = Path(args.out)
    out.write_text(json.dumps(result, indent=1) + "\n")
    plot(rows, out.with_suffix(".png"), result)
    print(json.dumps(result))
    return 0


def plot(rows: dict[str, dict[str, float]], path: Path, result: dict[str, Any]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'); no plot written", file=sys.stderr)
        return
    names = [r for r in ROWS if r != "encode"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(names, [rows[n]["median_s"] for n in names], color=["#999", "#6a6", "#c55", "#36c"])
    ax.set_ylabel("TTFT, median (s)")
    ax.set_yscale("log")
    ax.set_title(f"vLLM-CPU 0.32.0, SmolLM2-135M fp32, {result['passages']} passages "
                 f"(~{int(result['prompt_tokens_median'])} tokens)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
