"""Corpus loading: .txt/.md/.jsonl files, titles, ids, sources and the error cases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from block_attention.core.errors import BlockAttentionError
from block_attention.retrieval import (
    CorpusFormatError,
    CorpusNotFoundError,
    Document,
    EmptyCorpusError,
    load_corpus,
)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_markdown_title_is_first_heading_and_is_removed_from_body(tmp_path: Path) -> None:
    _write(tmp_path / "guide.md", "Intro line.\n\n# The Real Title #\n\nBody paragraph.\n\n## Section\n\nMore.\n")
    (doc,) = load_corpus(tmp_path)
    assert doc.title == "The Real Title"
    assert "# The Real Title" not in doc.text
    assert doc.text.startswith("Intro line.")
    assert "## Section" in doc.text


def test_titles_fall_back_to_file_stem(tmp_path: Path) -> None:
    _write(tmp_path / "plain-notes.txt", "# not a title in a txt file\nText.")
    _write(tmp_path / "no-heading.md", "Just text.")
    _write(tmp_path / "fenced.md", "```\n# code comment\n```\nText.")
    docs = {d.doc_id: d for d in load_corpus(tmp_path)}
    assert docs["plain-notes.txt"].title == "plain-notes"
    assert docs["plain-notes.txt"].text.startswith("# not a title")
    assert docs["no-heading.md"].title == "no-heading"
    assert docs["fenced.md"].title == "fenced"


def test_recursive_walk_relative_ids_and_skips(tmp_path: Path) -> None:
    _write(tmp_path / "a.md", "# A\n\nAlpha.")
    _write(tmp_path / "sub" / "deeper" / "b.txt", "Beta.")
    _write(tmp_path / ".hidden" / "c.txt", "Hidden.")
    _write(tmp_path / ".secret.txt", "Hidden too.")
    _write(tmp_path / "image.png", "not text")
    _write(tmp_path / "empty.txt", "   \n\n")
    docs = load_corpus(tmp_path)
    assert [d.doc_id for d in docs] == ["a.md", "sub/deeper/b.txt"]
    assert all(d.source == d.doc_id for d in docs)


def test_single_file_with_root_keeps_folder_relative_id(tmp_path: Path) -> None:
    nested = _write(tmp_path / "sub" / "b.txt", "Beta.")
    assert load_corpus(nested)[0].doc_id == "b.txt"
    assert load_corpus(nested, root=tmp_path)[0].doc_id == "sub/b.txt"


def test_jsonl_records_with_and_without_ids(tmp_path: Path) -> None:
    lines = [
        json.dumps({"id": "doc-1", "title": "First", "text": "One."}),
        "",
        json.dumps({"id": 7, "text": "Seven, with an integer id and no title."}),
        json.dumps({"title": "Anonymous", "text": "No id here."}),
        json.dumps({"id": "blank", "text": "   "}),
    ]
    _write(tmp_path / "data" / "records.jsonl", "\n".join(lines) + "\n")
    docs = load_corpus(tmp_path)
    assert [d.doc_id for d in docs] == ["doc-1", "7", "data/records.jsonl:4"]
    assert [d.title for d in docs] == ["First", "", "Anonymous"]
    assert {d.source for d in docs} == {"data/records.jsonl"}


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("{not json", "Invalid JSON"),
        ("[1, 2]", "not an object"),
        (json.dumps({"id": "x"}), '"text"'),
        (json.dumps({"id": "x", "text": "t", "title": 3}), '"title"'),
        (json.dumps({"id": ["x"], "text": "t"}), '"id"'),
    ],
)
def test_bad_jsonl_lines_raise_with_location(tmp_path: Path, line: str, fragment: str) -> None:
    _write(tmp_path / "bad.jsonl", json.dumps({"text": "fine"}) + "\n" + line + "\n")
    with pytest.raises(CorpusFormatError, match="line 2") as info:
        load_corpus(tmp_path)
    assert fragment in str(info.value)


def test_duplicate_doc_ids_are_rejected(tmp_path: Path) -> None:
    _write(tmp_path / "a.jsonl", json.dumps({"id": "same", "text": "One."}))
    _write(tmp_path / "b.jsonl", json.dumps({"id": "same", "text": "Two."}))
    with pytest.raises(CorpusFormatError, match="used twice"):
        load_corpus(tmp_path)


def test_missing_folder_and_empty_corpus(tmp_path: Path) -> None:
    with pytest.raises(CorpusNotFoundError, match="does not exist"):
        load_corpus(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    _write(tmp_path / "empty" / "blank.md", "# Only a title\n")
    _write(tmp_path / "empty" / "other.csv", "a,b\n")
    with pytest.raises(EmptyCorpusError, match="No documents") as info:
        load_corpus(tmp_path / "empty")
    assert isinstance(info.value, BlockAttentionError)


def test_undecodable_file_and_unsupported_single_file(tmp_path: Path) -> None:
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(CorpusFormatError, match="UTF-8"):
        load_corpus(tmp_path)
    other = _write(tmp_path / "x.csv", "a")
    with pytest.raises(CorpusFormatError, match="unsupported extension"):
        load_corpus(other)


def test_document_validation() -> None:
    with pytest.raises(ValueError, match="doc_id"):
        Document(doc_id="", title="t", text="x")
    with pytest.raises(ValueError, match="title"):
        Document(doc_id="d", title=None, text="x")  # type: ignore[arg-type]
    assert Document(doc_id="d", title="", text="x").source is None
