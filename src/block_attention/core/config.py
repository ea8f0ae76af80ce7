"""Frozen, validating configuration objects for the engine and for generation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .checks import is_int, is_number
from .errors import ConfigError
from .prompt import PromptConfig

Mode = Literal["block", "full"]
MODES = ("block", "full")
Sink = Literal["none", "prefix"]
SINKS = ("none", "prefix")


def check_mode(mode: str) -> Mode:
    if mode not in MODES:
        raise ConfigError(f"mode must be 'block' or 'full', got {mode!r}.")
    return mode  # type: ignore[return-value]


def check_recompute_tokens(k: int) -> int:
    """Validate a recompute count (a non-negative int) and return it (the engine's requests and EngineConfig)."""
    if not is_int(k) or k < 0:
        raise ConfigError(f"recompute_tokens must be an int >= 0 (0 = plain block mode), got {k!r}.")
    return k


def check_sink(sink: str) -> Sink:
    """Validate a sink option (:mod:`block_attention.engine.sink`) and return it."""
    if sink not in SINKS:
        raise ConfigError(f"sink must be 'none' or 'prefix' (encode every block behind the prompt prefix), got {sink!r}.")
    return sink  # type: ignore[return-value]


@dataclass(frozen=True)
class EngineConfig:
    """Engine behaviour.

    ``mode``: default attention mode of requests (each request may override it).
    ``prompt``: how requests are rendered; ``None`` reads the record a block fine-tune saved in the model config,
    else the defaults. ``overflow``: what to do when the prompt does not fit: ``"error"`` raises
    :class:`ContextTooLongError`; ``"drop_lowest"`` drops the lowest-ranked blocks until it fits.
    ``max_batch_tokens``: padded-token budget of one block-encoding forward pass.
    ``cold_prefill``: how a block-mode request with uncached blocks runs. ``"fused"``: the missing blocks and
    the final block in one forward pass with block-sparse attention (:mod:`block_attention.engine.fused`; each weight
    read once); ``"separate"``: the missing blocks encoded alone (batched), then the final block over the assembled
    cache. Both are exact; a model whose attention the fused path cannot serve falls back to ``"separate"``.
    ``recompute_tokens``: training-free recovery for models that were not block-fine-tuned: in block mode, the
    first ``k`` tokens of every block are recomputed with attention to everything before them (0 = plain block
    mode, see :mod:`block_attention.engine.recovery`). Each request may override it.
    ``sink``: ``"prefix"`` encodes every block behind the prompt's prefix block (a shared attention sink, APE-style;
    see :mod:`block_attention.engine.sink`); ``"none"`` (default) encodes each block alone. Each request may
    override it.
    ``final_attention``: how the final block of a block-mode request attends to the assembled cache. ``"sparse"``
    (default, models running ``sdpa``): one SDPA call per layer with a bottom-right causal mask and the key/value
    heads not expanded (:func:`block_attention.engine.fused.block_sparse_attention`), the same attention pattern
    as the model's own; a model or request it cannot serve (soft-capped logits, attention sinks, a sliding window
    shorter than the prompt) runs the model's attention instead. ``"model"``: always the model's own attention.
    ``repeat_cache_bytes``: memory for exact repeats (:mod:`block_attention.engine.repeats`): the final block's KV
    and last logits per request layout, so a repeated block-mode request skips the final block's forward and
    answers bitwise as the first did. ``0`` turns it off.
    """

    mode: Mode = "block"
    prompt: PromptConfig | None = None
    overflow: Literal["error", "drop_lowest"] = "error"
    max_batch_tokens: int = 16384
    cold_prefill: Literal["fused", "separate"] = "separate"
    recompute_tokens: int = 0
    sink: Sink = "none"
    final_attention: Literal["sparse", "model"] = "sparse"
    repeat_cache_bytes: int = 64 << 20

    def __post_init__(self) -> None:
        check_mode(self.mode)
        if self.overflow not in ("error", "drop_lowest"):
            raise ConfigError(f"overflow must be 'error' or 'drop_lowest', got {self.overflow!r}.")
        if self.max_batch_tokens < 1:
            raise ConfigError(f"max_batch_tokens must be >= 1, got {self.max_batch_tokens}.")
        if self.cold_prefill not in ("fused", "separate"):
            raise ConfigError(f"cold_prefill must be 'fused' or 'separate', got {self.cold_prefill!r}.")
        if self.final_attention not in ("sparse", "model"):
            raise ConfigError(f"final_attention must be 'sparse' or 'model', got {self.final_attention!r}.")
        if not is_int(self.repeat_cache_bytes) or self.repeat_cache_bytes < 0:
            raise ConfigError(f"repeat_cache_bytes must be an integer >= 0 (0 turns exact-repeat reuse off), got "
                              f"{self.repeat_cache_bytes!r}.")
        check_recompute_tokens(self.recompute_tokens)
        check_sink(self.sink)
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
        _check_types(self)
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


def _check_types(config: GenerationConfig) -> None:
    """Type checks before any comparison, so ``max_new_tokens="5"`` is a ConfigError, not a TypeError."""
    if not is_int(config.max_new_tokens):
        raise ConfigError(f"max_new_tokens must be an int, got {config.max_new_tokens!r} "
                          f"({type(config.max_new_tokens).__name__}); pass e.g. max_new_tokens=64.")
    for name in ("do_sample", "stop_on_eos"):
        if not isinstance(getattr(config, name), bool):
            raise ConfigError(f"{name} must be True or False, got {getattr(config, name)!r}.")
    for name in ("temperature", "top_p"):
        if not is_number(getattr(config, name)):
            raise ConfigError(f"{name} must be a number, got {getattr(config, name)!r}; pass e.g. {name}=0.9.")
    if not is_int(config.top_k):
        raise ConfigError(f"top_k must be an int (0 disables it), got {config.top_k!r}.")
    if config.seed is not None and not is_int(config.seed):
        raise ConfigError(f"seed must be an int or None, got {config.seed!r}.")
    if config.stop is None or isinstance(config.stop, bytes) or not isinstance(config.stop, (str, list, tuple)):
        raise ConfigError(f"stop must be a string or a list of strings, got {type(config.stop).__name__}.")
