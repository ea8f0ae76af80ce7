"""Turning LangChain inputs into block-attention blocks.

Contract:

* :func:`to_blocks` converts a ``documents`` list (LangChain :class:`~langchain_core.documents.Document`,
  :class:`block_attention.Block` or plain ``str``) into blocks, one per item, in order. A document's cache key is
  ``Document.id``, else ``metadata["id"]``, else a digest of its text (identical texts then share KV). Its title is
  ``metadata["title"]`` and its score ``metadata["score"]`` (used by the ``drop_lowest`` overflow policy).
  Documents with blank text are skipped (the engine refuses empty blocks).
* :data:`BLOCK_SEPARATOR` splits a *flat* prompt into blocks: every part before the last separator is a block
  (keyed by its text digest), the part after it is the final block (the question). Put it between documents and
  before the question, e.g. ``create_stuff_documents_chain(llm, BLOCK_PROMPT, document_separator=BLOCK_SEPARATOR)``.
  A prompt without the separator is one final block (a normal LLM call). Parts are stripped of surrounding
  whitespace; empty parts are dropped.
* Nothing here imports torch or loads a model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from numbers import Real
from typing import TYPE_CHECKING, Any

from langchain_core.documents import Document
from langchain_core.prompts import PromptTemplate

if TYPE_CHECKING:
    from block_attention import Block

BLOCK_MARKER = "<|block|>"
"""The token-like marker that :func:`split_prompt` splits on."""

BLOCK_SEPARATOR = f"\n\n{BLOCK_MARKER}\n\n"
"""Separator between blocks in a flat prompt (documents, then the question last)."""

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


def document_to_block(doc: Document) -> Block:
    """One LangChain document as a :class:`block_attention.Block` (see the module docstring for the mapping)."""
    from block_attention import Block

    meta = dict(doc.metadata or {})
    title = meta.get("title")
    score = meta.get("score")
    return Block(
        text=doc.page_content,
        doc_id=document_key(doc),
        title=title if isinstance(title, str) and title else None,
        score=float(score) if isinstance(score, Real) and not isinstance(score, bool) else None,
        metadata=meta,
    )


def to_blocks(items: Iterable[Any] | None) -> list[Block]:
    """Convert ``documents`` (Documents, Blocks or strings) into blocks, skipping blank ones."""
    from block_attention import Block

    if items is None:
        return []
    if isinstance(items, (str, bytes, Document)):
        raise TypeError(
            "documents must be a list of Documents (or Blocks or strings), not a single item; wrap it in a list."
        )
    blocks: list[Block] = []
    for item in items:
        if isinstance(item, Document):
            if item.page_content.strip():
                blocks.append(document_to_block(item))
        elif isinstance(item, Block):
            blocks.append(item)
        elif isinstance(item, str):
            if item.strip():
                blocks.append(Block(text=item))
        else:
            raise TypeError(
                f"Each document must be a langchain Document, a block_attention Block or a str, got "
                f"{type(item).__name__}; convert it with Document(page_content=..., id=...)."
            )
    return blocks


def split_prompt(prompt: str) -> tuple[list[str], str]:
    """Split a flat prompt at :data:`BLOCK_SEPARATOR` into ``(block texts, question)``."""
    if BLOCK_MARKER not in prompt:
        return [], prompt
    *parts, question = (part.strip() for part in prompt.split(BLOCK_MARKER))
    return [part for part in parts if part], question


__all__ = ["BLOCK_MARKER", "BLOCK_PROMPT", "BLOCK_SEPARATOR", "document_key", "document_to_block", "split_prompt",
           "to_blocks"]
