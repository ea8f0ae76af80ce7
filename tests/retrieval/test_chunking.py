"""Chunking: size limits, paragraph/sentence boundaries, overlap, stable ids and Block conversion."""

from __future__ import annotations

import re

import pytest

from block_attention.core.blocks import Block
from block_attention.core.errors import ConfigError
from block_attention.retrieval import ChunkingConfig, Document, chunk_document, chunk_text, count_words
from block_attention.retrieval.chunking import split_paragraphs, split_sentences


def _sentence(i: int, words: int = 12) -> str:
    return "Sentence" + f" w{i}x" * (words - 2) + f" end{i}."


def _text(paragraphs: int = 6, sentences: int = 5, words: int = 12) -> str:
    counter = iter(range(10_000))
    return "\n\n".join(
        " ".join(_sentence(next(counter), words) for _ in range(sentences)) for _ in range(paragraphs)
    )


def test_chunks_respect_size_and_keep_every_word_in_order() -> None:
    text = _text()
    chunks = chunk_text(text, ChunkingConfig(chunk_tokens=50))
    assert len(chunks) > 1
    assert all(count_words(c) <= 50 for c in chunks)
    assert " ".join(" ".join(chunks).split()) == " ".join(text.split())
    # every chunk ends on a sentence boundary (sentences are 12 words, so none needs a hard split)
    assert all(c.rstrip().endswith(".") for c in chunks)
    assert all(re.match(r"Sentence ", c) for c in chunks)


def test_paragraphs_are_kept_whole_when_they_fit() -> None:
    text = _text(paragraphs=5, sentences=3, words=10)  # 30-word paragraphs
    chunks = chunk_text(text, ChunkingConfig(chunk_tokens=70))
    paragraphs = split_paragraphs(text)
    assert [c.split("\n\n") for c in chunks] == [paragraphs[0:2], paragraphs[2:4], paragraphs[4:5]]


def test_long_paragraph_splits_on_sentences_and_long_sentence_on_words() -> None:
    long_sentence = " ".join(f"word{i}" for i in range(95)) + "."
    text = f"{_sentence(1)} {_sentence(2)}\n\n{long_sentence}"
    chunks = chunk_text(text, ChunkingConfig(chunk_tokens=40))
    assert all(count_words(c) <= 40 for c in chunks)
    assert chunks[0] == f"{_sentence(1)} {_sentence(2)}"
    assert " ".join(" ".join(chunks).split()) == " ".join(text.split())


def test_overlap_repeats_the_tail_of_the_previous_chunk() -> None:
    text = _text(paragraphs=1, sentences=12, words=10)
    chunks = chunk_text(text, ChunkingConfig(chunk_tokens=40, overlap_tokens=10))
    assert len(chunks) > 2
    for prev, nxt in zip(chunks, chunks[1:]):
        assert count_words(nxt) <= 40
        last_sentence = split_sentences(prev)[-1]
        assert nxt.startswith(last_sentence)  # one 10-word sentence fits the overlap budget
    # word-level fallback when no whole sentence fits the overlap
    chunks = chunk_text(text, ChunkingConfig(chunk_tokens=40, overlap_tokens=4))
    for prev, nxt in zip(chunks, chunks[1:]):
        assert nxt.split()[:4] == prev.split()[-4:]
        assert count_words(nxt) <= 40


def test_custom_token_counter_is_used() -> None:
    text = _text(paragraphs=3, sentences=4, words=8)
    chars = len  # one "token" per character
    chunks = chunk_text(text, ChunkingConfig(chunk_tokens=200), count_tokens=chars)
    assert all(len(c) <= 200 + 4 for c in chunks)  # counts are summed over pieces; joins add a separator or two
    assert len(chunks) > len(chunk_text(text, ChunkingConfig(chunk_tokens=200)))


def test_heading_is_glued_to_the_following_paragraph() -> None:
    text = "## Part one\n\n" + _sentence(1, 20) + "\n\n## Part two\n\n" + _sentence(2, 20)
    chunks = chunk_text(text, ChunkingConfig(chunk_tokens=25))
    assert chunks == ["## Part one\n" + _sentence(1, 20), "## Part two\n" + _sentence(2, 20)]


def test_sentence_splitter_keeps_abbreviations_together() -> None:
    text = "Mr. Smith met Dr. Jones in the U.S. in c. 1900. They talked. \"Really?\" she asked. J. R. Tolkien wrote."
    assert split_sentences(text) == [
        "Mr. Smith met Dr. Jones in the U.S. in c. 1900.",
        "They talked.",
        '"Really?" she asked.',
        "J. R. Tolkien wrote.",
    ]


def test_passage_ids_are_stable_and_follow_content() -> None:
    doc = Document(doc_id="notes/a.md", title="A", text=_text(paragraphs=4, sentences=3), source="notes/a.md")
    config = ChunkingConfig(chunk_tokens=40)
    first = chunk_document(doc, config)
    again = chunk_document(doc, config)
    assert [p.passage_id for p in first] == [p.passage_id for p in again]
    for i, p in enumerate(first):
        assert p.chunk_index == i
        assert p.passage_id == f"notes/a.md#{i}:{p.digest[:12]}"
        assert len(p.digest) == 64
    edited_text = doc.text.replace("end11.", "end11 (edited).")
    edited = chunk_document(Document(doc.doc_id, doc.title, edited_text, doc.source), config)
    changed = [i for i, (a, b) in enumerate(zip(first, edited)) if a.passage_id != b.passage_id]
    assert len(changed) == 1  # only the passage holding the edited sentence gets a new id
    retitled = chunk_document(Document(doc.doc_id, "B", doc.text, doc.source), config)
    assert all(a.passage_id != b.passage_id for a, b in zip(first, retitled))


def test_passage_to_block() -> None:
    (p,) = chunk_document(Document(doc_id="d1", title="Title", text="Some text.", source="x.md"))
    block = p.to_block(score=0.5)
    assert isinstance(block, Block)
    assert block.doc_id == p.passage_id == block.key
    assert (block.text, block.title, block.score) == ("Some text.", "Title", 0.5)
    assert block.metadata["source"] == "x.md"
    assert block.metadata["doc_id"] == "d1"
    (untitled,) = chunk_document(Document(doc_id="d2", title="", text="Other text."))
    assert untitled.to_block().title is None and untitled.to_block().score is None
    assert untitled.embedding_text == "Other text." and p.embedding_text == "Title\nSome text."


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [({"chunk_tokens": 0}, "chunk_tokens"), ({"chunk_tokens": 10, "overlap_tokens": 10}, "overlap_tokens"),
     ({"chunk_tokens": 10, "overlap_tokens": -1}, "overlap_tokens"), ({"chunk_tokens": True}, "chunk_tokens")],
)
def test_config_validation(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        ChunkingConfig(**kwargs)


def test_empty_text_gives_no_chunks() -> None:
    assert chunk_text("  \n\n ") == []
    assert ChunkingConfig() == ChunkingConfig(chunk_tokens=200, overlap_tokens=0)
