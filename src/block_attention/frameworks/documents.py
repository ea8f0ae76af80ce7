"""Framework documents as engine blocks: one passage, one block, one cache key.

A framework integration reduces each of its document types to a :class:`DocumentRef` (text, id, title, score,
metadata) and calls :func:`documents_to_blocks`. Keying rules, shared by every integration:

* A document's key is its id (LangChain ``Document.id`` or ``metadata["id"]``; LlamaIndex ``node_id:hash``), else
  a digest of its text (identical texts then share KV). The KV store's key also covers the block's exact tokens,
  so an edited passage never reuses stale KV whatever its id.
* Two documents of one request that share an id but not their text (text splitters copy the loader's
  ``metadata["id"]`` to every chunk) do not fail: each of them is keyed ``<id>#<digest of its text>``, so each
  chunk is cached on its own and keeps its key whatever the order or the other chunks of a request. Documents that
  share an id and their text are one passage and keep the plain id.
* Blank documents are skipped (the engine refuses empty blocks); order is kept.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from block_attention.core.blocks import Block, text_digest

DuplicateKeyPolicy = Literal["suffix", "error"]


@dataclass(frozen=True)
class DocumentRef:
    """What an integration knows about one document; ``key`` ``None`` means "key by content"."""

    text: str
    key: str | None = None
    title: str | None = None
    score: float | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


def documents_to_blocks(refs: Iterable[DocumentRef | Block], *,
                        duplicates: DuplicateKeyPolicy = "suffix") -> list[Block]:
    """Blocks for ``refs`` in order (blank ones skipped), keyed by the rules in the module docstring.

    ``duplicates="error"`` leaves colliding ids as they are, so the engine raises on them.
    """
    items: list[Block] = []
    for ref in refs:
        if isinstance(ref, Block):
            items.append(ref)
        elif not isinstance(ref.text, str) or not ref.text.strip():
            continue
        else:
            items.append(Block(text=ref.text, doc_id=ref.key or None, title=ref.title or None,
                               score=float(ref.score) if ref.score is not None else None,
                               metadata=dict(ref.metadata)))
    if duplicates != "suffix":
        return items
    texts: dict[str, set[str]] = {}
    for block in items:
        if block.doc_id is not None:
            texts.setdefault(block.doc_id, set()).add(block.text)
    clashing = {key for key, seen in texts.items() if len(seen) > 1}
    if not clashing:
        return items
    return [Block(text=b.text, doc_id=f"{b.doc_id}#{text_digest(b.text)}", title=b.title, score=b.score,
                  metadata=b.metadata) if b.doc_id in clashing else b for b in items]


__all__ = ["DocumentRef", "DuplicateKeyPolicy", "documents_to_blocks"]
