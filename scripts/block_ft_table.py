"""The paper's table at SmolLM2-135M scale: base vs block-fine-tuned, block vs full, on held-out data.

Rows: (1) base, full attention; (2) base, block mode; (3) base, block + training-free recovery (recompute the
first 16 tokens of every block, a shared sink prefix, both); (4) block-fine-tuned, block mode; (5)
block-fine-tuned, full attention. Data: held-out invented-fact questions (``facts:N:SEED``, test split: wording
and names never seen in training) and MuSiQue (``../shared/data/musique_s.json``, first ``--musique`` questions,
first ``--max-blocks`` passages). Every answer is greedy; the table is printed as Markdown, the full results are
written as JSON, and the last line is one JSON summary.

    python scripts/block_ft_table.py --adapter runs/seed0 --adapter runs/seed1 --facts 60 --musique 15 \
        --out benchmarks/reference-block-ft-smollm2.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from block_attention.core.config import EngineConfig
from block_attention.evaluation.data import load_examples
from block_attention.evaluation.harness import EvalConfig, evaluate
from block_attention.hf.registry import SHORT_ANSWER_INSTRUCTION
from block_attention.models import load_engine
from block_attention.core.prompt import PromptConfig

BASE_MODES = ("full", "block", "block-k16", "block-sink", "block-sink-k16")
TUNED_MODES = ("block", "full")
MUSIQUE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "musique_s.json"


def _run(engine, data: str, modes: tuple[str, ...], limit: int | None, max_blocks: int | None, label: str):
    examples = load_examples(data, limit=limit)
    config = EvalConfig(modes=modes, max_new_tokens=24, max_blocks=max_blocks)
    start = time.perf_counter()
    result = evaluate(engine, examples, config, model_name=label, data_name=data, progress=False)
    summary = result.summary()
    print(f"  {label} on {data}: {len(examples)} examples, {time.perf_counter() - start:.0f} s", flush=True)
    return {"summary": summary, "result": result.as_dict()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--adapter", action="append", default=[], help="a block-fine-tuned adapter folder (repeat per seed)")
    p.add_argument("--facts", type=int, default=60, help="held-out invented-fact questions")
    p.add_argument("--facts-seed", type=int, default=1)
    p.add_argument("--musique", type=int, default=15, help="MuSiQue questions (0: skip)")
    p.add_argument("--musique-adapters", type=int, default=1, help="how many adapters to also run on MuSiQue")
    p.add_argument("--max-blocks", type=int, default=3, help="MuSiQue passages per question")
    p.add_argument("--no-base", action="store_true", help="skip the base model's rows (e.g. measured in another run)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", required=True)
    args = p.parse_args()

    facts = f"facts:{args.facts}:{args.facts_seed}"
    datasets = [(facts, None, None)]
    if args.musique:
        datasets.append((str(MUSIQUE), args.musique, args.max_blocks))
    runs: dict[str, dict] = {}
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if not args.no_base:
        base = load_engine("smollm2-135m", store=None,
                           config=EngineConfig(prompt=PromptConfig(instruction=SHORT_ANSWER_INSTRUCTION)))
        with base:
            for data, limit, blocks in datasets:
                runs[f"base|{data}"] = _run(base, data, BASE_MODES, limit, blocks, "base")
    for i, adapter in enumerate(args.adapter):
        with load_engine(adapter, store=None) as tuned:
            assert tuned.block_finetuned, f"{adapter} carries no block_attention record"
            for j, (data, limit, blocks) in enumerate(datasets):
                if j > 0 and i >= args.musique_adapters:
                    continue
                runs[f"{Path(adapter).name}|{data}"] = _run(tuned, data, TUNED_MODES, limit, blocks, Path(adapter).name)

    print("\n| data | model | mode | EM | F1 | contained | KL to full | TTFT ms (median) |")
    print("|---|---|---|---|---|---|---|---|")
    table = []
    for key, run in runs.items():
        label, data = key.split("|", 1)
        for mode, s in run["summary"].items():
            kl = "" if s["kl_to_full"] is None else f"{s['kl_to_full']:.3f}"
            name = Path(data).name
            print(f"| {name} | {label} | {mode} | {s['em']:.3f} | {s['f1']:.3f} | {s['contains']:.3f} | {kl} | "
                  f"{s['ttft_ms_median']:.0f} |")
            table.append({"data": name, "model": label, "mode": mode, "n": s["n"], "em": s["em"], "f1": s["f1"],
                          "contains": s["contains"], "kl_to_full": s["kl_to_full"],
                          "ttft_ms_median": s["ttft_ms_median"]})
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"table": table, "runs": runs}, indent=1) + "\n", encoding="utf-8")
    print(json.dumps({"table": table}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
