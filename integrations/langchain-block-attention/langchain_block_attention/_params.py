"""Settings shared by :class:`BlockAttentionLLM` and :class:`ChatBlockAttention`, and the per-call options.

Contract:

* The engine is either injected (``engine=BlockAttentionEngine(...)``; several LangChain objects may share one
  engine and so one KV cache) or loaded lazily from ``model`` on first use, once, under a lock, by the library's
  one factory ``block_attention.models.load_engine(model, device=, dtype=, store=, model_kwargs=)`` (built-in
  offline names such as ``"tiny-random"``, local folders, hub ids; ``model_kwargs`` are extra keyword arguments of
  ``AutoModelForCausalLM.from_pretrained``). Constructing a LangChain object never loads weights; an unloaded
  model survives ``copy.deepcopy`` and pickling (a loaded one is shared by deep copies and reloaded after
  unpickling).
* ``get_num_tokens``/``get_token_ids`` use the engine's tokenizer (loading the engine if needed).
* Decoding is greedy unless ``temperature > 0`` (then seeded sampling with ``top_p``/``top_k``/``seed``).
  ``max_tokens`` is the number of new tokens. ``stop`` given to a call replaces the instance's ``stop``.
* Calls without documents and without an explicit instruction render no instruction (the engine's default one is
  about reference documents); calls with documents use ``instruction`` or the engine's default.
* Per-call keyword arguments (``invoke(..., documents=[...], mode="full")`` or ``.bind(...)``) are parsed by
  :func:`parse_call_options`; an unknown one raises ``ValueError`` naming the valid ones. ``model=`` per call is
  accepted when it names this instance's model and otherwise raises (one instance serves one model).
* A prompt with no blocks that evidently carries flattened retrieved context logs one warning per instance
  saying how to keep per-document caching (:data:`block_attention.frameworks.markers.FLAT_CONTEXT_HINT`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import BaseMessage
from pydantic import BaseModel, Field, PrivateAttr, model_validator

from block_attention.frameworks.markers import FLAT_CONTEXT_HINT, looks_like_flat_context
from block_attention.frameworks.options import engine_role, sampling_from
from block_attention.frameworks.runtime import LazyEngine

from .documents import to_blocks

if TYPE_CHECKING:
    from block_attention import Block, BlockAttentionEngine, GenerationConfig

DEFAULT_MODEL_NAME = "block-attention"
logger = logging.getLogger("langchain_block_attention")

# Keyword arguments LangChain itself may forward to a model call; they carry no request content.
_FRAMEWORK_KWARGS = frozenset({"stream", "run_name", "run_id"})
_OVERRIDES = ("mode", "instruction", "max_tokens", "temperature", "top_p", "top_k", "seed")


class RequestParams(BaseModel):
    """Request settings of every LangChain block-attention model (engine-backed or vLLM-backed)."""

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

    def call_settings(self, options: "CallOptions", has_blocks: bool) -> dict[str, Any]:
        """``mode`` and ``system`` of one call (per-call values win over the instance's).

        Without blocks and without an explicit instruction the call gets none (``system=""``): the engine's default
        instruction tells the model to answer from reference documents, which a plain LLM call does not have.
        """
        system = options.get("instruction", self.instruction)
        if system is None and not has_blocks:
            system = ""
        return {"mode": options.get("mode", self.mode), "system": system}


class BlockAttentionParams(RequestParams):
    """Engine and decoding settings of a LangChain block-attention model."""

    model: str | None = None
    """Hub id or local path of a causal LM, loaded lazily; with ``engine`` given, only the reported model name."""
    engine: Any = Field(default=None, exclude=True, repr=False)
    """An existing ``block_attention.BlockAttentionEngine`` to use (and share, with its KV cache)."""
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Extra keyword arguments of ``AutoModelForCausalLM.from_pretrained`` (e.g. ``attn_implementation``)."""
    device: str | None = None
    """Device the lazily loaded model is moved to (``"cuda"``, ``"cpu"``); ``None`` keeps transformers' choice."""
    dtype: str = "auto"
    """Weights dtype of the lazily loaded model (``"auto"``, ``"bfloat16"``, ``"float32"``, ...)."""
    store: Any = Field(default=None, exclude=True, repr=False)
    """KV store of the lazily loaded engine: a ``KVStore`` or ``StoreConfig``; ``None``: a 1 GiB memory tier."""
    streaming: bool = False
    """Chat model: stream internally on ``invoke`` (so callbacks see every token)."""

    _holder: Any = PrivateAttr(default=None)
    _warned_flat: bool = PrivateAttr(default=False)

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
        load = {"model_kwargs": dict(self.model_kwargs), "device": self.device, "dtype": self.dtype}
        if self.store is not None:
            load["store"] = self.store
        self._holder = LazyEngine(self.model, engine=self.engine, load_kwargs=load)
        return self

    # -- engine ------------------------------------------------------------------------------------------------
    def get_engine(self) -> BlockAttentionEngine:
        """The injected engine, or the one loaded from ``model`` (loaded on the first call, once)."""
        return self._holder.get()

    @property
    def engine_loaded(self) -> bool:
        """Whether the engine exists (injected, or already loaded from ``model``)."""
        return bool(self._holder.loaded)

    def get_token_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` with the engine's tokenizer (no special tokens added)."""
        return list(self.get_engine().tokenizer(text, add_special_tokens=False)["input_ids"])

    def warn_flat_context(self, text: str) -> None:
        """Log :data:`FLAT_CONTEXT_HINT` once per instance when ``text`` evidently carries flattened context."""
        if not self._warned_flat and looks_like_flat_context(text):
            self._warned_flat = True
            logger.warning("%s: %s", type(self).__name__, FLAT_CONTEXT_HINT)

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
        return sampling_from(max_new_tokens=int(options.get("max_tokens", self.max_tokens)),
                             temperature=options.get("temperature", self.temperature),
                             top_p=options.get("top_p", self.top_p), top_k=options.get("top_k", self.top_k),
                             seed=options.get("seed", self.seed), stop=stop if stop is not None else self.stop)

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


@dataclass
class CallOptions:
    """Per-call options: the documents (as blocks), chat history, and setting overrides."""

    blocks: list[Block] = field(default_factory=list)
    history: list[dict[str, str]] = field(default_factory=list)
    overrides: dict[str, Any] = field(default_factory=dict)

    def get(self, name: str, default: Any) -> Any:
        value = self.overrides.get(name)
        return default if value is None else value


def parse_call_options(kwargs: Mapping[str, Any], model_name: str | None = None) -> CallOptions:
    """Read ``documents``, ``history`` and setting overrides from a call's keyword arguments."""
    model = kwargs.get("model")
    if model is not None and model != model_name:
        raise ValueError(
            f"This block-attention model serves {model_name!r}, so a per-call model={model!r} cannot be honoured; "
            "build another instance for that model (e.g. ChatBlockAttention(model=...)) and route to it."
        )
    unknown = sorted(k for k in kwargs if k not in _OVERRIDES and k not in ("documents", "history", "model")
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
            role, content = engine_role(item.type), item.text
        elif isinstance(item, Mapping):
            role, content = engine_role(item.get("role")), item.get("content")
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            role, content = engine_role(item[0]), item[1]
        else:
            role, content = None, None
        if role is None or not isinstance(content, str):
            raise ValueError(
                f"Cannot use {item!r} as a history turn; pass HumanMessage/AIMessage objects, ('human', text) pairs "
                "or {'role': 'user', 'content': text} dicts."
            )
        turns.append({"role": role, "content": str(content)})
    return turns

