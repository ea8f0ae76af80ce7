"""Turning LangChain documents into block-attention blocks, and marking them inside flat prompts.

Contract (the keying and marker rules themselves live in :mod:`block_attention.frameworks`, shared with the
LlamaIndex integration):

* :func:`to_blocks` converts a ``documents`` list (LangChain :class:`~langchain_core.documents.Document`,
  :class:`block_attention.Block` or plain ``str``) into blocks, one per item, in order. A document's cache key is
  ``Document.id``, else ``metadata["id"]``, else a digest of its text (identical texts then share KV). Chunks that
  share an id but not their text (text splitters copy the loader's ``metadata["id"]`` to every chunk) are keyed
  ``<id>#<text digest>`` each. Its title is ``metadata["title"]`` and its score ``metadata["score"]`` (used by the
  ``drop_lowest`` overflow policy). Documents with blank text are skipped (the engine refuses empty blocks).
* :func:`format_docs` is the drop-in for the ``format_docs`` of LangChain's RAG tutorial: it renders each document
  with a block marker carrying its key (and title/score), so :class:`BlockAttentionLLM` and
  :class:`ChatBlockAttention` split any prompt built from it back into one cached block per document; the rest of
  the prompt (instruction, question) is the final block.
* :data:`BLOCK_SEPARATOR` (older form) also splits a *flat* prompt into blocks keyed by their text digest: every
  part before the last separator is a block, the part after it is the question.
* Nothing here imports torch or loads a model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from numbers import Real
from typing import TYPE_CHECKING, Any

from block_attention.frameworks.documents import DocumentRef, documents_to_blocks
from block_attention.frameworks.markers import BLOCK_MARKER, BLOCK_SEPARATOR, format_blocks, split_prompt
from langchain_core.documents import Document
from langchain_core.prompts import PromptTemplate

if TYPE_CHECKING:
    from block_attention import Block

BLOCK_PROMPT = PromptTemplate.from_template("{context}" + BLOCK_SEPARATOR + "{input}")
"""Prompt for ``create_stuff_documents_chain``: the documents as blocks, then the question as the final block."""


def document_key(doc: Document) -> str | None:
    """The cache key of ``doc``: ``doc.id``, else ``metadata["id"]``, else ``None`` (a text digest is used)."""
    if isinstance(doc.id, str) and doc.id:
        return doc.id
    meta_id = doc.metadata.get("id") if isinstance(doc.metadata, Mapping) else None
    if isinstance(meta_id, (str, int)) and not isinstance(meta_id, bool) and str(meta_id):
        return str(meta_id)
    return None


def document_ref(doc: Document) -> DocumentRef:
    """One LangChain document as the core's :class:`DocumentRef`."""
    meta = dict(doc.metadata or {})
    title, score = meta.get("title"), meta.get("score")
    return DocumentRef(text=doc.page_content, key=document_key(doc),
                       title=title if isinstance(title, str) and title else None,
                       score=float(score) if isinstance(score, Real) and not isinstance(score, bool) else None,
                       metadata=meta)


def document_to_block(doc: Document) -> Block:
    """One (non-blank) LangChain document as a :class:`block_attention.Block`."""
    blocks = documents_to_blocks([document_ref(doc)])
    if not blocks:
        raise ValueError("The document's text is blank; drop empty documents before converting them.")
    return blocks[0]


def to_blocks(items: Iterable[Any] | None) -> list[Block]:
    """Convert ``documents`` (Documents, Blocks or strings) into blocks, skipping blank ones."""
    from block_attention import Block

    if items is None:
        return []
    if isinstance(items, (str, bytes, Document)):
        raise TypeError(
            "documents must be a list of Documents (or Blocks or strings), not a single item; wrap it in a list."
        )
    refs: list[DocumentRef | Block] = []
    for item in items:
        if isinstance(item, Document):
            refs.append(document_ref(item))
        elif isinstance(item, Block):
            refs.append(item)
        elif isinstance(item, str):
            refs.append(DocumentRef(text=item))
        else:
            raise TypeError(
                f"Each document must be a langchain Document, a block_attention Block or a str, got "
                f"{type(item).__name__}; convert it with Document(page_content=..., id=...)."
            )
    return documents_to_blocks(refs)


def format_docs(docs: Iterable[Any]) -> str:
    """Documents as marked text, one block each: the drop-in for a RAG recipe's ``format_docs``."""
    return format_blocks(to_blocks(list(docs)))


__all__ = ["BLOCK_MARKER", "BLOCK_PROMPT", "BLOCK_SEPARATOR", "document_key", "document_ref", "document_to_block",
           "format_docs", "split_prompt", "to_blocks"]
