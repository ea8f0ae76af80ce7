"""Train the packaged ``tiny-reader`` from scratch and run the miniature block-attention reproduction with it.

One command: ``python scripts/train_reader.py --out src/block_attention/data/tiny_reader`` (CPU, one thread: about
30 minutes on a shared 2-core machine; ``--quick --out DIR``: a seconds-long smoke run). ``--out`` is required so
a run never replaces a packaged reader by accident. Steps, all seeded:

1. A byte-level BPE tokenizer (``tokenizers``) trained on generated task text plus the packaged demo corpus text
   (text only: no question or answer of the demo is used anywhere in training).
2. A Llama-shaped decoder (tied embeddings, RoPE) trained with **full** attention: an induction warm-up (random
   token strings shown twice), then the quote-the-evidence task (:mod:`block_attention.finetune.reader_task`) on a
   curriculum from bare to natural questions. Row (1)/(2): this model in full / block mode.
3. **Block fine-tuning** of that model with the paper's mixed mask (block on half the examples, full on the rest):
   rows (3)/(4). The **control** continues the same model for the same steps with the full mask: rows (5)/(6).
   Step 3 runs once per fine-tuning seed.
4. Evaluation through :class:`~block_attention.engine.BlockAttentionEngine` (block mode = every passage encoded
   alone, re-rotated, only the question prefilled; full mode = one ordinary prefill): exact match of the quoted
   sentence on held-out generated examples.

Training batches come from :class:`~block_attention.finetune.collator.BlockCollator` (the engine's own layout and
block mask). Two training-only choices: the loss is computed on answer tokens only (logits only there), and the
position ids get random gaps between blocks (positional skip-wise training), so relative distances up to the
demo's ~1,000-token prompts are seen while training sequences stay short; RoPE attention depends on relative
positions only, so a gap is what a longer preceding passage would look like to the question.

The block fine-tuned model of the first seed is saved with ``save_finetuned`` (prompt config recorded) to
``--out``; ``--report`` writes the JSON summary, including the demo questions answered through the demo's own
path (:func:`~block_attention.demo.answer_demo_questions`) and the edited-passage checks. ``--workdir`` keeps
phase checkpoints (safetensors) and resumes from them.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from block_attention.core.config import EngineConfig
from block_attention.core.prompt import PromptConfig
from block_attention.engine import BlockAttentionEngine
from block_attention.engine.generation import GenerationConfig
from block_attention.finetune.collator import IGNORE_INDEX, BlockCollator, example_blocks
from block_attention.finetune.reader_task import ReaderTask, induction_batch
from block_attention.finetune.train import save_finetuned

REPO = Path(__file__).resolve().parents[1]
PACKAGED = REPO / "src" / "block_attention" / "data" / "tiny_reader"
CORPUS = REPO / "src" / "block_attention" / "data" / "corpus"
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>"]


def reader_prompt_config() -> PromptConfig:
    """The reader's prompt: BOS, a one-line instruction, ``- Title: ...`` passages, ``Question: ...\\nAnswer:``."""
    return PromptConfig(instruction="Quote the sentence that answers the question.", add_bos=True)


@dataclass(frozen=True)
class ReaderConfig:
    """Model size and schedule. Steps are optimizer steps; ``finetune_seeds`` run step 3 once each."""

    seed: int = 0
    finetune_seeds: tuple[int, ...] = (0, 1)
    vocab_size: int = 512
    hidden_size: int = 128
    intermediate_size: int = 256
    num_layers: int = 2
    num_heads: int = 4
    tie_embeddings: bool = False
    warmup_steps: int = 700
    warmup_batch: int = 32
    pretrain_steps: int = 300
    finetune_steps: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    warmup_lr: float = 1e-3
    finetune_lr: float = 5e-4
    curriculum_steps: int = 300  # difficulty ramps 0 -> 1 over these pretraining steps
    max_position: int = 1100  # position gaps put the final block anywhere up to here
    n_eval: int = 150
    probe_every: int = 75
    n_probe: int = 30
    threads: int = 1
    warmup_only: bool = False  # measure the induction warm-up alone (a probe; nothing is saved)

    def scaled(self, quick: bool) -> "ReaderConfig":
        if not quick:
            return self
        return replace(self, vocab_size=400, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2,
                       warmup_steps=3, warmup_batch=4, pretrain_steps=3, finetune_steps=2, batch_size=4,
                       curriculum_steps=2, n_eval=3, probe_every=0, n_probe=2, finetune_seeds=(0, 1))


