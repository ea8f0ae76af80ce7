"""``BlockAttentionRetriever``: a LangChain retriever over a ``block_attention`` retrieval index folder.

Contract:

* Wraps ``block_attention.retrieval.Retriever``: either an open one (``retriever=...``) or the index folder at
  ``index_path``, opened with ``Retriever.load(index_path)`` on the first query (never at construction). A missing
  index raises the library's ``IndexNotFoundError`` naming the fix.
* ``invoke(query)`` returns the ``top_k`` best passages (``invoke(query, top_k=8)`` overrides it per call), best
  first, as ``Document(id=passage_id, page_content=text, metadata={...})`` with metadata ``id`` (the passage id),
  ``score`` (cosine similarity), ``title``, ``source``, ``doc_id`` and ``chunk_index``. Handing these documents to
  :class:`~langchain_block_attention.BlockAttentionLLM` caches each passage under its passage id, exactly like
  ``block_attention.RAGPipeline``.
"""

from __future__ import annotations

import threading
from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import Field, PrivateAttr, model_validator


class BlockAttentionRetriever(BaseRetriever):
    """Search a ``block_attention`` Faiss index; see the module docstring."""

    index_path: str | None = None
    """Folder of an index built with ``block_attention.retrieval.Retriever`` (opened on first use)."""
    retriever: Any = Field(default=None, exclude=True, repr=False)
    """An already open ``block_attention.retrieval.Retriever`` (instead of ``index_path``)."""
    top_k: int = Field(default=4, ge=1)
    """Number of passages returned per query."""

    _loaded: Any = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @model_validator(mode="after")
    def _check_source(self) -> "BlockAttentionRetriever":
        if self.retriever is None and not self.index_path:
            raise ValueError(
                "BlockAttentionRetriever needs an index: pass index_path='<folder>' (built with "
                "block_attention.retrieval.Retriever.create(...).ingest(...)) or retriever=<open Retriever>."
            )
        if self.retriever is not None and not hasattr(self.retriever, "search"):
            raise ValueError(
                f"retriever must be a block_attention.retrieval.Retriever, got {type(self.retriever).__name__}; "
                "open one with Retriever.load(path) or pass index_path instead."
            )
        return self

    def get_index(self) -> Any:
        """The underlying ``block_attention.retrieval.Retriever`` (opened from ``index_path`` on first use)."""
        if self.retriever is not None:
            return self.retriever
        if self._loaded is None:
            with self._lock:
                if self._loaded is None:
                    from block_attention.retrieval import Retriever

                    self._loaded = Retriever.load(self.index_path)
        return self._loaded

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun,
                                top_k: int | None = None) -> list[Document]:
        hits = self.get_index().search(query, top_k=top_k or self.top_k)
        return [scored_to_document(hit) for hit in hits]


def scored_to_document(hit: Any) -> Document:
    """A ``ScoredPassage`` as a LangChain document keyed by its passage id."""
    passage = hit.passage
    metadata = {"id": passage.passage_id, "score": float(hit.score), "title": passage.title,
                "source": passage.source, "doc_id": passage.doc_id, "chunk_index": passage.chunk_index}
    return Document(id=passage.passage_id, page_content=passage.text, metadata=metadata)
