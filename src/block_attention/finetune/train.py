"""Block-attention fine-tuning with the transformers ``Trainer``, and saving a checkpoint the engine can serve.

Contract:

* :func:`train` runs ``Trainer`` over examples in the :class:`BlockCollator` format with the collator's 4D additive
  mask and explicit positions (``remove_unused_columns=False``). The model must use the ``sdpa`` or ``eager``
  attention implementation (the only ones that honour an arbitrary 4D mask); anything else raises
  :class:`ConfigError`. ``bf16`` and ``gradient_checkpointing`` are passed through to ``TrainingArguments``. The model
  is trained in place and returned in eval mode.
* :func:`save_finetuned` writes model + tokenizer and records ``model.config.block_attention = {"prompt_config":
  asdict(prompt_config), "trained_with": mode}``, which the engine reads when it is given no prompt config, so
  inference renders prompts exactly as training did.
* :func:`load_examples` reads a JSONL file of examples (one JSON object per line).
* :func:`main` is the CLI: ``python -m block_attention.finetune --model M --data train.jsonl --out DIR``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from block_attention.core.checks import is_int
from block_attention.core.errors import ConfigError
from block_attention.core.extras import require
from block_attention.core.prompt import PromptConfig, recorded_prompt_config
from block_attention.hf.registry import ADAPTER_RECORD  # the record the loader reads beside an adapter
from .collator import BlockCollator, CollatorMode, LabelScope, TrainingDataError

SUPPORTED_ATTENTION = ("sdpa", "eager")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings. ``max_steps > 0`` overrides ``epochs``; ``num_threads`` caps torch CPU threads."""

    mode: CollatorMode = "block"
    full_fraction: float = 0.5
    epochs: float = 1.0
    max_steps: int = -1
    lr: float = 2e-5
    batch_size: int = 8
    grad_accum: int = 1
    warmup_steps: int = 0
    weight_decay: float = 0.0
    lr_scheduler: str = "linear"
    max_grad_norm: float = 1.0
    max_len: int = 2048
    seed: int = 0
    bf16: bool = False
    gradient_checkpointing: bool = False
    logging_steps: int = 10
    num_threads: int | None = None
    output_dir: str | None = None  # Trainer's scratch directory (nothing is checkpointed); None: a temp dir
    label_scope: LabelScope = "response"  # "final"/"all" also train on prompt tokens (pretraining from scratch)
    lora_r: int = 0  # > 0: train a LoRA adapter of this rank (peft) on every linear layer instead of all weights
    lora_alpha: float | None = None  # None: 2 * lora_r
    save_steps: int = 0  # > 0 (with output_dir): a resumable Trainer checkpoint every save_steps steps

    def __post_init__(self) -> None:
        if self.mode not in ("block", "full", "mixed"):
            raise ConfigError(f"TrainConfig.mode must be 'block', 'full' or 'mixed', got {self.mode!r}.")
        if not (isinstance(self.epochs, (int, float)) and self.epochs > 0):
            raise ConfigError(f"TrainConfig.epochs must be > 0, got {self.epochs!r}.")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"TrainConfig.lr must be a positive number, got {self.lr!r}.")
        for name in ("batch_size", "grad_accum", "logging_steps"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise ConfigError(f"TrainConfig.{name} must be an int >= 1, got {value!r}.")
        for name in ("max_steps",):
            value = getattr(self, name)
            if not isinstance(value, int) or value == 0 or value < -1:
                raise ConfigError(f"TrainConfig.max_steps must be -1 (use epochs) or an int >= 1, got {value!r}.")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ConfigError(f"TrainConfig.warmup_steps must be an int >= 0, got {self.warmup_steps!r}.")
        if self.num_threads is not None and (not isinstance(self.num_threads, int) or self.num_threads < 1):
            raise ConfigError(f"TrainConfig.num_threads must be None or an int >= 1, got {self.num_threads!r}.")
        if not is_int(self.lora_r) or self.lora_r < 0:
            raise ConfigError(f"TrainConfig.lora_r must be an int >= 0 (0: full fine-tuning), got {self.lora_r!r}.")
        if not isinstance(self.save_steps, int) or self.save_steps < 0:
            raise ConfigError(f"TrainConfig.save_steps must be an int >= 0, got {self.save_steps!r}.")
        if self.save_steps and not self.output_dir:
            raise ConfigError("TrainConfig.save_steps needs output_dir (where the resumable checkpoints go).")
        if not 0.0 <= self.full_fraction <= 1.0:
            raise ConfigError(f"TrainConfig.full_fraction must be in [0, 1], got {self.full_fraction!r}.")


@dataclass(frozen=True)
class TrainResult:
    model: Any
    steps: int
    train_loss: float
    losses: tuple[tuple[int, float], ...]  # (step, logged training loss)
    seconds: float


class _ListDataset(torch.utils.data.Dataset):
    def __init__(self, examples: Sequence[Mapping[str, Any]]) -> None:
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> Mapping[str, Any]:
        return self.examples[index]


def check_attention(model: Any) -> None:
    impl = getattr(model.config, "_attn_implementation", None)
    if impl not in SUPPORTED_ATTENTION:
        raise ConfigError(
            f"Block-attention training needs a 4D attention mask, which attn_implementation={impl!r} ignores; load "
            "the model with attn_implementation='sdpa' (or 'eager'), e.g. "
            "AutoModelForCausalLM.from_pretrained(path, attn_implementation='sdpa')."
        )


def train(model: Any, tokenizer: Any, examples: Sequence[Mapping[str, Any]], config: TrainConfig | None = None,
          prompt_config: PromptConfig | None = None, callbacks: Sequence[Any] = ()) -> TrainResult:
    """Fine-tune ``model`` in place on ``examples`` with the block (or full/mixed) mask; returns it in eval mode."""
    require("train", "accelerate")  # transformers' Trainer needs it
    from transformers import PrinterCallback, Trainer, TrainingArguments

    config = config or TrainConfig()
    check_attention(model)
    if not examples:
        raise TrainingDataError("No training examples were given; pass at least one {'blocks', 'question', 'answer'}.")
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    mask_dtype = torch.bfloat16 if config.bf16 else next(model.parameters()).dtype
    collator = BlockCollator(tokenizer, prompt_config, mode=config.mode, full_fraction=config.full_fraction,
                             max_len=config.max_len, seed=config.seed, mask_dtype=mask_dtype,
                             label_scope=config.label_scope)
    for i, example in enumerate(examples[:8]):  # fail fast, with the example's index, before Trainer starts
        collator.encode(example, i)
    if config.lora_r:
        model = with_lora(model, config.lora_r, config.lora_alpha)
    with tempfile.TemporaryDirectory(prefix="block-ft-") as scratch:
        args = TrainingArguments(
            output_dir=config.output_dir or scratch,
            per_device_train_batch_size=config.batch_size,
            gradient_accumulation_steps=config.grad_accum,
            num_train_epochs=float(config.epochs),
            max_steps=config.max_steps,
            learning_rate=float(config.lr),
            lr_scheduler_type=config.lr_scheduler,
            warmup_steps=config.warmup_steps,
            weight_decay=config.weight_decay,
            max_grad_norm=config.max_grad_norm,
            bf16=config.bf16,
            activation_checkpointing=config.gradient_checkpointing,
            dataloader_pin_memory=False,
            logging_steps=config.logging_steps,
            save_strategy="steps" if config.save_steps else "no",
            save_steps=config.save_steps or 500,
            save_total_limit=2,
            report_to="none",
            remove_unused_columns=False,
            dataloader_num_workers=0,
            disable_tqdm=True,
            seed=config.seed,
            data_seed=config.seed,
        )
        trainer = Trainer(model=model, args=args, train_dataset=_ListDataset(examples), data_collator=collator,
                          callbacks=list(callbacks))
        trainer.remove_callback(PrinterCallback)  # losses are returned (and reported by callbacks), not printed
        start = time.perf_counter()
        output = trainer.train(resume_from_checkpoint=_last_checkpoint(config.output_dir) if config.save_steps else None)
        seconds = time.perf_counter() - start
        history = trainer.state.log_history
    if config.gradient_checkpointing and hasattr(model, "gradient_checkpointing_disable"):
        model.gradient_checkpointing_disable()
    losses = tuple((int(h["step"]), float(h["loss"])) for h in history if "loss" in h)
    return TrainResult(model.eval(), int(output.global_step), float(output.training_loss), losses, seconds)


def with_lora(model: Any, r: int, alpha: float | None = None) -> Any:
    """``model`` wrapped in a fresh LoRA adapter (peft) of rank ``r`` on every attention and MLP projection."""
    require("train", "peft")
    from peft import LoraConfig, get_peft_model
    targets = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                      if isinstance(module, torch.nn.Linear) and not name.endswith("lm_head")})
    lora = LoraConfig(r=r, lora_alpha=float(alpha if alpha is not None else 2 * r), lora_dropout=0.0,
                      target_modules=targets, task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def _last_checkpoint(output_dir: str | None) -> str | None:
    """The newest ``checkpoint-N`` folder Trainer wrote under ``output_dir`` (None: start from scratch)."""
    if not output_dir or not Path(output_dir).is_dir():
        return None
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(output_dir)


def save_finetuned(model: Any, tokenizer: Any, out_dir: str | os.PathLike[str], prompt_config: PromptConfig,
                   trained_with: str, base_name: str | None = None) -> Path:
    """Save model + tokenizer with the ``block_attention`` record the engine reads (see the module docstring)."""
    if trained_with not in ("block", "mixed", "full"):
        raise ConfigError(f"trained_with must be 'block', 'mixed' or 'full', got {trained_with!r}.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = {"prompt_config": dataclasses.asdict(prompt_config), "trained_with": trained_with}
    if hasattr(model, "peft_config"):  # a LoRA adapter: its weights (fp16) + the record, not the base model
        state = {k: v.detach().to(torch.float16).contiguous() for k, v in _adapter_state(model).items()}
        model.save_pretrained(out, state_dict=state)
        (out / ADAPTER_RECORD).write_text(json.dumps(dict(record, base=base_name or "")) + "\n", encoding="utf-8")
        return out
    model.config.block_attention = record
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _adapter_state(model: Any) -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(model)


def load_examples(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Examples from a JSONL file (blank lines skipped); a bad line raises naming its number."""
    p = Path(path)
    if not p.is_file():
        raise TrainingDataError(f"Training data file {str(p)!r} does not exist; pass a JSONL file of examples.")
    out = []
    with p.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TrainingDataError(f"{p}:{number} is not valid JSON ({exc.msg}); write one object per line.") from None
            if not isinstance(record, dict):
                raise TrainingDataError(f"{p}:{number} must be a JSON object with 'blocks', 'question', 'answer'.")
            out.append(record)
    return out


def load_model(name_or_path: str, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """Load a causal LM (sdpa attention) and its tokenizer from a local directory or the hub cache."""
    from ..hf.registry import REAL_MODELS, checkpoint_dir
    from ..models import load_pretrained

    path = str(checkpoint_dir(name_or_path)) if name_or_path in REAL_MODELS else name_or_path
    model, tokenizer = load_pretrained(path, dtype=dtype, model_kwargs={"attn_implementation": "sdpa"})
    return model, tokenizer


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m block_attention.finetune",
        description="Fine-tune a causal LM with the block-attention mask so it can serve cached blocks.",
    )
    p.add_argument("--model", required=True, help="HF model id, local directory or built-in name (smollm2-135m)")
    p.add_argument("--data", required=True,
                   help="JSONL of {'blocks': [{'text', 'title'?, 'id'?}], 'question', 'answer'}, or facts:N for N "
                        "generated invented-fact examples (block_attention.finetune.facts, training split)")
    p.add_argument("--lora-r", type=int, default=0, help="train a LoRA adapter of this rank (0: all weights)")
    p.add_argument("--lr-scheduler", default="linear", help="transformers scheduler name, e.g. constant_with_warmup")
    p.add_argument("--logging-steps", type=int, default=10, help="print the running loss every N steps")
    p.add_argument("--checkpoint-dir", default=None, help="resumable Trainer checkpoints (rerun to resume)")
    p.add_argument("--save-steps", type=int, default=0, help="checkpoint every N steps (needs --checkpoint-dir)")
    p.add_argument("--out", required=True, help="output directory (model + tokenizer + block_attention record)")
    p.add_argument("--mode", choices=("block", "mixed"), default="block",
                   help="block: every example with the block mask; mixed: a fraction with full attention too")
    p.add_argument("--full-fraction", type=float, default=0.5, help="share of full-attention examples in mixed mode")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--max-steps", type=int, default=-1, help="stop after this many optimizer steps (overrides epochs)")
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--warmup-steps", type=int, default=0)
    p.add_argument("--max-len", type=int, default=2048)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bf16", action="store_true", help="bf16 mixed precision (passed to TrainingArguments)")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--prompt-config", default=None,
                   help="JSON file of PromptConfig fields (default: the model's recorded one, else the defaults)")
    return p


def _progress_printer() -> Any:
    """A Trainer callback printing each logged loss as one JSON line (flushed: the run is long and backgrounded)."""
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            if logs and "loss" in logs:
                print(json.dumps({"step": state.global_step, "loss": round(float(logs["loss"]), 4),
                                  "lr": logs.get("learning_rate"), "time": round(time.time(), 1)}), flush=True)

    return Progress()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.data.startswith("facts:"):
        from .facts import make_examples

        examples = make_examples(int(args.data.split(":", 1)[1]), split="train", seed=args.seed)
    else:
        examples = load_examples(args.data)
    model, tokenizer = load_model(args.model)
    if args.prompt_config:
        prompt_config = PromptConfig(**json.loads(Path(args.prompt_config).read_text(encoding="utf-8")))
    else:
        prompt_config = recorded_prompt_config(model) or PromptConfig()
    config = TrainConfig(mode=args.mode, full_fraction=args.full_fraction, epochs=args.epochs,
                         max_steps=args.max_steps, lr=args.lr, batch_size=args.batch_size, grad_accum=args.grad_accum,
                         warmup_steps=args.warmup_steps, max_len=args.max_len, seed=args.seed, bf16=args.bf16,
                         gradient_checkpointing=args.gradient_checkpointing, num_threads=args.threads,
                         lora_r=args.lora_r, save_steps=args.save_steps, output_dir=args.checkpoint_dir,
                         lr_scheduler=args.lr_scheduler, logging_steps=args.logging_steps)
    result = train(model, tokenizer, examples, config, prompt_config, callbacks=[_progress_printer()])
    out = save_finetuned(result.model, tokenizer, args.out, prompt_config, args.mode, base_name=args.model)
    (Path(args.out) / "train_log.json").write_text(json.dumps({
        "model": args.model, "data": args.data, "examples": len(examples), "steps": result.steps,
        "seconds": round(result.seconds, 1), "losses": result.losses, "config": dataclasses.asdict(config)},
        default=str) + "\n", encoding="utf-8")
    print(json.dumps({"out": str(out), "steps": result.steps, "train_loss": round(result.train_loss, 6),
                      "seconds": round(result.seconds, 1), "mode": args.mode}))
    return 0
