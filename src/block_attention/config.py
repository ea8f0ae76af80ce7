"""Frozen, validating configuration objects for the engine and for generation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .errors import ConfigError
from .prompt import PromptConfig

Mode = Literal["block", "full"]
MODES = ("block", "full")


def check_mode(mode: str) -> Mode:
    if mode not in MODES:
        raise ConfigError(f"mode must be 'block' or 'full', got {mode!r}.")
    return mode  # type: ignore[return-value]


@dataclass(frozen=True)
class EngineConfig:
    """Engine behaviour.

    ``mode``: default attention mode of requests (each request may override it).
    ``prompt``: how requests are rendered; ``None`` reads the record a block fine-tune saved in the model config,
    else the defaults. ``overflow``: what to do when the prompt does not fit: ``"error"`` raises
    :class:`ContextTooLongError`; ``"drop_lowest"`` drops the lowest-ranked blocks until it fits.
    ``max_batch_tokens``: padded-token budget of one block-encoding forward pass.
    ``cold_prefill``: how a block-mode request with uncached blocks runs. ``"fused"``: the missing blocks and
    the final block in one forward pass with block-sparse attention (:mod:`block_attention.fused`; each weight
    read once); ``"separate"``: the missing blocks encoded alone (batched), then the final block over the assembled
    cache. Both are exact; a model whose attention the fused path cannot serve falls back to ``"separate"``.
    ``recompute_tokens``: training-free recovery for models that were not block-fine-tuned: in block mode, the
    first ``k`` tokens of every block are recomputed with attention to everything before them (0 = plain block
    mode, see :mod:`block_attention.recovery`). Each request may override it.
    ``sink``: ``"prefix"`` encodes every block behind the prompt's prefix block (a shared attention sink, APE-style;
    see :mod:`block_attention.sink`); ``"none"`` (default) encodes each block alone. Each request may override it.
    """

    mode: Mode = "block"
    prompt: PromptConfig | None = None
    overflow: Literal["error", "drop_lowest"] = "error"
    max_batch_tokens: int = 16384
    cold_prefill: Literal["fused", "separate"] = "separate"
    recompute_tokens: int = 0
    sink: Literal["none", "prefix"] = "none"

    def __post_init__(self) -> None:
        check_mode(self.mode)
        if self.overflow not in ("error", "drop_lowest"):
            raise ConfigError(f"overflow must be 'error' or 'drop_lowest', got {self.overflow!r}.")
        if self.max_batch_tokens < 1:
            raise ConfigError(f"max_batch_tokens must be >= 1, got {self.max_batch_tokens}.")
        if self.cold_prefill not in ("fused", "separate"):
            raise ConfigError(f"cold_prefill must be 'fused' or 'separate', got {self.cold_prefill!r}.")
        if isinstance(self.recompute_tokens, bool) or not isinstance(self.recompute_tokens, int) \
                or self.recompute_tokens < 0:
            raise ConfigError(f"recompute_tokens must be an int >= 0 (0 = plain block mode), got {self.recompute_tokens!r}.")
        if self.sink not in ("none", "prefix"):
            raise ConfigError(f"sink must be 'none' or 'prefix', got {self.sink!r}.")
        if self.prompt is not None and not isinstance(self.prompt, PromptConfig):
            raise ConfigError("EngineConfig.prompt must be a PromptConfig (or None).")


@dataclass(frozen=True)
class GenerationConfig:
    """Decoding settings. Greedy by default; sampling is reproducible with ``seed``."""

    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)
    stop_on_eos: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(self.stop))
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}.")
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0 (use do_sample=False for greedy), got {self.temperature}.")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0 (0 disables it), got {self.top_k}.")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}.")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ConfigError("stop must be a sequence of non-empty strings.")
