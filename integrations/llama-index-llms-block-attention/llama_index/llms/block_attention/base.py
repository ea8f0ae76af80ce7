"""``BlockAttentionLLM``: a LlamaIndex ``CustomLLM`` served by a block-attention engine.

Contract:

* The engine is injected (``BlockAttentionLLM(engine=BlockAttentionEngine(...))``; objects sharing an engine share
  its KV cache) or loaded lazily from ``model_name`` on first use, once, by the library's one factory
  ``block_attention.models.load_engine(model_name, device=, dtype=, store=, model_kwargs=)`` (built-in offline
  names such as ``"tiny-random"``, local folders, hub ids; ``model_kwargs`` are extra keyword arguments of
  ``AutoModelForCausalLM.from_pretrained``). Construction never loads weights; an unloaded LLM survives
  ``copy.deepcopy`` and pickling.
* ``metadata``: ``context_window`` is the model's ``max_position_embeddings`` (the engine's ``max_positions``; read
  from the model config without loading weights while the engine is not loaded) unless overridden,
  ``num_output`` is ``max_new_tokens``, ``model_name`` the model path/id (or the engine model's name).
* ``complete(prompt, nodes=[...], blocks=[...])``: the prompt is the final block (question); ``nodes``
  (``NodeWithScore``/nodes, keyed by ``node_id:hash``) and ``blocks`` (``Block``/str) are the cached blocks
  (``blocks`` first). Without them it is a plain local LLM and, unless ``instruction`` is set, gets no instruction
  (the engine's default one is about reference documents). Other per-call options: ``history``, ``mode``,
  ``instruction``, ``max_new_tokens``, ``temperature``, ``top_p``, ``top_k``, ``seed``, ``stop``. The prompt is
  always rendered by the engine's prompt template, so ``formatted`` is accepted and ignored. A prompt carrying
  block markers (nodes marked by :class:`~llama_index.llms.block_attention.BlockMarkers` inside a stock query or
  chat engine) is split back into one cached block per node (after ``blocks``/``nodes``); the rest of the prompt is
  the question. Inside a stock query or chat engine the retrieved nodes need no markers: the nodes of the enclosing
  LlamaIndex spans are found in the prompt and kept as blocks the same way (:func:`~llama_index.llms.
  block_attention.markers.mark_retrieved`). A prompt that evidently carries flattened context but no blocks logs
  one warning per instance.
* ``chat(messages)``: system messages become the instruction, earlier turns the history, the last user message
  the question. Responses carry ``additional_kwargs = {"finish_reason", "stats"}`` (the engine's request stats:
  cache hits/misses, TTFT); a stream's last item (empty ``delta``) carries them. Inside a synthesis the stats also
  reach ``Response.metadata["block_attention"]`` (see :mod:`llama_index.llms.block_attention.markers`).
* Decoding is greedy unless ``temperature > 0``. Async methods run the engine in a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM

from block_attention.frameworks.chat import ChatShapeError, split_chat
from block_attention.frameworks.markers import FLAT_CONTEXT_HINT, looks_like_flat_context, split_prompt
from block_attention.frameworks.options import engine_role, sampling_from
from block_attention.frameworks.runtime import LazyEngine, iterate_in_thread, stats_metadata

from .blocks import to_blocks
from .markers import current_synthesis, mark_retrieved, register_stats_handler, retrieved_nodes

if TYPE_CHECKING:
    from block_attention import BlockAttentionEngine, GenerationConfig
    from block_attention.engine import Generation, TextStream

DEFAULT_MODEL_NAME = "block-attention"
_OPTIONS = ("nodes", "blocks", "history", "mode", "instruction", "max_new_tokens", "temperature", "top_p", "top_k",
            "seed", "stop", "formatted")
logger = logging.getLogger("llama_index.llms.block_attention")


class BlockAttentionLLM(CustomLLM):
    """LlamaIndex LLM over ``block_attention.BlockAttentionEngine`` (see the module docstring)."""

    model_name: str | None = Field(
        default=None, description="Hub id or local path of a causal LM, loaded on first use; with engine=, the "
                                  "reported model name only.")
    model_kwargs: dict[str, Any] = Field(default_factory=dict,
                                         description="Extra keyword arguments of AutoModelForCausalLM.from_pretrained.")
    device: str | None = Field(default=None, description="Device the lazily loaded model is moved to.")
    dtype: str = Field(default="auto", description="Weights dtype of the lazily loaded model.")
    max_new_tokens: int = Field(default=256, ge=1, description="Maximum number of new tokens.")
    context_window: int | None = Field(default=None, description="Override of the model's context window.")
    mode: Literal["block", "full"] | None = Field(default=None, description="Attention mode; None: the engine's.")
    instruction: str | None = Field(default=None, description="Instruction before the documents (engine system).")
    temperature: float | None = Field(default=None, description="None or 0: greedy; > 0: sampling.")
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: list[str] | None = Field(default=None, description="Stop strings; output is cut before the first one.")

    _holder: Any = PrivateAttr(default=None)
    _max_positions: int | None = PrivateAttr(default=None)
    _warned_flat: bool = PrivateAttr(default=False)

    def __init__(self, *, engine: BlockAttentionEngine | None = None, store: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if engine is None and not self.model_name:
            raise ValueError(
                "BlockAttentionLLM needs a model: pass model_name='Qwen/Qwen2.5-1.5B-Instruct' (a hub id or local "
                "path, loaded on first use) or engine=BlockAttentionEngine(model, tokenizer)."
            )
        if engine is not None and not (hasattr(engine, "stream") and hasattr(engine, "max_positions")):
            raise ValueError(
                f"engine must be a block_attention.BlockAttentionEngine, got {type(engine).__name__}; build one with "
                "BlockAttentionEngine(model, tokenizer) or pass model_name='<path>' instead."
            )
        load = {"model_kwargs": dict(self.model_kwargs), "device": self.device, "dtype": self.dtype}
        if store is not None:
            load["store"] = store
        self._holder = LazyEngine(self.model_name, engine=engine, load_kwargs=load)
        register_stats_handler()

    @classmethod
    def class_name(cls) -> str:
        return "BlockAttentionLLM"

    # -- engine and metadata -----------------------------------------------------------------------------------
    @property
    def engine(self) -> BlockAttentionEngine:
        """The engine (loaded from ``model_name`` on first access when none was injected)."""
        return self._holder.get()

    @property
    def engine_loaded(self) -> bool:
        return bool(self._holder.loaded)

    @property
    def reported_model_name(self) -> str:
        if self.model_name:
            return self.model_name
        name = getattr(getattr(getattr(self._holder.current, "model", None), "config", None), "name_or_path", "")
        return name or DEFAULT_MODEL_NAME

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(context_window=self.context_window or self._context_positions(),
                           num_output=self.max_new_tokens, model_name=self.reported_model_name, is_chat_model=False)

    def _context_positions(self) -> int:
        if self._holder.loaded or _is_builtin(str(self.model_name)):
            return int(self.engine.max_positions)
        if self._max_positions is None:
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(self.model_name).get_text_config(decoder=True)
            self._max_positions = int(config.max_position_embeddings)
        return self._max_positions

    # -- requests ----------------------------------------------------------------------------------------------
    def _generation(self, options: Mapping[str, Any]) -> GenerationConfig:
        def pick(name: str) -> Any:
            value = options.get(name)
            return getattr(self, name) if value is None else value

        return sampling_from(max_new_tokens=int(pick("max_new_tokens")), temperature=pick("temperature"),
                             top_p=pick("top_p"), top_k=pick("top_k"), seed=pick("seed"), stop=pick("stop"))

    def _request(self, question: str, options: Mapping[str, Any], system: str | None = None,
                 history: Sequence[Mapping[str, str]] = ()) -> dict[str, Any]:
        unknown = sorted(set(options) - set(_OPTIONS))
        if unknown:
            raise ValueError(
                f"Unknown options {unknown} for BlockAttentionLLM; valid ones are {list(_OPTIONS)} "
                "(e.g. llm.complete(question, nodes=retrieved_nodes))."
            )
        blocks = to_blocks(options.get("nodes"), options.get("blocks"))
        enclosing = retrieved_nodes()  # a stock engine's nodes, found in its prompt (no BlockMarkers needed)
        if enclosing:
            question = mark_retrieved(question, enclosing)
            system = mark_retrieved(system, enclosing) if system is not None else None
        if system is not None:
            split = split_prompt(system)
            blocks += split.blocks
            system = (split.rest or None) if split.blocks else system
        split = split_prompt(question)
        blocks += split.blocks
        question = split.rest
        if not blocks and not self._warned_flat and looks_like_flat_context(f"{system or ''}\n\n{question}"):
            self._warned_flat = True
            logger.warning("BlockAttentionLLM: %s", FLAT_CONTEXT_HINT)
        turns = [*_history(options.get("history")), *history]
        if system is None:
            system = options.get("instruction", self.instruction)
        if system is None and not blocks:
            system = ""  # the engine's default instruction is about reference documents: none for plain calls
        return dict(blocks=blocks, question=question, history=turns, mode=options.get("mode") or self.mode,
                    system=system, generation=self._generation(options))

    def _run(self, request: dict[str, Any]) -> Generation:
        collector = current_synthesis()
        result = self.engine.generate(**request)
        if collector is not None:
            collector.add(result.stats)
        return result

    def _stream(self, request: dict[str, Any]) -> Iterator[tuple[str, str, Generation | None]]:
        """``(text so far, delta, None)`` per piece, then ``(text, "", generation)`` once at the end."""
        collector = current_synthesis()

        def pieces() -> Iterator[tuple[str, str, Generation | None]]:
            stream: TextStream = self.engine.stream(**request)
            text = ""
            for piece in stream:
                text += piece
                yield text, piece, None
            if collector is not None and stream.result is not None:
                collector.add(stream.result.stats)
            yield text, "", stream.result

        return pieces()

    # -- completion --------------------------------------------------------------------------------------------
    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return _completion(self._run(self._request(prompt, kwargs)))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        items = self._stream(self._request(prompt, kwargs))

        def gen() -> CompletionResponseGen:
            for text, delta, result in items:
                extra = _extra(result) if result is not None else {}
                yield CompletionResponse(text=text, delta=delta, additional_kwargs=extra)

        return gen()

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        request = self._request(prompt, kwargs)
        return _completion(await asyncio.to_thread(self._run, request))

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False,
                               **kwargs: Any) -> CompletionResponseAsyncGen:
        items = self._stream(self._request(prompt, kwargs))

        async def gen() -> CompletionResponseAsyncGen:
            async for text, delta, result in iterate_in_thread(items):
                extra = _extra(result) if result is not None else {}
                yield CompletionResponse(text=text, delta=delta, additional_kwargs=extra)

        return gen()

    # -- chat --------------------------------------------------------------------------------------------------
    def _chat_request(self, messages: Sequence[ChatMessage], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        system, turns, question = split_messages(messages)
        return self._request(question, kwargs, system=system, history=turns)

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return _chat(self._run(self._chat_request(messages, kwargs)))

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        items = self._stream(self._chat_request(messages, kwargs))

        def gen() -> ChatResponseGen:
            for text, delta, result in items:
                extra = _extra(result) if result is not None else {}
                yield ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta=delta,
                                   additional_kwargs=extra)

        return gen()

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        request = self._chat_request(messages, kwargs)
        return _chat(await asyncio.to_thread(self._run, request))

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        items = self._stream(self._chat_request(messages, kwargs))

        async def gen() -> ChatResponseAsyncGen:
            async for text, delta, result in iterate_in_thread(items):
                extra = _extra(result) if result is not None else {}
                yield ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta=delta,
                                   additional_kwargs=extra)

        return gen()


def _builtin_names() -> tuple[str, ...]:
    from block_attention.models import builtin_names

    return builtin_names()


def _is_builtin(name: str) -> bool:
    return name in _builtin_names()


def split_messages(messages: Sequence[ChatMessage]) -> tuple[str | None, list[dict[str, str]], str]:
    """``(system, history turns, question)`` of a LlamaIndex message list."""
    try:
        chat = split_chat([(engine_role(message.role), message.content or "") for message in messages])
    except ChatShapeError as error:
        if error.problem == "unsupported_role":
            raise ValueError(
                f"BlockAttentionLLM does not support {messages[error.index].role.value!r} messages (no tool calling); "
                "pass only system, user and assistant messages."
            ) from None
        raise ValueError(
            "BlockAttentionLLM.chat needs a message list ending with a user message (the question); append "
            "ChatMessage(role='user', content=question)."
        ) from None
    return chat.system, list(chat.history), chat.question


def _history(history: Sequence[Any] | None) -> list[dict[str, str]]:
    turns = []
    for item in history or ():
        if isinstance(item, ChatMessage) and engine_role(item.role) in ("user", "assistant"):
            turns.append({"role": str(engine_role(item.role)), "content": item.content or ""})
        elif isinstance(item, Mapping) and item.get("role") in ("user", "assistant") and isinstance(
                item.get("content"), str):
            turns.append({"role": str(item["role"]), "content": str(item["content"])})
        else:
            raise ValueError(
                f"Cannot use {item!r} as a history turn; pass ChatMessage(role='user'|'assistant', content=...) "
                "objects or {'role': ..., 'content': ...} dicts."
            )
    return turns


def _extra(result: Generation) -> dict[str, Any]:
    return {"finish_reason": result.finish_reason, "stats": stats_metadata(result.stats)}


def _completion(result: Generation) -> CompletionResponse:
    return CompletionResponse(text=result.text, additional_kwargs=_extra(result))


def _chat(result: Generation) -> ChatResponse:
    return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=result.text),
                        additional_kwargs=_extra(result))