@dataclass
class Report:
    config: dict[str, Any]
    exact_match: dict[str, dict[str, float]] = field(default_factory=dict)  # row -> seed -> EM
    right_sentence: dict[str, dict[str, float]] = field(default_factory=dict)  # row -> seed -> share
    seconds: dict[str, float] = field(default_factory=dict)
    probes: list[dict[str, Any]] = field(default_factory=list)
    parameters: int = 0
    examples: list[dict[str, str]] = field(default_factory=list)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- tokenizer and model ------------------------------------------------------------------------------------------
def corpus_texts() -> list[str]:
    return [p.read_text(encoding="utf-8") for p in sorted(CORPUS.glob("*.md"))]


def build_tokenizer(task: ReaderTask, vocab_size: int, seed: int) -> Any:
    """Byte-level BPE over generated task text + the packaged corpus text; covers any input (byte fallback)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = task.corpus_text(random.Random(f"tokenizer-{seed}"), n=1500 if vocab_size > 1000 else 50)
    texts += corpus_texts()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   model_max_length=4096)


def build_model(config: ReaderConfig, tokenizer: Any) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=config.hidden_size,
                      intermediate_size=config.intermediate_size, num_hidden_layers=config.num_layers,
                      num_attention_heads=config.num_heads, num_key_value_heads=config.num_heads,
                      max_position_embeddings=4096, tie_word_embeddings=config.tie_embeddings, bos_token_id=tokenizer.bos_token_id,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(config.seed)
    return LlamaForCausalLM._from_config(cfg, attn_implementation="sdpa", dtype=torch.float32)


def token_words(tokenizer: Any) -> list[str]:
    """Every ordinary vocabulary entry as text (so generated data shows every token to the model)."""
    out = []
    for i in range(len(tokenizer)):
        text = tokenizer.decode([i]).strip()
        if text and text.isprintable() and text not in SPECIAL_TOKENS:
            out.append(text)
    return out


# -- training -----------------------------------------------------------------------------------------------------
def answer_loss(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, float]:
    """Cross-entropy on labelled tokens only (the LM head runs only where there is a label), and the share of
    those tokens the model already predicts (greedy)."""
    inner = model.model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                        position_ids=batch.get("position_ids"))
    hidden = inner.last_hidden_state[:, :-1]  # [B, T-1, D]
    labels = batch["labels"][:, 1:]  # [B, T-1]
    keep = labels != IGNORE_INDEX
    logits = model.lm_head(hidden[keep])  # [N, V]
    accuracy = (logits.argmax(-1) == labels[keep]).float().mean().item()
    return torch.nn.functional.cross_entropy(logits.float(), labels[keep]), accuracy


def train_step(model: Any, opt: torch.optim.Optimizer, batch: dict[str, torch.Tensor]) -> tuple[float, float]:
    """One optimizer step on :func:`answer_loss` (gradients clipped at 1.0); the loss and token accuracy."""
    loss, accuracy = answer_loss(model, batch)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item(), accuracy


def window_means(running: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Mean loss and mean accuracy of the steps since the last log line."""
    return (sum(r[0] for r in running) / len(running), sum(r[1] for r in running) / len(running))


def with_position_gaps(batch: dict[str, torch.Tensor], encoded: Sequence[Any], rng: random.Random,
                       max_position: int) -> dict[str, torch.Tensor]:
    """Add random gaps before each doc block and before the final block (see the module docstring)."""
    positions = batch["position_ids"].clone()  # [B, T]
    for row, enc in enumerate(encoded):
        lengths = enc.layout.block_lengths
        spare = max(0, max_position - len(enc.input_ids))
        extra = int(spare * rng.random())
        if extra == 0 or len(lengths) < 2:
            continue
        cuts = sorted(rng.random() for _ in range(len(lengths) - 1))
        gaps = [int(extra * (b - a)) for a, b in zip([0.0] + cuts, cuts + [1.0])]
        start = lengths[0]
        for i, gap in enumerate(gaps):
            positions[row, start:] += gap
            start += lengths[i + 1] if i + 1 < len(lengths) else 0
    return {**batch, "position_ids": positions}


