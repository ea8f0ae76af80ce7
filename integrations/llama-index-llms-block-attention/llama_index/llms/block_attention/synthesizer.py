"""``BlockAttentionSynthesizer``: a LlamaIndex response synthesizer that gives each retrieved node its own block.

Contract:

* ``synthesize(query, nodes)`` answers ``query`` with ``llm.complete(query, nodes=nodes)``: each node is one cached
  block keyed by ``node.node_id + ":" + node.hash`` (see :mod:`llama_index.llms.block_attention.blocks`), so a
  repeated node is a cache hit and an edited node never reuses stale KV. The returned ``Response`` (or
  ``StreamingResponse`` with ``streaming=True``; async variants under ``asynthesize``) carries ``source_nodes``.
  Everything else (empty-node handling, callbacks, instrumentation events) is LlamaIndex's ``BaseSynthesizer``.
* ``order="reversed"`` puts the best node nearest the question (source nodes stay best first).
* Extra ``response_kwargs`` (``mode``, ``max_new_tokens``, ...) are passed to the LLM call.
* ``get_response(query_str, text_chunks)`` called directly (without nodes) uses the chunks as blocks keyed by a
  digest of their text. Works in ``RetrieverQueryEngine(retriever, response_synthesizer=...)`` and in chat
  engines built on it (e.g. ``CondenseQuestionChatEngine``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from llama_index.core.callbacks import CallbackManager
from llama_index.core.prompts.mixin import PromptDictType
from llama_index.core.response_synthesizers import BaseSynthesizer
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryType
from llama_index.core.types import RESPONSE_TEXT_TYPE

from .base import BlockAttentionLLM
from .blocks import to_blocks


class BlockAttentionSynthesizer(BaseSynthesizer):
    """Answer over retrieved nodes as separate cached blocks; see the module docstring."""

    def __init__(self, llm: BlockAttentionLLM, *, streaming: bool = False,
                 order: Literal["ranked", "reversed"] = "ranked", metadata_mode: MetadataMode = MetadataMode.LLM,
                 callback_manager: CallbackManager | None = None, empty_response: str | None = None) -> None:
        if not isinstance(llm, BlockAttentionLLM):
            raise TypeError(
                f"BlockAttentionSynthesizer needs a BlockAttentionLLM, got {type(llm).__name__}; build one with "
                "BlockAttentionLLM(engine=...) or BlockAttentionLLM(model_name='<path>')."
            )
        if order not in ("ranked", "reversed"):
            raise ValueError(f"order must be 'ranked' or 'reversed', got {order!r}.")
        super().__init__(llm=llm, callback_manager=callback_manager, streaming=streaming,
                         empty_response=empty_response)
        self._order = order
        self._metadata_mode = metadata_mode

    @property
    def llm(self) -> BlockAttentionLLM:
        return self._llm  # type: ignore[return-value]

    def _get_prompts(self) -> PromptDictType:
        return {}

    def _update_prompts(self, prompts_dict: PromptDictType) -> None:
        """No prompt templates: the engine's prompt configuration renders the request."""

    def synthesize(self, query: QueryType, nodes: list[NodeWithScore],
                   additional_source_nodes: Sequence[NodeWithScore] | None = None,
                   **response_kwargs: Any) -> Any:
        return super().synthesize(query, nodes, additional_source_nodes, block_nodes=nodes, **response_kwargs)

    async def asynthesize(self, query: QueryType, nodes: list[NodeWithScore],
                          additional_source_nodes: Sequence[NodeWithScore] | None = None,
                          **response_kwargs: Any) -> Any:
        return await super().asynthesize(query, nodes, additional_source_nodes, block_nodes=nodes,
                                         **response_kwargs)

    def _options(self, text_chunks: Sequence[str], block_nodes: Sequence[NodeWithScore] | None,
                 response_kwargs: dict[str, Any]) -> dict[str, Any]:
        if block_nodes is not None:
            blocks = to_blocks(nodes=block_nodes, metadata_mode=self._metadata_mode)
        else:
            blocks = to_blocks(blocks=text_chunks)
        if self._order == "reversed":
            blocks = blocks[::-1]
        return {**response_kwargs, "blocks": blocks}

    def get_response(self, query_str: str, text_chunks: Sequence[str],
                     block_nodes: Sequence[NodeWithScore] | None = None, **response_kwargs: Any) -> RESPONSE_TEXT_TYPE:
        options = self._options(text_chunks, block_nodes, response_kwargs)
        if self._streaming:
            return (response.delta or "" for response in self.llm.stream_complete(query_str, **options))
        return self.llm.complete(query_str, **options).text

    async def aget_response(self, query_str: str, text_chunks: Sequence[str],
                            block_nodes: Sequence[NodeWithScore] | None = None,
                            **response_kwargs: Any) -> RESPONSE_TEXT_TYPE:
        options = self._options(text_chunks, block_nodes, response_kwargs)
        if self._streaming:
            responses = await self.llm.astream_complete(query_str, **options)

            async def deltas() -> Any:
                async for response in responses:
                    yield response.delta or ""

            return deltas()
        return (await self.llm.acomplete(query_str, **options)).text
