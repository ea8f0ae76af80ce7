"""Keeping nodes as blocks inside LlamaIndex's stock query and chat engines, and reporting what the cache did.

Contract:

* :class:`BlockMarkers` is a node postprocessor: ``index.as_query_engine(llm=llm,
  node_postprocessors=[BlockMarkers()])`` (any ``response_mode``) or ``index.as_chat_engine(chat_mode="context" |
  "condense_plus_context", llm=llm, node_postprocessors=[BlockMarkers()])``. It replaces each retrieved ``TextNode``
  by a :class:`BlockMarkedNode`: the same id, text, metadata and hash, whose LLM view (``get_content(
  MetadataMode.LLM)``, what every stock synthesizer and chat engine puts in the prompt) is wrapped in a block
  marker carrying ``node_id:hash`` and the node's score. :class:`~llama_index.llms.block_attention.BlockAttentionLLM`
  splits marked prompts back into one cached block per node (:mod:`block_attention.frameworks.markers`); the rest
  of the prompt (the framework's template and the query) is the final block. A marked span cut in two by a
  framework's re-chunking (``compact``/``tree_summarize`` when the nodes do not fit one prompt) is sent as plain
  text. :func:`block_query_engine` is the same as a one-call factory.
* Request stats reach ``Response.metadata["block_attention"]`` for every synthesis (stock or
  ``BlockAttentionSynthesizer``) whose LLM calls went to a ``BlockAttentionLLM``: totals over the synthesis's
  requests (``hits``, ``hits_by_tier``, ``misses``, ``dropped``, ``ttft_s`` of the first request, ``requests``: each
  request's full stats). Nodes the engine dropped to fit the context (``overflow="drop_lowest"``) are removed from
  ``Response.source_nodes``. A streaming response gets both when its stream is exhausted. This works through one
  LlamaIndex instrumentation event handler, registered on the root dispatcher when the first ``BlockAttentionLLM``
  is built; it only touches syntheses in which a ``BlockAttentionLLM`` answered.
"""

from __future__ import annotations

import contextvars
import threading
from typing import TYPE_CHECKING, Any

from block_attention.frameworks.markers import mark_block
from block_attention.frameworks.runtime import stats_metadata
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import BaseNode, MetadataMode, NodeWithScore, QueryBundle, TextNode

if TYPE_CHECKING:
    from block_attention import RequestStats


def node_key(node: BaseNode) -> str:
    """The cache key of ``node``: its id and content hash."""
    return f"{node.node_id}:{node.hash}"


class BlockMarkedNode(TextNode):
    """A ``TextNode`` whose LLM view is wrapped in a block marker (see the module docstring)."""

    _block_score: float | None = PrivateAttr(default=None)

    @classmethod
    def class_name(cls) -> str:
        return "TextNode"

    def plain_content(self, metadata_mode: MetadataMode = MetadataMode.LLM) -> str:
        """The content without the marker (what the block's KV is computed from)."""
        return super().get_content(metadata_mode=metadata_mode)

    def get_content(self, metadata_mode: MetadataMode = MetadataMode.NONE) -> str:
        content = super().get_content(metadata_mode=metadata_mode)
        if metadata_mode != MetadataMode.LLM or not content.strip():
            return content
        return mark_block(content, node_key(self), score=self._block_score)


def mark_node(node: BaseNode, score: float | None = None) -> BaseNode:
    """``node`` as a :class:`BlockMarkedNode` (a plain ``TextNode`` only; other node types are returned as is)."""
    if type(node) is BlockMarkedNode:
        node._block_score = score
        return node
    if type(node) is not TextNode:
        return node
    marked = BlockMarkedNode(**{name: getattr(node, name) for name in TextNode.model_fields})
    marked._block_score = score
    return marked


class BlockMarkers(BaseNodePostprocessor):
    """Mark each retrieved node as its own block for :class:`BlockAttentionLLM` (see the module docstring)."""

    @classmethod
    def class_name(cls) -> str:
        return "BlockMarkers"

    def _postprocess_nodes(self, nodes: list[NodeWithScore],
                           query_bundle: QueryBundle | None = None) -> list[NodeWithScore]:
        return [NodeWithScore(node=mark_node(n.node, n.score), score=n.score) for n in nodes]