def schedule(step: int, total: int, lr: float, warmup: int = 30) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def train_phase(model: Any, tokenizer: Any, task: ReaderTask, config: ReaderConfig, *, steps: int, lr: float,
                mode: str, seed: int, difficulty: Any, name: str, report: Report,
                probe_set: Sequence[dict[str, Any]] = ()) -> float:
    """``steps`` optimizer steps on fresh task batches; ``difficulty(step) -> [0, 1]``. Returns seconds."""
    model.train()
    rng = random.Random(f"{name}-{seed}")
    collator = BlockCollator(tokenizer, reader_prompt_config(), mode=mode, full_fraction=0.5, max_len=4096,
                             seed=seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    start, running = time.perf_counter(), []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = schedule(step, steps, lr)
        examples = task.examples(rng, config.batch_size, difficulty(step))
        encoded = [collator.encode(ex) for ex in examples]
        batch = with_position_gaps(collator.collate(encoded), encoded, rng, config.max_position)
        running.append(train_step(model, opt, batch))
        if (step + 1) % 25 == 0:
            mean_loss, mean_acc = window_means(running)
            log(f"{name} step {step + 1}/{steps} loss {mean_loss:.3f} token accuracy {mean_acc:.3f} "
                f"difficulty {difficulty(step):.2f} ({time.perf_counter() - start:.0f}s)")
            report.probes.append({"phase": name, "step": step + 1, "loss": round(mean_loss, 3),
                                  "token_accuracy": round(mean_acc, 3),
                                  "minutes": round((time.perf_counter() - start) / 60, 2)})
            running = []
        if config.probe_every and probe_set and (step + 1) % config.probe_every == 0:
            level = difficulty(step)
            probes = task.examples(random.Random(f"probe-{step}"), len(probe_set), level)  # held out: own seed
            em = exact_match(model, tokenizer, probes, "block" if mode != "full" else "full")
            report.probes.append({"phase": name, "step": step + 1, "minutes": round((time.perf_counter() - start) / 60, 1),
                                  "exact_match": em, "mode": mode, "difficulty": round(level, 2)})
            log(f"{name} probe step {step + 1}: exact match {em:.3f} at difficulty {level:.2f}")
            model.train()
    model.eval()
    return time.perf_counter() - start


def warmup_phase(model: Any, tokenizer: Any, config: ReaderConfig, report: Report | None = None) -> float:
    """Induction warm-up with the plain causal mask: random strings shown twice, loss on the second copy."""
    model.train()
    rng = random.Random(f"warmup-{config.seed}")
    ids = [i for i in range(len(tokenizer)) if i not in tokenizer.all_special_ids]
    opt = torch.optim.AdamW(model.parameters(), lr=config.warmup_lr, weight_decay=0.01, betas=(0.9, 0.98))
    start, running = time.perf_counter(), []
    for step in range(config.warmup_steps):
        for group in opt.param_groups:
            group["lr"] = schedule(step, config.warmup_steps * 4, config.warmup_lr)
        rows, labels = induction_batch(rng, ids, config.warmup_batch)
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)  # [B, T]
        label_ids = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)  # [B, T]
        for i, (r, lab) in enumerate(zip(rows, labels)):
            input_ids[i, : len(r)] = torch.tensor(r)
            label_ids[i, : len(lab)] = torch.tensor(lab)
        running.append(train_step(model, opt, {"input_ids": input_ids, "labels": label_ids}))
        if (step + 1) % 50 == 0:
            mean_loss, mean_acc = window_means(running)
            log(f"warmup step {step + 1}/{config.warmup_steps} loss {mean_loss:.3f} copy accuracy {mean_acc:.3f} "
                f"({time.perf_counter() - start:.0f}s)")
            if report is not None:
                report.probes.append({"phase": "warmup", "step": step + 1, "loss": round(mean_loss, 3),
                                      "token_accuracy": round(mean_acc, 3),
                                      "minutes": round((time.perf_counter() - start) / 60, 2)})
            running = []
    model.eval()
    return time.perf_counter() - start


# -- evaluation ---------------------------------------------------------------------------------------------------
def answers(model: Any, tokenizer: Any, examples: Sequence[dict[str, Any]], mode: str,
            max_new_tokens: int = 128) -> list[str]:
    engine = BlockAttentionEngine(model, tokenizer, EngineConfig(prompt=reader_prompt_config()))
    generation = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False)
    return [engine.generate(example_blocks(ex), ex["question"], mode=mode, generation=generation).text.strip()
            for ex in examples]


def exact_match(model: Any, tokenizer: Any, examples: Sequence[dict[str, Any]], mode: str,
                scores: dict[str, float] | None = None) -> float:
    """Share of examples whose quote equals the evidence sentence; ``scores`` also gets ``"sentence"``: the share
    whose quote holds at least 80% of the evidence sentence's content words (the right sentence, maybe imperfect)."""
    from block_attention.finetune.reader_task import answer_recall

    got = answers(model, tokenizer, examples, mode)
    n = max(1, len(examples))
    if scores is not None:
        scores["sentence"] = sum(answer_recall(ex["answer"], g) >= 0.8 for g, ex in zip(got, examples)) / n
    return sum(g == ex["answer"] for g, ex in zip(got, examples)) / n


