"""Training batches whose tokens, positions and attention are exactly what the engine computes at inference.

Contract of :class:`BlockCollator`:

* An example is ``{"blocks": [{"text", "title"?, "id"?}], "question": str, "answer": str, "system"?: str,
  "history"?: [{"role", "content"}], "attention"?: "block"|"full"}``. The prompt is
  :meth:`PromptBuilder.layout` of it (prefix block + one block per doc + final block), i.e. the very tokens the
  engine serves. The response (``response_prefix + answer``, tokenized alone, then EOS) is appended after the
  final block; like generated tokens it is global.
* ``input_ids [B, T]``: right-padded with the pad id. ``labels [B, T]``: -100 everywhere except the response tokens
  and EOS (``label_scope="final"`` also labels the final block, ``"all"`` every token: for pretraining from
  scratch, where copying the question's entity from the context teaches retrieval). ``position_ids [B, T]``: ``arange(T)`` on every row (where re-encoded block keys land at inference).
* ``attention_mask [B, 1, T, T]``: additive float (0 = may attend, dtype min = masked). Block mode:
  :func:`block_causal_mask` of the layout's block lengths with the final block + response as the global tail
  (exactly the engine's block mode); full mode: plain causal (the engine's full mode). Padding columns are masked
  for every row; padding rows see only themselves (never an all-masked row, so no NaN in any dtype).
* ``mode="mixed"`` draws block or full per example (``full_fraction`` of them full) from a seeded stream; an
  example's own ``"attention"`` key overrides the mode (to train explicit block + full copies, as in the paper).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from block_attention.core.blocks import Block
from block_attention.core.checks import is_int
from block_attention.core.errors import ConfigError, TrainingDataError
from block_attention.core.layout import PromptLayout, additive_mask, block_causal_mask
from block_attention.core.prompt import PromptBuilder, PromptConfig, pad_token_id

CollatorMode = Literal["block", "full", "mixed"]
LabelScope = Literal["response", "final", "all"]
IGNORE_INDEX = -100


@dataclass(frozen=True)
class CollatorConfig:
    """How examples become batches.

    ``mode``: ``"block"`` (block-attention mask), ``"full"`` (causal) or ``"mixed"`` (per example, ``full_fraction``
    of them full). ``max_len``: longest allowed example (prompt + response + EOS); longer ones raise.
    ``response_prefix``: text put before the answer (``None``: a space for plain prompts, nothing after a chat
    template's assistant header). ``mask_dtype``: dtype of the additive mask (the model's compute dtype).
    ``label_scope``: which tokens carry labels: ``"response"`` (answer + EOS, the fine-tuning default),
    ``"final"`` (also the final block) or ``"all"`` (every token).
    """

    mode: CollatorMode = "block"
    full_fraction: float = 0.5
    max_len: int = 2048
    response_prefix: str | None = None
    seed: int = 0
    mask_dtype: torch.dtype = torch.float32
    label_scope: LabelScope = "response"

    def __post_init__(self) -> None:
        if self.mode not in ("block", "full", "mixed"):
            raise ConfigError(f"mode must be 'block', 'full' or 'mixed', got {self.mode!r}.")
        if not isinstance(self.full_fraction, (int, float)) or not 0.0 <= self.full_fraction <= 1.0:
            raise ConfigError(f"full_fraction must be a number in [0, 1], got {self.full_fraction!r}.")
        if not is_int(self.max_len) or self.max_len < 2:
            raise ConfigError(f"max_len must be an int >= 2, got {self.max_len!r}.")
        if self.response_prefix is not None and not isinstance(self.response_prefix, str):
            raise ConfigError(f"response_prefix must be a str or None, got {type(self.response_prefix).__name__}.")
        if not isinstance(self.mask_dtype, torch.dtype) or not self.mask_dtype.is_floating_point:
            raise ConfigError(f"mask_dtype must be a floating torch dtype (e.g. torch.float32), got {self.mask_dtype!r}.")
        if self.label_scope not in ("response", "final", "all"):
            raise ConfigError(f"label_scope must be 'response', 'final' or 'all', got {self.label_scope!r}.")


@dataclass(frozen=True)
class EncodedExample:
    """One example, tokenized: the prompt layout, the response ids (EOS included) and its attention mode."""

    layout: PromptLayout
    response_ids: tuple[int, ...]
    attention: Literal["block", "full"]
    label_scope: LabelScope = "response"

    @property
    def input_ids(self) -> list[int]:
        return self.layout.input_ids() + list(self.response_ids)

    @property
    def labels(self) -> list[int]:
        ids = self.input_ids
        first = {"response": self.layout.total_len, "final": self.layout.context_len, "all": 1}[self.label_scope]
        return [IGNORE_INDEX] * first + ids[first:]

    @property
    def global_len(self) -> int:
        """Tokens that attend to everything: the final block and the response."""
        return len(self.layout.final_ids) + len(self.response_ids)

    def allowed(self) -> torch.Tensor:
        """Boolean ``[T, T]`` attention of this example (True = may attend)."""
        lengths = self.layout.block_lengths if self.attention == "block" else []
        return block_causal_mask(lengths, self.global_len if lengths else len(self.input_ids))


def example_blocks(example: Mapping[str, Any], where: str = "example") -> list[Block]:
    """The blocks of a training/evaluation example (``{"blocks": [{"text", "title"?, "id"?} | str]}``)."""
    raw = example.get("blocks")
    if not isinstance(raw, Sequence) or isinstance(raw, (str, bytes)):
        raise TrainingDataError(f"{where}: 'blocks' must be a list of {{'text', 'title'?, 'id'?}} objects.")
    out = []
    for i, item in enumerate(raw):
        if isinstance(item, str):
            item = {"text": item}
        if not isinstance(item, Mapping) or not isinstance(item.get("text"), str):
            raise TrainingDataError(f"{where}: block {i} must be an object with a 'text' string, got {item!r}.")
        doc_id = item.get("id")
        out.append(Block(text=item["text"], doc_id=None if doc_id is None else str(doc_id), title=item.get("title")))
    return out


class BlockCollator:
    """Callable collator for ``torch.utils.data.DataLoader`` / ``transformers.Trainer``.

    ``BlockCollator(tokenizer, prompt_config, mode="block"|"full"|"mixed", full_fraction=0.5, max_len=2048)``;
    keyword-only extras are the other :class:`CollatorConfig` fields (or pass ``config=``).
    """

    def __init__(self, tokenizer: Any, prompt_config: PromptConfig | None = None, mode: CollatorMode = "block",
                 full_fraction: float = 0.5, max_len: int = 2048, *, response_prefix: str | None = None,
                 seed: int = 0, mask_dtype: torch.dtype = torch.float32, label_scope: LabelScope = "response",
                 config: CollatorConfig | None = None) -> None:
        self.config = config or CollatorConfig(mode=mode, full_fraction=full_fraction, max_len=max_len,
                                               response_prefix=response_prefix, seed=seed, mask_dtype=mask_dtype,
                                               label_scope=label_scope)
        self.tokenizer = tokenizer
        self.prompt_config = prompt_config or PromptConfig()
        self.builder = PromptBuilder(tokenizer, self.prompt_config)
        if tokenizer.eos_token_id is None:
            raise ConfigError("The tokenizer has no EOS token; set tokenizer.eos_token so responses can end.")
        self.eos_id = int(tokenizer.eos_token_id)
        self.pad_id = pad_token_id(tokenizer)
        prefix = self.config.response_prefix
        self.response_prefix = prefix if prefix is not None else ("" if self.builder.chat else " ")
        self._rng = random.Random(self.config.seed)

    @property
    def mode(self) -> str:
        return self.config.mode

    def _attention(self, example: Mapping[str, Any], where: str) -> Literal["block", "full"]:
        forced = example.get("attention")
        if forced is not None:
            if forced not in ("block", "full"):
                raise TrainingDataError(f"{where}: 'attention' must be 'block' or 'full', got {forced!r}.")
            return forced
        if self.config.mode == "mixed":
            return "full" if self._rng.random() < self.config.full_fraction else "block"
        return self.config.mode  # type: ignore[return-value]

    def encode(self, example: Mapping[str, Any], index: int | None = None) -> EncodedExample:
        """Tokenize one example (draws its attention mode in mixed mode)."""
        where = "Training example" + (f" {index}" if index is not None else "")
        if not isinstance(example, Mapping):
            raise TrainingDataError(f"{where} must be a dict with 'blocks', 'question' and 'answer'; got "
                                    f"{type(example).__name__}.")
        for key in ("question", "answer"):
            if not isinstance(example.get(key), str) or not example[key].strip():
                raise TrainingDataError(f"{where}: '{key}' must be a non-empty string.")
        blocks = example_blocks(example, where)
        layout = self.builder.layout(blocks, example["question"], example.get("system"), example.get("history", ()))
        response = self.builder.tokenize(self.response_prefix + example["answer"]) + [self.eos_id]
        encoded = EncodedExample(layout, tuple(response), self._attention(example, where), self.config.label_scope)
        total = len(encoded.input_ids)
        if total > self.config.max_len:
            raise TrainingDataError(
                f"{where} is {total} tokens (prompt {layout.total_len} + response {len(response)}), over max_len="
                f"{self.config.max_len}; raise max_len or give it fewer/shorter blocks."
            )
        return encoded

    def collate(self, encoded: Sequence[EncodedExample]) -> dict[str, torch.Tensor]:
        """Pad encoded examples into one batch (see the module docstring for the tensors)."""
        if not encoded:
            raise TrainingDataError("Cannot collate an empty batch; give the collator at least one example.")
        width = max(len(e.input_ids) for e in encoded)
        batch = len(encoded)
        input_ids = torch.full((batch, width), self.pad_id, dtype=torch.long)  # [B, T]
        labels = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long)  # [B, T]
        allowed = torch.eye(width, dtype=torch.bool).repeat(batch, 1, 1)  # [B, T, T] padding rows: self only
        for row, enc in enumerate(encoded):
            n = len(enc.input_ids)
            input_ids[row, :n] = torch.tensor(enc.input_ids, dtype=torch.long)
            labels[row, :n] = torch.tensor(enc.labels, dtype=torch.long)
            allowed[row, :n, :n] = enc.allowed()
        position_ids = torch.arange(width, dtype=torch.long).expand(batch, width).clone()  # [B, T]
        return {
            "input_ids": input_ids,
            "labels": labels,
            "position_ids": position_ids,
            "attention_mask": additive_mask(allowed, self.config.mask_dtype),  # [B, 1, T, T]
        }

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        return self.collate([self.encode(ex, i) for i, ex in enumerate(examples)])
