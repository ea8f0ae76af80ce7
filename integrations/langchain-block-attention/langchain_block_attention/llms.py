"""``BlockAttentionLLM``: a LangChain text-completion LLM served by a block-attention engine.

Contract:

* The prompt string is the final block (the question). Documents are passed per call as
  ``llm.invoke(question, documents=[Document, ...])`` (or ``llm.bind(documents=...)``); each document is one
  cached block keyed by its id (see :mod:`langchain_block_attention.documents`). A prompt may also carry blocks
  itself: documents rendered by :func:`~langchain_block_attention.format_docs` (block markers, keyed by document id)
  or separated by :data:`~langchain_block_attention.BLOCK_SEPARATOR`; they follow the ``documents`` blocks and the
  rest of the prompt is the final block. Without documents or markers it is a plain local LLM (and gets no
  instruction unless ``instruction`` is set).
* Other per-call options: ``history`` (earlier chat turns), ``mode``, ``instruction``, ``max_tokens``,
  ``temperature``, ``top_p``, ``top_k``, ``seed``; ``stop`` is honoured (output cut before the first stop string).
* LangChain's LLM cache (``set_llm_cache``/``cache=``) keys on the prompt and the model settings only; this class
  adds every per-call option (documents by id and text digest, history, overrides) to the cache key, so a cached
  answer is only ever reused for the same documents and options.
* ``invoke``/``batch``/``stream`` and their async forms all work; streaming reports each text piece to
  ``on_llm_new_token`` and ends with an empty chunk whose ``generation_info`` holds ``finish_reason`` and the
  engine's request ``stats`` (cache hits/misses per tier, TTFT, dropped ids). Non-streamed generations carry the
  same ``generation_info``.
"""

from __future__ import annotations

import contextvars
import hashlib
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

from block_attention.frameworks.runtime import iterate_in_thread, stats_metadata
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseLLM
from langchain_core.outputs import Generation, GenerationChunk, LLMResult
from langchain_core.runnables.config import run_in_executor

from ._params import BlockAttentionParams, parse_call_options
from .documents import split_prompt, to_blocks

if TYPE_CHECKING:
    from block_attention import BlockAttentionEngine
    from block_attention.engine import Generation as EngineGeneration

_CALL_KEY: contextvars.ContextVar[str | None] = contextvars.ContextVar("block_attention_call_key", default=None)


class BlockAttentionLLM(BlockAttentionParams, BaseLLM):
    """Text-completion LLM over ``block_attention.BlockAttentionEngine``.

    Example::

        from langchain_block_attention import BlockAttentionLLM
        llm = BlockAttentionLLM(model="ldsjmdy/Tulu3-Block-FT", max_tokens=128)
        llm.invoke("Who built the lighthouse?", documents=retrieved_docs)
    """

    @property
    def _llm_type(self) -> str:
        return "block-attention"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        params = self._identifying()
        call_key = _CALL_KEY.get()
        if call_key is not None:
            params["call_options"] = call_key
        return params

    # LangChain builds the LLM cache key from _identifying_params inside generate(): the per-call options are put
    # there for the duration of the call (a context variable, so concurrent calls never see each other's).
    def generate(self, prompts: list[str], stop: list[str] | None = None, callbacks: Any = None,
                 **kwargs: Any) -> LLMResult:
        token = _CALL_KEY.set(call_options_key(kwargs))
        try:
            return super().generate(prompts, stop=stop, callbacks=callbacks, **kwargs)
        finally:
            _CALL_KEY.reset(token)

    async def agenerate(self, prompts: list[str], stop: list[str] | None = None, callbacks: Any = None,
                        **kwargs: Any) -> LLMResult:
        token = _CALL_KEY.set(call_options_key(kwargs))
        try:
            return await super().agenerate(prompts, stop=stop, callbacks=callbacks, **kwargs)
        finally:
            _CALL_KEY.reset(token)

    def _request(self, prompt: str, stop: list[str] | None,
                 kwargs: dict[str, Any]) -> tuple[BlockAttentionEngine, dict[str, Any]]:
        options = parse_call_options(kwargs, self.model_name)
        split = split_prompt(prompt)
        blocks = options.blocks + list(split.blocks)
        if not blocks:
            self.warn_flat_context(prompt)
        request = dict(blocks=blocks, question=split.rest, history=options.history,
                       generation=self.generation_config(stop, options), **self.call_settings(options, bool(blocks)))
        return self.get_engine(), request

    def _generate(self, prompts: list[str], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> LLMResult:
        generations = []
        for prompt in prompts:
            engine, request = self._request(prompt, stop, kwargs)
            result = engine.generate(**request)
            generations.append([Generation(text=result.text, generation_info=generation_info(result))])
        return LLMResult(generations=generations, llm_output={"model_name": self.model_name})

    def _stream(self, prompt: str, stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[GenerationChunk]:
        engine, request = self._request(prompt, stop, kwargs)
        stream = engine.stream(**request)
        for piece in stream:
            chunk = GenerationChunk(text=piece)
            if run_manager:
                run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk
        assert stream.result is not None
        yield GenerationChunk(text="", generation_info=generation_info(stream.result))

    async def _astream(self, prompt: str, stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[GenerationChunk]:
        engine, request = await run_in_executor(None, self._request, prompt, stop, kwargs)
        stream = engine.stream(**request)
        async for piece in iterate_in_thread(iter(stream)):
            chunk = GenerationChunk(text=piece)
            if run_manager:
                await run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk
        assert stream.result is not None
        yield GenerationChunk(text="", generation_info=generation_info(stream.result))


def call_options_key(kwargs: dict[str, Any]) -> str | None:
    """A digest of a call's request options (documents by key and text, history, overrides); ``None`` if none."""
    relevant = {k: v for k, v in kwargs.items() if k not in ("run_name", "run_id", "stream") and v is not None}
    if not relevant:
        return None
    digest = hashlib.blake2b(digest_size=16)
    for name in sorted(relevant):
        value = relevant[name]
        digest.update(name.encode() + b"\0")
        if name == "documents":
            for block in to_blocks(value):
                digest.update(f"{block.key}\0{block.title}\0{block.score}\0{block.text}\0".encode())
        else:
            digest.update(repr(value).encode() + b"\0")
    return digest.hexdigest()


def generation_info(result: EngineGeneration) -> dict[str, Any]:
    """What LangChain outputs carry about one engine generation."""
    return {"finish_reason": result.finish_reason, "stats": stats_metadata(result.stats)}
