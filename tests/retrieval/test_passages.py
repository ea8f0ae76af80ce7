"""SQLite passage store: insert, lookup, delete, vectors round trip, no row id reuse, plain SQLite file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from block_attention.retrieval import Document, IndexFormatError, PassageStore, chunk_document


def _passages(doc_id: str, text: str, source: str | None = None) -> list:
    return chunk_document(Document(doc_id=doc_id, title=doc_id.upper(), text=text, source=source))


def test_insert_find_get_delete_and_vectors(tmp_path: Path) -> None:
    store = PassageStore(tmp_path / "passages.sqlite3")
    a, b = _passages("a", "Alpha text.", "f.jsonl") + _passages("b", "Beta text.")
    vectors = np.arange(2 * 4, dtype=np.float32).reshape(2, 4)
    with store.transaction():
        rows = store.insert([a, b], vectors)
    assert rows.tolist() == [0, 1] and len(store) == 2
    assert store.get(a.passage_id) == a and store.get("missing") is None
    assert store.get_rows([1, 5]) == {1: b}
    assert store.find(doc_ids=["a"]) == {0: a.passage_id}
    assert store.find(sources=["f.jsonl"], passage_ids=[b.passage_id]) == {0: a.passage_id, 1: b.passage_id}
    ids, stored = store.vectors(4)
    assert ids.tolist() == [0, 1]
    np.testing.assert_array_equal(stored, vectors)
    assert [p.passage_id for p in store.iter_passages()] == [a.passage_id, b.passage_id]
    with store.transaction():
        store.delete_rows([1])
    (c,) = _passages("c", "Gamma text.")
    with store.transaction():
        assert store.insert([c], vectors[:1]).tolist() == [2]  # row ids are never reused
    with store.transaction():
        store.delete_rows([2])
    with store.transaction():
        assert store.insert([c], vectors[:1]).tolist() == [3]
    store.close()
    reopened = PassageStore(tmp_path / "passages.sqlite3")
    assert reopened.row_ids().tolist() == [0, 3]
    reopened.close()


def test_transaction_rolls_back_on_error(tmp_path: Path) -> None:
    store = PassageStore(tmp_path / "p.sqlite3")
    (a,) = _passages("a", "Alpha.")
    with pytest.raises(RuntimeError), store.transaction():
        store.insert([a], np.zeros((1, 4), dtype=np.float32))
        raise RuntimeError("boom")
    assert len(store) == 0


def test_file_is_plain_sqlite_and_garbage_is_rejected(tmp_path: Path) -> None:
    store = PassageStore(tmp_path / "p.sqlite3")
    (a,) = _passages("a", "Alpha.")
    with store.transaction():
        store.insert([a], np.ones((1, 4), dtype=np.float32))
    store.close()
    with sqlite3.connect(tmp_path / "p.sqlite3") as conn:
        row = conn.execute("SELECT passage_id, text, typeof(embedding) FROM passages").fetchone()
    assert row == (a.passage_id, "Alpha.", "blob")
    (tmp_path / "bad.sqlite3").write_bytes(b"garbage " * 100)
    with pytest.raises(IndexFormatError, match="SQLite"):
        PassageStore(tmp_path / "bad.sqlite3")
