"""Settings shared by :class:`BlockAttentionLLM` and :class:`ChatBlockAttention`, and the per-call options.

Contract:

* The engine is either injected (``engine=BlockAttentionEngine(...)``; several LangChain objects may share one
  engine and so one KV cache) or loaded lazily from ``model`` on first use, once, under a lock:
  ``BlockAttentionEngine.from_pretrained(model, **model_kwargs)`` for a hub id or local path, or
  ``block_attention.models.load_engine`` for the library's offline built-ins (``"tiny-random"``). Constructing a
  LangChain object never loads weights.
* Decoding is greedy unless ``temperature > 0`` (then seeded sampling with ``top_p``/``top_k``/``seed``).
  ``max_tokens`` is the number of new tokens. ``stop`` given to a call replaces the instance's ``stop``.
* Calls without documents and without an explicit instruction render no instruction (the engine's default one is
  about reference documents); calls with documents use ``instruction`` or the engine's default.
* Per-call keyword arguments (``invoke(..., documents=[...], mode="full")`` or ``.bind(...)``) are parsed by
  :func:`parse_call_options`; an unknown one raises ``ValueError`` naming the valid ones.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import BaseMessage
from pydantic import BaseModel, Field, PrivateAttr, model_validator

from .documents import to_blocks

if TYPE_CHECKING:
    from block_attention import Block, BlockAttentionEngine, GenerationConfig

DEFAULT_MODEL_NAME = "block-attention"

# Keyword arguments LangChain itself may forward to a model call; they carry no request content.
_FRAMEWORK_KWARGS = frozenset({"stream", "run_name", "run_id"})
_OVERRIDES = ("mode", "instruction", "max_tokens", "temperature", "top_p", "top_k", "seed")


class BlockAttentionParams(BaseModel):
    """Engine and decoding settings of a LangChain block-attention model."""

    model: str | None = None
    """Hub id or local path of a causal LM, loaded lazily; with ``engine`` given, only the reported model name."""
    engine: Any = Field(default=None, exclude=True, repr=False)
    """An existing ``block_attention.BlockAttentionEngine`` to use (and share, with its KV cache)."""
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments of ``BlockAttentionEngine.from_pretrained`` (``dtype``, ``device``, ``store``, ...)."""
    mode: Literal["block", "full"] | None = None
    """Attention mode of requests; ``None`` uses the engine's default (``"block"``)."""
    instruction: str | None = None
    """Instruction rendered before the documents (the engine's ``system``); ``None`` uses the engine's default."""
    max_tokens: int = Field(default=256, ge=1)
    """Maximum number of new tokens."""
    temperature: float | None = None
    """``None`` or ``0``: greedy decoding; ``> 0``: sampling."""
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    """Seed of the sampler (sampling only), for reproducible outputs."""
    stop: list[str] | None = None
    """Default stop strings; the output is cut before the first one."""
    streaming: bool = False
    """Chat model: stream internally on ``invoke`` (so callbacks see every token)."""

    _loaded_engine: Any = PrivateAttr(default=None)
    _engine_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @model_validator(mode="after")
    def _check_source(self) -> "BlockAttentionParams":
        if self.engine is None and not self.model:
            raise ValueError(
                f"{type(self).__name__} needs a model: pass model='Qwen/Qwen2.5-1.5B-Instruct' (a hub id or local "
                "path, loaded on first use) or engine=BlockAttentionEngine(model, tokenizer)."
            )
        if self.engine is not None and not (hasattr(self.engine, "stream") and hasattr(self.engine, "generate")):
            raise ValueError(
                f"engine must be a block_attention.BlockAttentionEngine, got {type(self.engine).__name__}; build one "
                "with BlockAttentionEngine(model, tokenizer) or pass model='<path>' instead."
            )
        return self

    # -- engine ------------------------------------------------------------------------------------------------
    def get_engine(self) -> BlockAttentionEngine:
        """The injected engine, or the one loaded from ``model`` (loaded on the first call, once)."""
        if self.engine is not None:
            return self.engine
        if self._loaded_engine is None:
            with self._engine_lock:
                if self._loaded_engine is None:
                    self._loaded_engine = load_engine(str(self.model), self.model_kwargs)
        return self._loaded_engine

    @property
    def engine_loaded(self) -> bool:
        """Whether the engine exists (injected, or already loaded from ``model``)."""
        return self.engine is not None or self._loaded_engine is not None

    @property
    def model_name(self) -> str:
        """The reported model name: ``model``, else the engine model's ``name_or_path``, else a generic name."""
        if self.model:
            return self.model
        name = getattr(getattr(getattr(self.engine, "model", None), "config", None), "name_or_path", "")
        return name or DEFAULT_MODEL_NAME

    # -- decoding ----------------------------------------------------------------------------------------------
    def generation_config(self, stop: Sequence[str] | None, options: "CallOptions") -> GenerationConfig:
        """The engine's :class:`GenerationConfig` for one call."""
        from block_attention import GenerationConfig

        temperature = options.get("temperature", self.temperature)
        top_p = options.get("top_p", self.top_p)
        top_k = options.get("top_k", self.top_k)
        sample = temperature is not None and temperature > 0
        return GenerationConfig(
            max_new_tokens=int(options.get("max_tokens", self.max_tokens)),
            do_sample=sample,
            temperature=float(temperature) if sample else 1.0,
            top_p=float(top_p) if sample and top_p is not None else 1.0,
            top_k=int(top_k) if sample and top_k else 0,
            seed=options.get("seed", self.seed),
            stop=tuple(stop if stop is not None else (self.stop or ())),
        )

    def call_settings(self, options: "CallOptions", has_blocks: bool) -> dict[str, Any]:
        """``mode`` and ``system`` of one call (per-call values win over the instance's).

        Without blocks and without an explicit instruction the call gets none (``system=""``): the engine's default
        instruction tells the model to answer from reference documents, which a plain LLM call does not have.
        """
        system = options.get("instruction", self.instruction)
        if system is None and not has_blocks:
            system = ""
        return {"mode": options.get("mode", self.mode), "system": system}

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return self._identifying()

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = "block_attention"
        model = kwargs.get("model")
        params["ls_model_name"] = model if isinstance(model, str) else self.model_name
        return params

    def _identifying(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "mode": self.mode, "max_tokens": self.max_tokens,
                "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k, "seed": self.seed}


def load_engine(name: str, kwargs: Mapping[str, Any]) -> BlockAttentionEngine:
    """The library's built-in offline models by name (``"tiny-random"``), else ``from_pretrained(name)``."""
    from block_attention import BlockAttentionEngine

    try:
        from block_attention import models
    except ImportError:  # older library without named built-in models
        models = None  # type: ignore[assignment]
    if models is not None and name in (models.BUILTIN_RANDOM, models.BUILTIN_FINETUNED):
        return models.load_engine(name, **kwargs)
    return BlockAttentionEngine.from_pretrained(name, **kwargs)


@dataclass
class CallOptions:
    """Per-call options: the documents (as blocks), chat history, and setting overrides."""

    blocks: list[Block] = field(default_factory=list)
    history: list[dict[str, str]] = field(default_factory=list)
    overrides: dict[str, Any] = field(default_factory=dict)

    def get(self, name: str, default: Any) -> Any:
        value = self.overrides.get(name)
        return default if value is None else value


def parse_call_options(kwargs: Mapping[str, Any]) -> CallOptions:
    """Read ``documents``, ``history`` and setting overrides from a call's keyword arguments."""
    unknown = sorted(k for k in kwargs if k not in _OVERRIDES and k not in ("documents", "history")
                     and k not in _FRAMEWORK_KWARGS and not k.startswith("ls_"))
    if unknown:
        raise ValueError(
            f"Unknown call options {unknown}; block-attention models accept documents=[...], history=[...] and "
            f"{list(_OVERRIDES)} (e.g. llm.invoke(prompt, documents=docs) or llm.bind(mode='full'))."
        )
    overrides = {k: kwargs[k] for k in _OVERRIDES if kwargs.get(k) is not None}
    return CallOptions(blocks=to_blocks(kwargs.get("documents")), history=history_turns(kwargs.get("history")),
                       overrides=overrides)


def history_turns(history: Sequence[Any] | None) -> list[dict[str, str]]:
    """Chat history (LangChain messages, ``(role, text)`` pairs or ``{"role", "content"}`` dicts) as engine turns."""
    turns: list[dict[str, str]] = []
    for item in history or ():
        if isinstance(item, BaseMessage):
            role, content = _ROLES.get(item.type), item.text
        elif isinstance(item, Mapping):
            role, content = _ROLES.get(str(item.get("role"))), item.get("content")
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            role, content = _ROLES.get(str(item[0])), item[1]
        else:
            role, content = None, None
        if role is None or not isinstance(content, str):
            raise ValueError(
                f"Cannot use {item!r} as a history turn; pass HumanMessage/AIMessage objects, ('human', text) pairs "
                "or {'role': 'user', 'content': text} dicts."
            )
        turns.append({"role": role, "content": str(content)})
    return turns


_ROLES = {"human": "user", "user": "user", "ai": "assistant", "assistant": "assistant", "system": "system"}