def block_query_engine(index: Any, llm: Any, **kwargs: Any) -> Any:
    """``index.as_query_engine(llm=llm, ...)`` with :class:`BlockMarkers` appended to ``node_postprocessors``."""
    post = [*(kwargs.pop("node_postprocessors", None) or ()), BlockMarkers()]
    return index.as_query_engine(llm=llm, node_postprocessors=post, **kwargs)


# -- stats into Response.metadata --------------------------------------------------------------------------------
class SynthesisStats:
    """The block-attention requests of one synthesis, written into its response as they finish."""

    def __init__(self) -> None:
        self.stats: list[RequestStats] = []
        self.response: Any = None
        self._lock = threading.Lock()

    def add(self, stats: RequestStats) -> None:
        with self._lock:
            self.stats.append(stats)
            self._write()

    def attach(self, response: Any) -> None:
        with self._lock:
            self.response = response
            self._write()

    def summary(self) -> dict[str, Any]:
        tiers: dict[str, int] = {}
        for s in self.stats:
            for tier, n in s.hits_by_tier.items():
                tiers[tier] = tiers.get(tier, 0) + n
        dropped = sorted({d for s in self.stats for d in s.dropped})
        return {"hits": sum(tiers.values()), "hits_by_tier": tiers, "misses": sum(s.misses for s in self.stats),
                "dropped": dropped, "ttft_s": self.stats[0].ttft_s if self.stats else 0.0,
                "requests": [stats_metadata(s) for s in self.stats]}

    def _write(self) -> None:
        response = self.response
        if response is None or not self.stats or not hasattr(response, "source_nodes"):
            return
        if getattr(response, "metadata", None) is None:
            response.metadata = {}
        summary = self.summary()
        response.metadata["block_attention"] = summary
        if summary["dropped"]:
            dropped = set(summary["dropped"])
            response.source_nodes[:] = [n for n in response.source_nodes if node_key(n.node) not in dropped]


_CURRENT: contextvars.ContextVar[SynthesisStats | None] = contextvars.ContextVar("block_attention_synthesis",
                                                                                    default=None)
_REGISTERED = False
_REGISTER_LOCK = threading.Lock()


def current_synthesis() -> SynthesisStats | None:
    """The stats collector of the synthesis running in this context, if any.

    A streaming synthesis ends (its response is returned) before its LLM stream starts, so its collector stays
    current until the stream starts; taking it then releases it, so later calls never report into that response.
    """
    collector = _CURRENT.get()
    if collector is not None and collector.response is not None:
        _CURRENT.set(None)
    return collector


def register_stats_handler() -> None:
    """Register the synthesis stats handler on LlamaIndex's root dispatcher (once per process)."""
    global _REGISTERED
    if _REGISTERED:
        return
    with _REGISTER_LOCK:
        if _REGISTERED:
            return
        from llama_index.core.instrumentation import get_dispatcher
        from llama_index.core.instrumentation.event_handlers import BaseEventHandler
        from llama_index.core.instrumentation.events.synthesis import SynthesizeEndEvent, SynthesizeStartEvent

        class _BlockAttentionStats(BaseEventHandler):
            @classmethod
            def class_name(cls) -> str:
                return "BlockAttentionStats"

            def handle(self, event: Any, **kwargs: Any) -> None:
                if isinstance(event, SynthesizeStartEvent):
                    _CURRENT.set(SynthesisStats())
                elif isinstance(event, SynthesizeEndEvent):
                    collector = _CURRENT.get()
                    streaming = hasattr(event.response, "response_gen") or hasattr(event.response, "async_response_gen")
                    if not (streaming and collector is not None and not collector.stats):
                        _CURRENT.set(None)  # a stream not started yet still reports into this response
                    if collector is not None:
                        collector.attach(event.response)

        get_dispatcher().add_event_handler(_BlockAttentionStats())
        _REGISTERED = True
