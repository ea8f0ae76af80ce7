"""Blocks: the unit of caching.

A request is a list of :class:`Block` (retrieved passages, optionally a system/instruction block first) plus a
final block (instruction + question), which is the only block that attends to everything. A block's KV is
computed on its own at positions ``0..n-1`` and cached under its ``doc_id`` and the hash of its exact tokens.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .errors import InvalidRequestError


def check_text(value: str, what: str) -> str:
    """``value`` when it is valid Unicode text (encodable as UTF-8); else an :class:`InvalidRequestError`.

    Lone surrogates (``"\\ud800"``, e.g. from ``bytes.decode(errors="surrogateescape")``) cannot be tokenized,
    hashed or stored, so they are refused before anything is computed or cached.
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequestError(
            f"{what} contains a lone surrogate {value[exc.start]!r} at index {exc.start}, which is not valid Unicode "
            "text; decode your input with errors='replace' (or strip the surrogates) before passing it."
        ) from None
    return value


def text_digest(text: str) -> str:
    """Short stable content id for a text (used when a block has no doc_id of its own)."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=12).hexdigest()


@dataclass(frozen=True)
class Block:
    """One cacheable passage.

    ``doc_id`` is the cache key chosen by the caller (the retriever's passage id); when omitted it is derived
    from the text, so identical texts share KV. ``score`` is the retriever's score (higher is better), used by
    the opt-in ``drop_lowest`` overflow policy. ``title`` is optional and is rendered by the block template.
    """

    text: str
    doc_id: str | None = None
    title: str | None = None
    score: float | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise InvalidRequestError(
                f"Block text must be a str, got {type(self.text).__name__}; convert your document to text first."
            )
        if not self.text.strip():
            raise InvalidRequestError(
                f"Block {self.doc_id!r} has empty text; drop empty passages before building the request."
            )
        if self.doc_id is not None and (not isinstance(self.doc_id, str) or not self.doc_id):
            raise InvalidRequestError(
                f"Block doc_id must be a non-empty str or None, got {self.doc_id!r}; pass the retriever's passage id."
            )
        if self.title is not None and not isinstance(self.title, str):
            raise InvalidRequestError(f"Block title must be a str or None, got {type(self.title).__name__}.")
        check_text(self.text, f"The text of block {self.doc_id!r}")
        if self.doc_id is not None:
            check_text(self.doc_id, f"Block doc_id {self.doc_id!r}")
        if self.title is not None:
            check_text(self.title, f"The title of block {self.doc_id!r}")
        object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))

    @property
    def key(self) -> str:
        """The doc id used for caching (explicit ``doc_id`` or a digest of the text)."""
        return self.doc_id if self.doc_id is not None else "text:" + text_digest(self.text)


def as_blocks(items: Sequence[Block | str]) -> list[Block]:
    """Accept blocks or plain strings (a string becomes a block keyed by its content digest)."""
    if isinstance(items, (str, bytes)):
        raise InvalidRequestError("Pass a list of blocks or strings, not a single string; wrap it in a list.")
    if items is None or not isinstance(items, Iterable):
        raise InvalidRequestError(
            f"blocks must be a list of Block or str, got {type(items).__name__}; pass [] for a request without "
            "passages."
        )
    out: list[Block] = []
    for item in items:
        if isinstance(item, Block):
            out.append(item)
        elif isinstance(item, str):
            out.append(Block(text=item))
        else:
            raise InvalidRequestError(
                f"Each block must be a Block or a str, got {type(item).__name__}; build Block(text=..., doc_id=...)."
            )
    return out


def check_unique_ids(blocks: Sequence[Block]) -> None:
    """Raise if two blocks share a doc id but not their text (an ambiguous cache key)."""
    seen: dict[str, str] = {}
    for block in blocks:
        prev = seen.setdefault(block.key, block.text)
        if prev != block.text:
            raise InvalidRequestError(
                f"Two blocks share doc_id {block.key!r} but have different text; give each distinct passage its own id."
            )
