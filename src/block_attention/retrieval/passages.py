"""Passage store: a SQLite file mapping int64 row ids (the Faiss ids) to passages and their vectors.

Contract:

* One table ``passages`` holds, per row id: passage id (unique), doc id, source, title, text, chunk index,
  content hash and the embedding as a little-endian ``float32`` blob. Vectors are kept so the Faiss index can be
  rebuilt (or retrained, or switched to another kind) without re-embedding. Row ids are never reused.
* Only the standard library ``sqlite3`` and ``numpy`` byte buffers are used: no pickle anywhere.
* Writes happen inside :meth:`PassageStore.transaction` (all or nothing); reads can happen at any time.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from block_attention.core.errors import BlockAttentionError, IndexFormatError
from .chunking import Passage

if TYPE_CHECKING:
    import numpy as np

STORE_FILE = "passages.sqlite3"
SCHEMA_VERSION = 1
_MAX_PARAMS = 500

_SCHEMA = """
CREATE TABLE IF NOT EXISTS passages (
    row_id INTEGER PRIMARY KEY,
    passage_id TEXT NOT NULL UNIQUE,
    doc_id TEXT NOT NULL,
    source TEXT,
    title TEXT NOT NULL,
    text TEXT NOT NULL,
    chunk_index INTEGER NOT NULL,
    content_hash TEXT NOT NULL,  -- Passage.digest (column name kept for existing indexes)
    embedding BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS passages_doc_id ON passages(doc_id);
CREATE INDEX IF NOT EXISTS passages_source ON passages(source);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

_COLUMNS = "row_id, passage_id, doc_id, source, title, text, chunk_index, content_hash"


class PassageStore:
    """SQLite-backed passage table (see the module docstring for the contract)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise IndexFormatError(
                    f"Passage store {str(self.path)!r} has schema version {version}, newer than this library "
                    f"({SCHEMA_VERSION}); upgrade block_attention."
                )
            self._conn.executescript(_SCHEMA)
            self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            raise IndexFormatError(
                f"Passage store {str(self.path)!r} is not a readable SQLite database ({exc}); rebuild the index "
                "with Retriever.create(..., overwrite=True)."
            ) from None
        self._lock = threading.RLock()

    # -- lifecycle --------------------------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group writes: committed together on success, rolled back on any exception."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    # -- writes -----------------------------------------------------------------------------------------------

    def insert(self, passages: Sequence[Passage], vectors: np.ndarray) -> np.ndarray:
        """Insert passages with their vectors; returns the new int64 row ids (call inside a transaction)."""
        if len(passages) != len(vectors):
            raise ValueError(f"{len(passages)} passages but {len(vectors)} vectors")
        with self._lock:
            return self._insert(passages, vectors)

    def _insert(self, passages: Sequence[Passage], vectors: np.ndarray) -> np.ndarray:
        import numpy as np

        start = self._next_row_id()
        row_ids = np.arange(start, start + len(passages), dtype=np.int64)
        rows = [
            (
                int(row_id),
                p.passage_id,
                p.doc_id,
                p.source,
                p.title,
                p.text,
                p.chunk_index,
                p.digest,
                np.ascontiguousarray(vector, dtype="<f4").tobytes(),
            )
            for row_id, p, vector in zip(row_ids, passages, vectors)
        ]
        self._conn.executemany(f"INSERT INTO passages ({_COLUMNS}, embedding) VALUES (?,?,?,?,?,?,?,?,?)", rows)
        self._conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('next_row_id', ?)", (str(start + len(passages)),)
        )
        return row_ids

    def delete_rows(self, row_ids: Iterable[int]) -> None:
        """Delete rows by row id (call inside a transaction)."""
        with self._lock:
            for chunk in _chunks([int(r) for r in row_ids]):
                self._conn.execute(f"DELETE FROM passages WHERE row_id IN ({_marks(chunk)})", chunk)

    # -- reads ------------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM passages").fetchone()[0])

    def find(
        self,
        *,
        passage_ids: Iterable[str] = (),
        doc_ids: Iterable[str] = (),
        sources: Iterable[str] = (),
    ) -> dict[int, str]:
        """``{row_id: passage_id}`` of rows matching any of the given passage ids, doc ids or sources."""
        found: dict[int, str] = {}
        with self._lock:
            for column, values in (("passage_id", passage_ids), ("doc_id", doc_ids), ("source", sources)):
                for chunk in _chunks(list(dict.fromkeys(values))):
                    query = f"SELECT row_id, passage_id FROM passages WHERE {column} IN ({_marks(chunk)})"
                    found.update((int(r), str(p)) for r, p in self._conn.execute(query, chunk))
        return found

    def get(self, passage_id: str) -> Passage | None:
        with self._lock:
            query = f"SELECT {_COLUMNS} FROM passages WHERE passage_id = ?"
            row = self._conn.execute(query, (passage_id,)).fetchone()
        return _passage(row) if row else None

    def get_rows(self, row_ids: Iterable[int]) -> dict[int, Passage]:
        """``{row_id: Passage}`` for the given row ids (missing ids are left out)."""
        out: dict[int, Passage] = {}
        with self._lock:
            for chunk in _chunks([int(r) for r in row_ids]):
                query = f"SELECT {_COLUMNS} FROM passages WHERE row_id IN ({_marks(chunk)})"
                out.update((int(row[0]), _passage(row)) for row in self._conn.execute(query, chunk))
        return out

    def iter_passages(self, page_size: int = 1000) -> Iterator[Passage]:
        """Every passage in insertion order (read page by page, so the store may change between pages)."""
        last = -1
        query = f"SELECT {_COLUMNS} FROM passages WHERE row_id > ? ORDER BY row_id LIMIT ?"
        while True:
            with self._lock:
                rows = self._conn.execute(query, (last, page_size)).fetchall()
            if not rows:
                return
            for row in rows:
                yield _passage(row)
            last = int(rows[-1][0])

    def row_ids(self) -> np.ndarray:
        import numpy as np

        with self._lock:
            rows = self._conn.execute("SELECT row_id FROM passages ORDER BY row_id").fetchall()
        return np.asarray([r[0] for r in rows], dtype=np.int64)

    def vectors(self, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """``(row_ids [n] int64, vectors [n, dim] float32)`` of every passage, for rebuilding the index."""
        import numpy as np

        with self._lock:
            rows = self._conn.execute("SELECT row_id, embedding FROM passages ORDER BY row_id").fetchall()
        ids = np.asarray([r[0] for r in rows], dtype=np.int64)
        vectors = np.zeros((len(rows), dim), dtype=np.float32)
        for i, (row_id, blob) in enumerate(rows):
            if not isinstance(blob, bytes) or len(blob) % 4:
                raise IndexFormatError(
                    f"Passage store {str(self.path)!r} holds a damaged embedding for row {row_id} "
                    f"({type(blob).__name__} of {len(blob) if isinstance(blob, bytes) else 0} bytes); rebuild the "
                    "index with Retriever.create(..., overwrite=True)."
                )
            vector = np.frombuffer(blob, dtype="<f4")
            if vector.shape[0] != dim:
                raise IndexFormatError(
                    f"Passage store {str(self.path)!r} holds a vector of size {vector.shape[0]}, expected {dim}; "
                    "rebuild the index with Retriever.create(..., overwrite=True)."
                )
            vectors[i] = vector
        return ids, vectors

    def _next_row_id(self) -> int:
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'next_row_id'").fetchone()
        stored = int(row[0]) if row else 0
        highest = self._conn.execute("SELECT COALESCE(MAX(row_id) + 1, 0) FROM passages").fetchone()[0]
        return max(stored, int(highest))


def _passage(row: Sequence[object]) -> Passage:
    """A stored row as a :class:`Passage`; a row of the wrong types (a tampered store) is an IndexFormatError."""
    row_id, passage_id, doc_id, source, title, text, chunk_index, digest = row
    texts_ok = all(isinstance(v, str) for v in (passage_id, doc_id, title, text, digest))
    if not texts_ok or not (source is None or isinstance(source, str)) or type(chunk_index) is not int:
        raise IndexFormatError(
            f"Passage store row {row_id!r} is damaged (a text field is not text or chunk_index {chunk_index!r} is not "
            "an integer); rebuild the index with Retriever.create(..., overwrite=True)."
        )
    try:
        return Passage(passage_id=passage_id, doc_id=doc_id, title=title, text=text, source=source,
                       chunk_index=chunk_index, digest=digest)
    except BlockAttentionError as exc:
        raise IndexFormatError(
            f"Passage store row {row_id!r} is damaged ({exc}); rebuild the index with "
            "Retriever.create(..., overwrite=True)."
        ) from None


def _chunks(values: list, size: int = _MAX_PARAMS) -> Iterator[list]:
    for i in range(0, len(values), size):
        yield values[i : i + size]


def _marks(values: Sequence[object]) -> str:
    return ",".join("?" * len(values))


__all__ = ["STORE_FILE", "PassageStore"]