ROWS = {"1": ("pretrained (full attention)", "full"), "2": ("pretrained (full attention)", "block"),
        "3": ("block fine-tuned (mixed)", "block"), "4": ("block fine-tuned (mixed)", "full"),
        "5": ("control: same steps, full mask", "block"), "6": ("control: same steps, full mask", "full")}


def _resume(model: Any, workdir: Path | None, name: str) -> bool:
    """Load ``workdir/name.safetensors`` into ``model`` when it exists (resuming a stopped run)."""
    if workdir is None or not (workdir / f"{name}.safetensors").is_file():
        return False
    from safetensors.torch import load_file

    missing, unexpected = model.load_state_dict(load_file(workdir / f"{name}.safetensors"), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    log(f"resumed {name} from {workdir}")
    return True


def _keep(model: Any, workdir: Path | None, name: str) -> None:
    if workdir is not None:
        from safetensors.torch import save_file

        workdir.mkdir(parents=True, exist_ok=True)
        tied = model.config.tie_word_embeddings
        state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()
                 if not (tied and k == "lm_head.weight")}
        save_file(state, workdir / f"{name}.safetensors")


def run(config: ReaderConfig, out: Path, workdir: Path | None = None) -> Report:
    torch.set_num_threads(config.threads)
    report = Report(config=asdict(config))
    t0 = time.perf_counter()
    words_task = ReaderTask()
    tokenizer = build_tokenizer(words_task, config.vocab_size, config.seed)
    task = ReaderTask(extra_words=token_words(tokenizer))
    model = build_model(config, tokenizer)
    report.parameters = sum(p.numel() for p in model.parameters())
    log(f"tokenizer {len(tokenizer)} tokens; model {report.parameters:,} parameters")
    held_out = task.examples(random.Random(f"held-out-{config.seed}"), config.n_eval, 1.0)
    probe_set = held_out[: config.n_probe]

    if not _resume(model, workdir, "pretrain"):
        if not _resume(model, workdir, "warmup"):
            report.seconds["warmup"] = warmup_phase(model, tokenizer, config, report)
            if config.warmup_only:
                report.seconds["total"] = time.perf_counter() - t0
                return report
            _keep(model, workdir, "warmup")
        ramp = max(1, config.curriculum_steps)
        report.seconds["pretrain"] = train_phase(
            model, tokenizer, task, config, steps=config.pretrain_steps, lr=config.lr, mode="full", seed=config.seed,
            difficulty=lambda s: min(1.0, s / ramp), name="pretrain", report=report, probe_set=probe_set)
        _keep(model, workdir, "pretrain")
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    for key in ("1", "2"):
        scores: dict[str, float] = {}
        report.exact_match.setdefault(key, {})["-"] = exact_match(model, tokenizer, held_out, ROWS[key][1], scores)
        report.right_sentence.setdefault(key, {})["-"] = scores["sentence"]
        log(f"row {key} ({ROWS[key][0]}, {ROWS[key][1]}): {report.exact_match[key]['-']:.3f} "
            f"(right sentence {scores['sentence']:.3f})")
    for ft_seed in config.finetune_seeds:
        for kind, mode, keys in (("finetune", "mixed", ("3", "4")), ("control", "full", ("5", "6"))):
            model.load_state_dict(base_state)
            name = f"{kind}-seed{ft_seed}"
            report.seconds[name] = train_phase(
                model, tokenizer, task, config, steps=config.finetune_steps, lr=config.finetune_lr, mode=mode,
                seed=1000 + ft_seed, difficulty=lambda s: 1.0, name=name, report=report)
            for key in keys:
                scores = {}
                em = exact_match(model, tokenizer, held_out, ROWS[key][1], scores)
                report.exact_match.setdefault(key, {})[str(ft_seed)] = em
                report.right_sentence.setdefault(key, {})[str(ft_seed)] = scores["sentence"]
                log(f"row {key} ({ROWS[key][0]}, {ROWS[key][1]}) seed {ft_seed}: {em:.3f} "
                    f"(right sentence {scores['sentence']:.3f})")
            if kind == "finetune" and ft_seed == config.finetune_seeds[0]:
                got = answers(model, tokenizer, held_out[:3], "block")
                report.examples = [{"question": ex["question"], "answer": ex["answer"], "got": g}
                                   for ex, g in zip(held_out[:3], got)]
                save_finetuned(model, tokenizer, out, reader_prompt_config(), "mixed")
                log(f"saved the block fine-tuned model to {out}")
    report.seconds["total"] = time.perf_counter() - t0
    return report


