"""``BlockAttentionLLM``: a LangChain text-completion LLM served by a block-attention engine.

Contract:

* The prompt string is the final block (the question). Documents are passed per call as
  ``llm.invoke(question, documents=[Document, ...])`` (or ``llm.bind(documents=...)``); each document is one
  cached block keyed by its id (see :mod:`langchain_block_attention.documents`). A flat prompt may also carry blocks
  separated by :data:`~langchain_block_attention.documents.BLOCK_SEPARATOR` (for ``create_stuff_documents_chain``);
  they follow the ``documents`` blocks. Without documents or separators it is a plain local LLM (and gets no
  instruction unless ``instruction`` is set).
* Other per-call options: ``history`` (earlier chat turns), ``mode``, ``instruction``, ``max_tokens``,
  ``temperature``, ``top_p``, ``top_k``, ``seed``; ``stop`` is honoured (output cut before the first stop string).
* ``invoke``/``batch``/``stream`` and their async forms all work; streaming reports each text piece to
  ``on_llm_new_token`` and ends with an empty chunk whose ``generation_info`` holds ``finish_reason`` and the
  engine's request ``stats`` (cache hits/misses, TTFT). Non-streamed generations carry the same ``generation_info``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseLLM
from langchain_core.outputs import Generation, GenerationChunk, LLMResult
from langchain_core.runnables.config import run_in_executor

from ._params import BlockAttentionParams, parse_call_options
from .documents import split_prompt, to_blocks

if TYPE_CHECKING:
    from block_attention import BlockAttentionEngine
    from block_attention.engine import Generation as EngineGeneration


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

    def _request(self, prompt: str, stop: list[str] | None,
                 kwargs: dict[str, Any]) -> tuple[BlockAttentionEngine, dict[str, Any]]:
        options = parse_call_options(kwargs)
        texts, question = split_prompt(prompt)
        blocks = options.blocks + to_blocks(texts)
        request = dict(blocks=blocks, question=question, history=options.history,
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
        pieces = iter(stream)
        done = object()
        while (piece := await run_in_executor(None, next, pieces, done)) is not done:
            chunk = GenerationChunk(text=piece)
            if run_manager:
                await run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk
        assert stream.result is not None
        yield GenerationChunk(text="", generation_info=generation_info(stream.result))


def generation_info(result: EngineGeneration) -> dict[str, Any]:
    """What LangChain outputs carry about one engine generation."""
    return {"finish_reason": result.finish_reason, "stats": result.stats.as_dict()}
