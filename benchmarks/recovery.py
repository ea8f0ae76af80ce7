"""Training-free recovery: how close to full attention does recomputing the first k tokens of every block get?

A tiny Llama is trained *from scratch with full attention only* (never block-fine-tuned) on the synthetic RAG task
of ``block_attention.finetune.synthetic``, then evaluated through the engine with the evaluation harness in full
mode, plain block mode (k = 0) and block mode recovering k = 1, 2, 4, ... tokens of every passage, up to the longest
passage (= exactly full mode), each without and with the shared attention-sink prefix (``sink="prefix"``). For each k: mean KL(block_k || full) of the next-token distributions over the gold
answer tokens, gold-answer NLL, exact match, agreement with full mode, recomputed tokens, and TTFT (blocks cached).

Prints a table and one final JSON line; writes ``recovery.json`` and ``recovery.png`` to ``--out``. ``--quick``
(CI smoke run: 20 training steps, 4 questions) exercises the code; its numbers mean nothing. CPU, one thread by
default; the default run (1500 steps) takes a few minutes. TTFT here is a tiny model on a shared CPU: it shows
the relative overhead of recovery (one extra forward of k tokens per passage), not absolute serving speed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
_ENV_DEFAULTS = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1500, help="full-attention training steps (quick: 20)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--questions", type=int, default=60, help="held-out questions evaluated (quick: 4)")
    ap.add_argument("--ks", default="1,2,4,8", help="recovery sizes besides 0 and 'the longest block'")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="CI smoke run (numbers mean nothing)")
    ap.add_argument("--out", default=str(HERE / "results"), help="directory for recovery.json and recovery.png")
    return ap.parse_args(argv)


def log(*a: Any) -> None:
    print(*a, file=sys.stderr, flush=True)


def train_full_attention_model(steps: int, batch_size: int, lr: float, seed: int, threads: int) -> tuple[Any, Any, float]:
    """A tiny Llama trained from scratch on the synthetic task with the ordinary causal mask (mode='full')."""
    import torch

    from block_attention.finetune.synthetic import SyntheticConfig, make_task, task_prompt_config, task_tokenizer
    from block_attention.finetune.train import TrainConfig, train
    from block_attention.testing import tiny_model

    torch.set_num_threads(threads)
    tokenizer = task_tokenizer()
    model = tiny_model(  # the miniature reproduction's shape (scripts/reproduce_finetune.py)
        "llama", seed=seed, vocab_size=len(tokenizer), hidden_size=128, intermediate_size=384, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id).train()
    data = make_task(SyntheticConfig(n_train=steps * batch_size, n_test=0, min_distractors=1, max_distractors=3,
                                     history_questions=2, seed=seed * 100)).train
    result = train(model, tokenizer, data, TrainConfig(
        mode="full", lr=lr, batch_size=batch_size, max_steps=steps, warmup_steps=min(50, steps // 10),
        lr_scheduler="constant_with_warmup", weight_decay=0.01, label_scope="final", seed=seed,
        num_threads=threads, logging_steps=max(1, steps // 5)), task_prompt_config())
    return result.model, tokenizer, float(result.train_loss)


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: no plot (pip install -e '.[bench]')")
        return None
    ks = [r["k"] for r in rows]
    x = [max(k, 0.5) for k in ks]  # k = 0 drawn at 0.5 on the log axis
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(x, [max(r["kl_to_full"], 1e-9) for r in rows], "o-", label="KL(block_k || full)")
    ax1.plot(x, [max(r["sink_kl_to_full"], 1e-9) for r in rows], "^--", label="with shared sink prefix")
    ax1.legend(fontsize=8)
    ax1.set_xscale("log")
    ax1.set_yscale("log")
    ax1.set_xlabel("recomputed tokens per block k (0 drawn at 0.5)")
    ax1.set_ylabel("mean KL over gold answer tokens (nats)")
    ax1.set_title("distance to full attention")
    ax2.plot(x, [r["ttft_ms_median"] for r in rows], "s-", color="tab:red", label="block_k")
    ax2.axhline(rows[0]["full_ttft_ms_median"], color="gray", ls="--", label="full prefill")
    ax2.set_xscale("log")
    ax2.set_xlabel("recomputed tokens per block k")
    ax2.set_ylabel("median TTFT (ms, blocks cached)")
    ax2.legend(fontsize=8)
    ax2.set_title("time to first token")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def main(argv: list[str] | None = None) -> int:
    for name, value in _ENV_DEFAULTS.items():  # before the first (lazy) import of transformers; unless set
        os.environ.setdefault(name, value)
    args = parse_args(argv)
    import torch

    from block_attention.core.blocks import Block
    from block_attention.core.config import EngineConfig
    from block_attention.engine import BlockAttentionEngine
    from block_attention.evaluation.data import EvalExample
    from block_attention.evaluation.harness import EvalConfig, evaluate
    from block_attention.finetune.synthetic import SyntheticConfig, make_task, task_prompt_config

    steps = 20 if args.quick else args.steps
    n_questions = 4 if args.quick else args.questions
    started = time.perf_counter()
    log(f"training a tiny Llama from scratch with full attention: {steps} steps x batch {args.batch_size} ...")
    model, tokenizer, loss = train_full_attention_model(steps, args.batch_size, args.lr, args.seed, args.threads)
    train_s = time.perf_counter() - started
    log(f"trained in {train_s:.0f} s, final train loss {loss:.3f}")
    torch.set_num_threads(args.threads)

    test = make_task(SyntheticConfig(n_train=0, n_test=n_questions, min_distractors=2, max_distractors=4,
                                     seed=args.seed * 100 + 1000)).test
    examples = [EvalExample(str(i), ex["question"], (ex["answer"],),
                            tuple(Block(b["text"], doc_id=b["id"]) for b in ex["blocks"])) for i, ex in enumerate(test)]
    engine = BlockAttentionEngine(model, tokenizer, EngineConfig(prompt=task_prompt_config()))
    longest = max(len(b.token_ids) for ex in examples
                  for b in engine.layout(list(ex.blocks), ex.question).blocks)
    ks = sorted({0, *(int(k) for k in args.ks.split(",") if k.strip() and int(k) < longest), longest})
    modes = ["full"] + [f"block-k{k}" if k else "block" for k in ks]
    sink_modes = [f"block-sink-k{k}" if k else "block-sink" for k in ks]
    config = EvalConfig(modes=tuple(modes + sink_modes), max_new_tokens=6, stop=("\n",), max_gold_tokens=16)
    t0 = time.perf_counter()
    result = evaluate(engine, examples, config, model_name="tiny Llama trained with full attention",
                      data_name="synthetic RAG task (held out)", progress=False)
    eval_s = time.perf_counter() - t0
    summary = result.summary()
    full = summary["full"]
    context_tokens = sum(engine.layout(list(ex.blocks), ex.question).context_len for ex in examples) / len(examples)
    rows = []
    for k, mode, sink_mode in zip(ks, modes[1:], sink_modes):
        s = summary[mode]
        rows.append({"k": k, "mode": mode, "sink_kl_to_full": summary[sink_mode]["kl_to_full"],
                     "sink_agree_with_full": summary[sink_mode]["agree_with_full"],
                     "sink_ttft_ms_median": summary[sink_mode]["ttft_ms_median"], "kl_to_full": s["kl_to_full"], "gold_nll": s["gold_nll"], "em": s["em"],
                     "agree_with_full": s["agree_with_full"], "recomputed_tokens": s["recomputed_tokens_mean"],
                     "recomputed_share": s["recomputed_tokens_mean"] / context_tokens,
                     "ttft_ms_median": s["ttft_ms_median"], "full_ttft_ms_median": full["ttft_ms_median"]})

    print(f"tiny Llama ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params) trained {steps} steps with full "
          f"attention; {len(examples)} held-out questions, {context_tokens:.0f} context tokens on average, longest "
          f"block {longest} tokens")
    print(f"full mode: EM {full['em']:.3f}, gold NLL {full['gold_nll']:.3f}, median TTFT {full['ttft_ms_median']:.1f} ms")
    print(f"{'k':>4} {'KL(block_k||full)':>18} {'gold NLL':>9} {'EM':>6} {'agree':>6} {'recomputed':>11} {'TTFT ms':>8}"
          f" | {'KL with sink':>12} {'agree':>6} {'TTFT ms':>8}")
    for r in rows:
        print(f"{r['k']:>4} {r['kl_to_full']:>18.5g} {r['gold_nll']:>9.3f} {r['em']:>6.3f} {r['agree_with_full']:>6.3f} "
              f"{r['recomputed_share'] * 100:>10.1f}% {r['ttft_ms_median']:>8.1f} | {r['sink_kl_to_full']:>12.5g} "
              f"{r['sink_agree_with_full']:>6.3f} {r['sink_ttft_ms_median']:>8.1f}")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "recovery", "quick": args.quick, "steps": steps, "train_loss": loss, "train_s": round(train_s, 1),
        "eval_s": round(eval_s, 1), "questions": len(examples), "context_tokens_mean": context_tokens,
        "longest_block": longest, "threads": args.threads, "torch": torch.__version__,
        "full": {"em": full["em"], "gold_nll": full["gold_nll"], "ttft_ms_median": full["ttft_ms_median"]},
        "rows": rows,
    }
    results_file = out / "recovery.json"
    payload["plot_file"] = plot(rows, out / "recovery.png",
                                f"tiny Llama trained with full attention, {len(examples)} synthetic RAG questions")
    payload["results_file"] = str(results_file)
    payload["elapsed_s"] = round(time.perf_counter() - started, 1)
    results_file.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