EDITS = (  # (question substring, corpus file, old text, new text, old value, new value)
    ("Grace Darling", "lighthouse-keepers.md", "brought back nine survivors", "brought back seven survivors",
     "nine", "seven"),
    ("first Fresnel lens", "lenses-and-lamps.md", "installed in 1823 in", "installed in 1826 in", "1823", "1826"),
    ("Trinity House withdraw", "signals-and-automation.md", "in Kent in November 1998", "in Kent in June 1997",
     "1998", "1997"),
)


def demo_report(checkpoint: Path) -> dict[str, Any]:
    """The demo questions through the demo's own path (retriever top 4 + engine), block and full mode, scored
    with :func:`~block_attention.finetune.reader_task.is_correct`; and the edited-passage checks."""
    import shutil
    import tempfile

    from block_attention.demo import answer_demo_questions
    from block_attention.finetune.reader_task import answer_recall

    out: dict[str, Any] = {}
    for mode in ("block", "full"):
        rows = answer_demo_questions(str(checkpoint), mode=mode)
        out[mode] = [{"question": r.question, "reference": r.reference, "answer": r.answer,
                      "recall": round(answer_recall(r.reference, r.answer), 3)} for r in rows]
        out[f"{mode}_correct"] = sum(r["recall"] >= 0.5 for r in out[mode])
        out[f"{mode}_strict"] = sum(r["recall"] == 1.0 for r in out[mode])
    edits = []
    with tempfile.TemporaryDirectory(prefix="reader-edit-") as tmp:
        for needle, name, old, new, old_value, new_value in EDITS:
            corpus = Path(tmp) / name.replace(".md", "")
            shutil.copytree(CORPUS, corpus)
            path = corpus / name
            path.write_text(path.read_text(encoding="utf-8").replace(old, new), encoding="utf-8")
            question = next(q for q in out["block"] if needle in q["question"])["question"]
            before = next(q for q in out["block"] if q["question"] == question)["answer"]
            after = answer_demo_questions(str(checkpoint), corpus=corpus, questions=[question])[0].answer
            edits.append({"question": question, "edit": f"{old!r} -> {new!r}", "before": before, "after": after,
                          "follows_edit": old_value in before and new_value in after and old_value not in after})
    out["edits"] = edits
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a seconds-long smoke run with a toy model (not shipped)")
    p.add_argument("--out", default=None, help=f"checkpoint directory (required; {PACKAGED} ships it)")
    p.add_argument("--report", default=None, help="write the JSON report here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=None, help="keep phase checkpoints here and resume from them")
    p.add_argument("--pretrain-steps", type=int, default=None)
    p.add_argument("--finetune-steps", type=int, default=None)
    p.add_argument("--layers", type=int, default=None, help="override the number of layers (probes)")
    p.add_argument("--warmup-steps", type=int, default=None)
    p.add_argument("--curriculum-steps", type=int, default=None)
    p.add_argument("--warmup-only", action="store_true", help="run the induction warm-up alone and report it")
    p.add_argument("--demo-only", default=None, metavar="CKPT", help="only score CKPT on the demo questions")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.out is None and not args.demo_only:
        print(f"Pass --out DIR for the checkpoint (--out {PACKAGED} ships it as tiny-reader; --quick trains a toy "
              "model, never ship that).", file=sys.stderr)
        return 2
    if args.demo_only:
        print(json.dumps(demo_report(Path(args.demo_only)), indent=1))
        return 0
    config = ReaderConfig(seed=args.seed).scaled(args.quick)
    if args.pretrain_steps:
        config = replace(config, pretrain_steps=args.pretrain_steps)
    if args.finetune_steps:
        config = replace(config, finetune_steps=args.finetune_steps)
    if args.warmup_steps:
        config = replace(config, warmup_steps=args.warmup_steps)
    if args.curriculum_steps:
        config = replace(config, curriculum_steps=args.curriculum_steps)
    if args.layers:
        config = replace(config, num_layers=args.layers)
    if args.warmup_only:
        config = replace(config, warmup_only=True)
    report = run(config, Path(args.out), workdir=Path(args.workdir) if args.workdir else None)
    summary = asdict(report)
    if not (args.quick or args.warmup_only):
        summary["demo"] = demo_report(Path(args.out))
    text = json.dumps(summary, indent=1)
    if args.report:
        Path(args.report).write_text(text + "\n", encoding="utf-8")
    print(json.dumps({"exact_match": report.exact_match, "right_sentence": report.right_sentence, "seconds": {k: round(v, 1) for k, v in report.seconds.items()},
                      "parameters": report.parameters}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
