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
* **No setup needed.** The stock engines keep nodes as blocks without :class:`BlockMarkers` too:
  :func:`retrieved_nodes` returns the nodes of the LlamaIndex spans enclosing the current LLM call (the ``nodes``
  argument of an enclosing ``synthesize``, then the nodes of every ``RetrievalEndEvent`` emitted directly inside an
  enclosing span), and :func:`mark_retrieved` wraps the first occurrence of each such node's LLM view in a prompt
  in its block marker, exactly as :class:`BlockMarkers` would have rendered it (same key ``node_id:hash``, same
  score), so both recipes send the same blocks and the same final block (``simple_summarize`` puts the repr of a
  list of texts into its prompt: there the escaped text, as it stands in the prompt, is the block). A streaming
  synthesis's nodes stay with its stats collector until its stream starts (after its spans exited). Spans are tracked by one span handler on
  the root dispatcher (registered with the stats handler); a span's nodes are forgotten when it exits, so a later
  call outside the query never sees them. A node whose text the framework changed or cut is sent as plain text.
  :class:`BlockMarkers` stays the explicit option (and the one for custom pipelines that call the LLM outside
  LlamaIndex's spans).
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

from collections.abc import Iterable

from block_attention.frameworks.markers import OPEN, mark_block
from block_attention.frameworks.runtime import stats_metadata
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.instrumentation.span import BaseSpan, active_span_id
from llama_index.core.instrumentation.span_handlers import BaseSpanHandler
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


# -- nodes of the enclosing spans (the plain stock recipes) -------------------------------------------------------
class _NodesSpan(BaseSpan):
    """An open LlamaIndex span and the nodes retrieved or synthesized directly inside it."""

    nodes: list[Any] = Field(default_factory=list)


class _SpanNodes(BaseSpanHandler[_NodesSpan]):
    """Tracks open spans (id -> parent) and the nodes a ``synthesize`` span was given."""

    @classmethod
    def class_name(cls) -> str:
        return "BlockAttentionSpanNodes"

    def new_span(self, id_: str, bound_args: Any, instance: Any = None, parent_span_id: str | None = None,
                 tags: dict[str, Any] | None = None, **kwargs: Any) -> _NodesSpan:
        from llama_index.core.response_synthesizers.base import BaseSynthesizer

        nodes = bound_args.arguments.get("nodes") if isinstance(instance, BaseSynthesizer) else None
        return _NodesSpan(id_=id_, parent_id=parent_span_id, nodes=list(nodes) if isinstance(nodes, list) else [])

    def prepare_to_exit_span(self, id_: str, bound_args: Any, instance: Any = None, result: Any = None,
                             **kwargs: Any) -> _NodesSpan | None:
        return self.open_spans.get(id_)

    def prepare_to_drop_span(self, id_: str, bound_args: Any, instance: Any = None, err: Any = None,
                             **kwargs: Any) -> _NodesSpan | None:
        return self.open_spans.get(id_)

    def retrieved(self, span_id: str | None, nodes: list[Any]) -> None:
        """A ``RetrievalEndEvent`` of span ``span_id`` (the retriever's own): its nodes go to the calling span."""
        span = self.open_spans.get(span_id) if span_id else None
        parent = self.open_spans.get(span.parent_id) if span is not None and span.parent_id else None
        if parent is not None:
            parent.nodes.extend(nodes)

    def enclosing(self, span_id: str | None = None) -> list[Any]:
        """Nodes of span ``span_id`` (default: the current one) and the spans enclosing it, nearest first."""
        found: list[Any] = []
        span_id, hops = span_id or active_span_id.get(), 0
        while span_id is not None and hops < 10_000:
            span = self.open_spans.get(span_id)
            if span is None:
                break
            found.extend(span.nodes)
            span_id, hops = span.parent_id, hops + 1
        return found


_SPANS = _SpanNodes()


def retrieved_nodes() -> list[Any]:
    """The nodes LlamaIndex retrieved or synthesizes in the spans enclosing this call, then those of a streaming
    synthesis whose stream starts now (its spans have exited; see the module docstring)."""
    if not _REGISTERED:
        return []
    collector = _CURRENT.get()
    return [*_SPANS.enclosing(), *(collector.nodes if collector is not None else ())]


def mark_retrieved(text: str, nodes: Iterable[Any]) -> str:
    """``text`` with the first occurrence of each node's LLM view wrapped in its block marker (see the module
    docstring); occurrences never overlap, and a text that already carries markers is returned unchanged."""
    if not text or OPEN in text:
        return text
    spans: list[tuple[int, int, str]] = []
    seen: set[str] = set()
    for item in nodes:
        node, score = (item.node, item.score) if isinstance(item, NodeWithScore) else (item, None)
        if not isinstance(node, BaseNode) or isinstance(node, BlockMarkedNode) or node_key(node) in seen:
            continue
        content = node.get_content(metadata_mode=MetadataMode.LLM)
        if not content.strip():
            continue
        for form in dict.fromkeys((content, repr(content)[1:-1])):  # (simple_summarize puts a list's repr in)
            start = _free(text, form, spans)
            if start >= 0:
                seen.add(node_key(node))
                spans.append((start, start + len(form), mark_block(form, node_key(node), score=score)))
                break
    if not spans:
        return text
    out, at = [], 0
    for begin, end, marked in sorted(spans):
        out += [text[at:begin], marked]
        at = end
    return "".join([*out, text[at:]])


def _free(text: str, part: str, taken: list[tuple[int, int, str]]) -> int:
    """Index of the first occurrence of ``part`` in ``text`` overlapping none of ``taken``; -1 if none."""
    start = text.find(part)
    while start >= 0 and any(start < end and start + len(part) > begin for begin, end, _ in taken):
        start = text.find(part, start + 1)
    return start


# -- stats into Response.metadata --------------------------------------------------------------------------------
class SynthesisStats:
    """The block-attention requests of one synthesis, written into its response as they finish."""

    def __init__(self) -> None:
        self.stats: list[RequestStats] = []
        self.response: Any = None
        self.nodes: list[Any] = []  # the synthesis's nodes, for a stream started after its spans exited
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
    """Register the synthesis stats handler and the span-nodes handler on LlamaIndex's root dispatcher (once per
    process)."""
    global _REGISTERED
    if _REGISTERED:
        return
    with _REGISTER_LOCK:
        if _REGISTERED:
            return
        from llama_index.core.instrumentation import get_dispatcher
        from llama_index.core.instrumentation.event_handlers import BaseEventHandler
        from llama_index.core.instrumentation.events.retrieval import RetrievalEndEvent
        from llama_index.core.instrumentation.events.synthesis import SynthesizeEndEvent, SynthesizeStartEvent

        class _BlockAttentionStats(BaseEventHandler):
            @classmethod
            def class_name(cls) -> str:
                return "BlockAttentionStats"

            def handle(self, event: Any, **kwargs: Any) -> None:
                if isinstance(event, RetrievalEndEvent):
                    _SPANS.retrieved(event.span_id, list(event.nodes))
                elif isinstance(event, SynthesizeStartEvent):
                    collector = SynthesisStats()
                    collector.nodes = _SPANS.enclosing(event.span_id)
                    _CURRENT.set(collector)
                elif isinstance(event, SynthesizeEndEvent):
                    collector = _CURRENT.get()
                    streaming = hasattr(event.response, "response_gen") or hasattr(event.response, "async_response_gen")
                    if not (streaming and collector is not None and not collector.stats):
                        _CURRENT.set(None)  # a stream not started yet still reports into this response
                    if collector is not None:
                        collector.attach(event.response)

        get_dispatcher().add_event_handler(_BlockAttentionStats())
        get_dispatcher().add_span_handler(_SPANS)
        _REGISTERED = True
