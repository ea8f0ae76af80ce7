"""Chunking: split a :class:`~block_attention.retrieval.corpus.Document` into retrievable passages.

Contract:

* A passage holds at most ``chunk_tokens`` tokens (default 200; Block-Attention uses ~100-300 token passages)
  as measured by ``count_tokens`` (any ``str -> int`` callable; default :func:`count_words`, a whitespace-word
  approximation). Counts are summed over the pieces a passage is built from, so a counter must not add
  special tokens (see :func:`token_counter_from_tokenizer`). One word longer than the budget is never cut.
* Boundaries are chosen in this order: paragraph (blank line), sentence, word. A paragraph is kept whole when
  it fits a passage; a Markdown heading line is glued to the paragraph that follows it.
* With ``overlap_tokens > 0`` each passage starts with the trailing sentences (or, failing that, words) of the
  previous one, up to ``overlap_tokens`` tokens.
* Each passage gets a stable id ``f"{doc_id}#{chunk_index}:{digest[:12]}"`` where ``digest`` (:func:`passage_digest`) is
  the SHA-256 of the passage's title and text, so editing a passage's text (or the document title) changes
  its id while untouched passages keep theirs. For file documents the doc id is the file's relative path.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from block_attention.core.blocks import Block
from block_attention.core.checks import is_int
from block_attention.core.errors import ConfigError, InvalidRequestError
from .corpus import Document

TokenCounter = Callable[[str], int]

_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
_HEADING_LINE = re.compile(r"^ {0,3}#{1,6}[ \t]+\S")
_LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d{1,3}[.)])\s+")
_SENTENCE_BOUNDARY = re.compile(r"""([.!?…]+["'”’)\]]*)(\s+)(?=["'“‘(\[]?[A-Z0-9À-ÖØ-Þ])""")
_INITIALISM = re.compile(r"(?:[A-Za-z]\.)+[A-Za-z]")
_ABBREVIATIONS = frozenset(
    "al approx capt cf co col dr etc fig gen inc jr lt ltd mr mrs ms mt no nos pp prof rev sgt sr st vol vs".split()
)


def count_words(text: str) -> int:
    """Default token counter: the number of whitespace-separated words (a cheap approximation)."""
    return len(text.split())


def token_counter_from_tokenizer(tokenizer: Any) -> TokenCounter:
    """Build a counter from a Hugging Face tokenizer (counts tokens without special tokens)."""

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    return count


@dataclass(frozen=True)
class ChunkingConfig:
    """How documents are split: ``chunk_tokens`` per passage, ``overlap_tokens`` shared with the previous one."""

    chunk_tokens: int = 200
    overlap_tokens: int = 0

    def __post_init__(self) -> None:
        if not is_int(self.chunk_tokens) or self.chunk_tokens < 1:
            raise ConfigError(
                f"chunk_tokens must be a positive int, got {self.chunk_tokens!r}; passages of 100-300 tokens work well."
            )
        if not is_int(self.overlap_tokens) or not 0 <= self.overlap_tokens < self.chunk_tokens:
            raise ConfigError(
                f"overlap_tokens must be an int in [0, chunk_tokens={self.chunk_tokens}), got {self.overlap_tokens!r}; "
                "use 0 for no overlap."
            )


@dataclass(frozen=True)
class Passage:
    """One chunk of a document: the unit that is embedded, retrieved and cached as a block."""

    passage_id: str
    doc_id: str
    title: str
    text: str
    source: str | None
    chunk_index: int
    digest: str  # passage_digest(title, text): sha256 of the passage content

    def __post_init__(self) -> None:
        if not isinstance(self.passage_id, str) or not self.passage_id:
            raise InvalidRequestError(f"Passage id must be a non-empty str, got {self.passage_id!r}.")
        if not isinstance(self.text, str) or not self.text.strip():
            raise InvalidRequestError(f"Passage {self.passage_id!r} has empty text; drop empty passages.")

    @property
    def embedding_text(self) -> str:
        """The text that is embedded for retrieval: title and passage text."""
        return f"{self.title}\n{self.text}" if self.title else self.text

    def to_block(self, score: float | None = None) -> Block:
        """The passage as a cacheable :class:`~block_attention.core.blocks.Block` keyed by its passage id."""
        return Block(
            text=self.text,
            doc_id=self.passage_id,
            title=self.title or None,
            score=score,
            metadata={
                "source": self.source,
                "doc_id": self.doc_id,
                "chunk_index": self.chunk_index,
                "digest": self.digest,
            },
        )


def passage_digest(title: str, text: str) -> str:
    """SHA-256 (hex) of a passage's title and text."""
    return hashlib.sha256(f"{title}\x00{text}".encode()).hexdigest()


def make_passage_id(doc_id: str, chunk_index: int, digest: str) -> str:
    """The stable passage id ``f"{doc_id}#{chunk_index}:{digest[:12]}"``."""
    return f"{doc_id}#{chunk_index}:{digest[:12]}"


def chunk_document(
    document: Document, config: ChunkingConfig | None = None, count_tokens: TokenCounter | None = None
) -> list[Passage]:
    """Split ``document`` into passages (an empty list for a document without text)."""
    passages = []
    for index, text in enumerate(chunk_text(document.text, config, count_tokens)):
        digest = passage_digest(document.title, text)
        passages.append(
            Passage(
                passage_id=make_passage_id(document.doc_id, index, digest),
                doc_id=document.doc_id,
                title=document.title,
                text=text,
                source=document.source,
                chunk_index=index,
                digest=digest,
            )
        )
    return passages


@dataclass(frozen=True)
class _Unit:
    text: str
    tokens: int
    paragraph: int


def chunk_text(text: str, config: ChunkingConfig | None = None, count_tokens: TokenCounter | None = None) -> list[str]:
    """Split ``text`` into chunks of at most ``config.chunk_tokens`` tokens on the best boundaries available."""
    config = config or ChunkingConfig()
    count = count_tokens or count_words
    budget = config.chunk_tokens
    units = _units(text, budget, count)
    chunks: list[list[_Unit]] = []
    current: list[_Unit] = []
    size = 0
    for unit in units:
        if current and size + unit.tokens > budget:
            chunks.append(current)
            current = _overlap_tail(current, min(config.overlap_tokens, budget - unit.tokens), count)
            size = sum(u.tokens for u in current)
        current.append(unit)
        size += unit.tokens
    if current:
        chunks.append(current)
    return [_join(chunk) for chunk in chunks]


def split_paragraphs(text: str) -> list[str]:
    """Blank-line separated paragraphs; a heading-only paragraph is glued to the next paragraph."""
    raw = [p.strip() for p in _PARAGRAPH_BREAK.split(text.replace("\r\n", "\n").replace("\r", "\n"))]
    paragraphs: list[str] = []
    pending_heading = ""
    for para in raw:
        if not para:
            continue
        if "\n" not in para and _HEADING_LINE.match(para):
            pending_heading = f"{pending_heading}\n{para}" if pending_heading else para
            continue
        paragraphs.append(f"{pending_heading}\n{para}" if pending_heading else para)
        pending_heading = ""
    if pending_heading:
        paragraphs.append(pending_heading)
    return paragraphs


def split_sentences(paragraph: str) -> list[str]:
    """Split a paragraph into sentences (headings and list items start new pieces; wrapped lines are joined)."""
    groups: list[str] = []
    for line in paragraph.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if groups and not (_HEADING_LINE.match(line) or _LIST_ITEM.match(line) or _HEADING_LINE.match(groups[-1])):
            groups[-1] = f"{groups[-1]} {stripped}"
        else:
            groups.append(stripped)
    sentences: list[str] = []
    for group in groups:
        text = " ".join(group.split())
        start = 0
        for match in _SENTENCE_BOUNDARY.finditer(text):
            if _is_abbreviation(text[start : match.start(1)]):
                continue
            sentences.append(text[start : match.end(1)])
            start = match.end(2)
        if start < len(text):
            sentences.append(text[start:])
    return sentences


def _units(text: str, budget: int, count: TokenCounter) -> list[_Unit]:
    units: list[_Unit] = []
    for index, para in enumerate(split_paragraphs(text)):
        tokens = count(para)
        if tokens <= budget:
            units.append(_Unit(para, tokens, index))
            continue
        for sentence in split_sentences(para):
            tokens = count(sentence)
            if tokens <= budget:
                units.append(_Unit(sentence, tokens, index))
            else:
                units.extend(_Unit(piece, n, index) for piece, n in _split_words(sentence, budget, count))
    return units


def _split_words(sentence: str, budget: int, count: TokenCounter) -> list[tuple[str, int]]:
    pieces: list[tuple[str, int]] = []
    words: list[str] = []
    size = 0
    for word in sentence.split():
        n = count(word)
        if words and size + n > budget:
            pieces.append((" ".join(words), size))
            words, size = [], 0
        words.append(word)
        size += n
    if words:
        pieces.append((" ".join(words), size))
    return pieces


def _overlap_tail(chunk: list[_Unit], limit: int, count: TokenCounter) -> list[_Unit]:
    if limit <= 0:
        return []
    tail: list[_Unit] = []
    size = 0
    for unit in reversed(chunk):
        if size + unit.tokens > limit:
            break
        tail.insert(0, unit)
        size += unit.tokens
    if tail:
        return tail
    last = chunk[-1]
    words = last.text.split()
    best: tuple[str, int] | None = None
    for k in range(1, len(words)):
        piece = " ".join(words[-k:])
        n = count(piece)
        if n > limit:
            break
        best = (piece, n)
    return [_Unit(best[0], best[1], last.paragraph)] if best else []


def _join(units: list[_Unit]) -> str:
    out = units[0].text
    for prev, unit in zip(units, units[1:]):
        out += (" " if unit.paragraph == prev.paragraph else "\n\n") + unit.text
    return out


def _is_abbreviation(sentence_so_far: str) -> bool:
    words = sentence_so_far.split()
    if not words:
        return False
    word = words[-1].lstrip("\"'“‘([")
    return (len(word) == 1 and word.isalpha()) or word.lower() in _ABBREVIATIONS or bool(_INITIALISM.fullmatch(word))



__all__ = [
    "ChunkingConfig",
    "Passage",
    "TokenCounter",
    "chunk_document",
    "chunk_text",
    "passage_digest",
    "count_words",
    "make_passage_id",
    "split_paragraphs",
    "split_sentences",
    "token_counter_from_tokenizer",
]
