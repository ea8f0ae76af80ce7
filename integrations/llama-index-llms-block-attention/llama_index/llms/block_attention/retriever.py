"""``BlockAttentionIndexRetriever``: a LlamaIndex retriever over a ``block_attention`` retrieval index folder.

Contract:

* Wraps ``block_attention.retrieval.Retriever``: an open one (``retriever=...``) or the folder ``index_path``,
  opened with ``Retriever.load`` on the first query (never at construction).
* ``retrieve(query)`` returns the ``similarity_top_k`` best passages, best first, as
  ``NodeWithScore(TextNode(id_=passage_id, text=passage text, metadata={title, source, doc_id, chunk_index}),
  score=cosine similarity)``. Only ``title`` is shown to the LLM (the other keys are in
  ``excluded_llm_metadata_keys``) and nothing is added to the embedding text, so with
  :class:`BlockAttentionSynthesizer` each passage is one block ``"title: <title>\\n\\n<text>"`` keyed by
  ``passage_id:hash``.
"""

from __future__ import annotations

import threading
from typing import Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.callbacks import CallbackManager
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

_HIDDEN_FROM_LLM = ["source", "doc_id", "chunk_index"]


class BlockAttentionIndexRetriever(BaseRetriever):
    """Search a ``block_attention`` Faiss index; see the module docstring."""

    def __init__(self, index_path: str | None = None, *, retriever: Any = None, similarity_top_k: int = 4,
                 callback_manager: CallbackManager | None = None) -> None:
        if retriever is None and not index_path:
            raise ValueError(
                "BlockAttentionIndexRetriever needs an index: pass index_path='<folder>' (built with "
                "block_attention.retrieval.Retriever.create(...).ingest(...)) or retriever=<open Retriever>."
            )
        if similarity_top_k < 1:
            raise ValueError(f"similarity_top_k must be >= 1, got {similarity_top_k}.")
        super().__init__(callback_manager=callback_manager)
        self.index_path = index_path
        self.similarity_top_k = similarity_top_k
        self._retriever = retriever
        self._lock = threading.Lock()

    @property
    def index(self) -> Any:
        """The underlying ``block_attention.retrieval.Retriever`` (opened from ``index_path`` on first use)."""
        if self._retriever is None:
            with self._lock:
                if self._retriever is None:
                    from block_attention.retrieval import Retriever

                    self._retriever = Retriever.load(self.index_path)
        return self._retriever

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        hits = self.index.search(query_bundle.query_str, top_k=self.similarity_top_k)
        return [scored_to_node(hit) for hit in hits]


def scored_to_node(hit: Any) -> NodeWithScore:
    """A ``ScoredPassage`` as a scored LlamaIndex text node whose id is the passage id."""
    passage = hit.passage
    metadata = {"title": passage.title, "source": passage.source, "doc_id": passage.doc_id,
                "chunk_index": passage.chunk_index}
    hidden = _HIDDEN_FROM_LLM if passage.title else [*_HIDDEN_FROM_LLM, "title"]
    node = TextNode(id_=passage.passage_id, text=passage.text, metadata=metadata,
                    excluded_llm_metadata_keys=hidden, excluded_embed_metadata_keys=list(metadata))
    return NodeWithScore(node=node, score=float(hit.score))
