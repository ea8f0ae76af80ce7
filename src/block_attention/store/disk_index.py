"""The index of the disk tier: an SQLite database of entries (key, document, size, recency) and LRU eviction.

Layout: ``<dir>/cache.db`` with table ``kv_entries(key, doc, size, access)`` and table ``kv_meta`` (schema
version). The index holds no file names (the value files, :mod:`block_attention.store.disk_files`, are named
from keys).

Contract (the disk tier, :mod:`block_attention.store.disk`, composes this with its value files):

* :class:`DiskIndex` opens (or creates) the database: ``PRAGMA mmap_size=0``, a rollback journal,
  ``synchronous=OFF``, ``quick_check``; a damaged database is moved aside once (``cache.db.damaged-<time>``) and
  a fresh one started; a database of another schema version, or an unusable directory, raises
  :class:`~block_attention.core.errors.StoreError` naming the fix. A directory or ``cache.db`` that is not
  writable (or that SQLite reports read-only) opens read-only (``read_only`` is True, one WARNING).
* ``cache.db`` and its journal/WAL/shm must be regular files: :meth:`DiskIndex.refuse_db_links` removes anything
  else under those names without following it, at open and before every statement.
* Text that does not decode as UTF-8 stays ``bytes`` (never a ``UnicodeDecodeError``); the ``doc`` column
  (:func:`doc_column`) is a hint only.
* Queries raise ``sqlite3.Error`` / ``OSError`` (:data:`DB_ERRORS`); the caller decides what a failure means.
  Methods named ``*_locked`` run inside :meth:`DiskIndex.transaction` with :attr:`DiskIndex.lock` held.
* :meth:`DiskIndex.evict_locked` removes least-recently-used rows exactly while the index volume (value sizes +
  SQLite files + 8 KiB for pages the commit may add) exceeds the budget, the protected key last of all (never).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from block_attention.core.errors import StoreError

logger = logging.getLogger("block_attention.store")

SCHEMA_VERSION = "1"
DB_NAME = "cache.db"
_DB_SIDE_FILES = ("", "-journal", "-wal", "-shm")
DB_ERRORS = (sqlite3.Error, UnicodeDecodeError)  # (SQLite's message about a damaged schema may not decode)
_BUSY_TIMEOUT_S = 30.0
_PAGE_MARGIN = 8192  # room for the index pages a commit may add after eviction ran

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS kv_meta (name TEXT PRIMARY KEY, value TEXT)",
    "CREATE TABLE IF NOT EXISTS kv_entries (key TEXT PRIMARY KEY, doc TEXT NOT NULL, size INTEGER NOT NULL, "
    "access INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS kv_entries_access ON kv_entries (access)",
    "CREATE INDEX IF NOT EXISTS kv_entries_doc ON kv_entries (doc)",
)


def doc_column(doc_id: str) -> str:
    """The ``doc`` column value of a document id (a hint: an entry belongs to the document its key names)."""
    return json.dumps(doc_id)  # ASCII even for lone surrogates


class DiskIndex:
    """The SQLite index of one cache directory (see the module docstring)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.lock = threading.RLock()
        self.read_only = False
        self.con: Any = self._open()  # (Any: tests put a failing connection in its place)

    # -- transactions ----------------------------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[None]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``; any failure, the commit's included, rolls back and re-raises."""
        self.refuse_db_links()
        self.con.execute("BEGIN IMMEDIATE")
        try:
            yield
            self.con.execute("COMMIT")
        except BaseException:
            try:
                self.con.execute("ROLLBACK")
            except DB_ERRORS:
                pass
            raise

    # -- single statements (each takes the lock) -------------------------------------------------------------
    def size_row(self, skey: str) -> tuple[Any, ...] | None:
        """The ``(size,)`` row of ``skey`` (the size unvalidated), or None when there is none."""
        with self.lock:
            self.refuse_db_links()
            return self.con.execute("SELECT size FROM kv_entries WHERE key = ?", (skey,)).fetchone()

    def has(self, skey: str) -> bool:
        """Whether a row for ``skey`` exists."""
        with self.lock:
            self.refuse_db_links()
            return self.con.execute("SELECT 1 FROM kv_entries WHERE key = ?", (skey,)).fetchone() is not None

    def count(self) -> int:
        with self.lock:
            self.refuse_db_links()
            return int(self.con.execute("SELECT COUNT(*) FROM kv_entries").fetchone()[0])

    def touch(self, skey: str) -> None:
        """Make ``skey`` the most recently used entry (best effort: a busy index skips it)."""
        with self.lock:
            try:
                self.con.execute("UPDATE kv_entries SET access = (SELECT COALESCE(MAX(access), 0) + 1 "
                                 "FROM kv_entries) WHERE key = ?", (skey,))
            except DB_ERRORS as exc:
                logger.debug("KV disk tier recency update of %s skipped (%r).", skey, exc)

    # -- inside a transaction --------------------------------------------------------------------------------
    def insert_locked(self, skey: str, doc_id: str, size: int) -> None:
        """Insert or replace ``skey``'s row as the most recently used entry."""
        self.con.execute(
            "INSERT OR REPLACE INTO kv_entries (key, doc, size, access) VALUES "
            "(?, ?, ?, (SELECT COALESCE(MAX(access), 0) + 1 FROM kv_entries))",
            (skey, doc_column(doc_id), size),
        )

    def rowids_locked(self, skey: str) -> list[int]:
        return [rowid for (rowid,) in self.con.execute("SELECT rowid FROM kv_entries WHERE key = ?",
                                                         (skey,)).fetchall()]

    def doc_rows_locked(self, doc_id: str) -> list[tuple[Any, Any]]:
        """``(rowid, key)`` of every row that may belong to ``doc_id`` (by its doc column or its key text)."""
        return self.con.execute("SELECT rowid, key FROM kv_entries WHERE doc = ? OR instr(key, ?) > 0",
                                (doc_column(doc_id), f"|{doc_column(doc_id)}|")).fetchall()

    def all_rows_locked(self) -> list[tuple[Any, Any, Any, Any]]:
        """``(rowid, key, doc, size)`` of every row."""
        return self.con.execute("SELECT rowid, key, doc, size FROM kv_entries").fetchall()

    def delete_locked(self, rowid: int) -> None:
        """Delete a row by rowid (its key may not even decode)."""
        self.con.execute("DELETE FROM kv_entries WHERE rowid = ?", (rowid,))

    def clear_locked(self) -> int:
        """Delete every row; return how many there were."""
        (count,) = self.con.execute("SELECT COUNT(*) FROM kv_entries").fetchone()
        self.con.execute("DELETE FROM kv_entries")
        return int(count)

    def evict_locked(self, protect: str, max_bytes: int, removed: Callable[[int, Any], None]) -> None:
        """Evict least-recently-used rows, exactly while over ``max_bytes``, never ``protect``; each evicted row is
        handed to ``removed(rowid, key)``, which deletes it (and its value file)."""
        (values,) = self.con.execute(
            "SELECT COALESCE(SUM(CASE WHEN typeof(size) = 'integer' AND size > 0 THEN size ELSE 0 END), 0) "
            "FROM kv_entries").fetchone()
        total = int(values) + self.db_bytes(transient=False) + _PAGE_MARGIN
        while total > max_bytes:
            batch = self.con.execute("SELECT rowid, key, size FROM kv_entries WHERE key IS NOT ? "
                                     "ORDER BY access ASC LIMIT 32", (protect,)).fetchall()
            if not batch:
                return
            for rowid, skey, size in batch:
                if total <= max_bytes:
                    return
                removed(rowid, skey)
                total -= size if type(size) is int and size > 0 else 0

    # -- files of the index ----------------------------------------------------------------------------------
    def refuse_db_links(self) -> None:
        """``cache.db`` and its journal/WAL/shm must be regular files of this directory; anything else there (a link,
        a FIFO, a directory) is removed without following it, before SQLite can open it. A removal that fails is a
        :class:`StoreError` at open and an ``OSError`` (a miss, a skipped write) afterwards.
        """
        for suffix in _DB_SIDE_FILES:
            path = os.path.join(self.directory, DB_NAME + suffix)
            try:
                mode = os.lstat(path).st_mode
            except FileNotFoundError:
                continue
            if stat.S_ISREG(mode):
                continue
            what = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file"
            try:
                os.rmdir(path) if stat.S_ISDIR(mode) else os.unlink(path)
            except OSError as exc:
                raise OSError(exc.errno, f"{path} is {what} and could not be removed ({exc.strerror})") from None
            logger.warning("KV disk tier removed %s: it is %s, never followed%s.", path, what,
                           "; the index starts empty" if suffix == "" else "")

    def db_bytes(self, transient: bool = True) -> int:
        """Bytes of the SQLite files; ``transient=False`` leaves out the rollback journal of the open transaction."""
        total = 0
        for suffix in _DB_SIDE_FILES if transient else ("", "-wal"):
            try:
                st = os.lstat(os.path.join(self.directory, DB_NAME + suffix))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
        return total

    def close(self) -> None:
        try:
            self.con.close()
        except DB_ERRORS as exc:
            logger.warning("Closing the KV disk index failed (%r).", exc)

    # -- opening ---------------------------------------------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        try:
            os.makedirs(self.directory, exist_ok=True)
        except OSError as exc:
            raise _store_error(self.directory, exc) from exc
        db = os.path.join(self.directory, DB_NAME)
        try:
            self.refuse_db_links()  # before anything follows a planted link (os.access and SQLite would)
        except OSError as exc:
            raise StoreError(
                f"The KV disk directory {self.directory!r} holds an index file this library never follows "
                f"({exc.strerror}). Remove it, or point StoreConfig.disk_dir at another directory."
            ) from None
        if not _writable(self.directory, db):
            return self._open_read_only(db, "the directory or its cache.db is not writable")
        try:
            return self._connect(db)
        except UnicodeDecodeError:
            pass  # SQLite's message about the schema is not UTF-8: the schema text is damaged
        except sqlite3.DatabaseError as exc:
            if _is_read_only_error(exc):
                return self._open_read_only(db, str(exc))
            if isinstance(exc, sqlite3.OperationalError) or not os.path.isfile(db):
                raise _store_error(self.directory, exc) from exc
        aside = f"{db}.damaged-{int(time.time())}"
        os.replace(db, aside)
        for suffix in _DB_SIDE_FILES[1:]:
            try:
                os.unlink(db + suffix)
            except OSError:
                pass
        logger.warning("KV disk cache database %s was damaged; moved it to %s and started an empty cache "
                       "(its entries will be recomputed).", db, aside)
        try:
            return self._connect(db)
        except DB_ERRORS as exc:
            raise _store_error(self.directory, exc) from exc

    def _connect(self, db: str) -> sqlite3.Connection:
        con = sqlite3.connect(db, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        con.text_factory = _text
        try:
            con.execute("PRAGMA mmap_size = 0")
            mode = con.execute("PRAGMA journal_mode").fetchone()[0]
            if str(mode).lower() != "delete":
                try:
                    con.execute("PRAGMA journal_mode = DELETE")
                except sqlite3.OperationalError as exc:  # another process holds a WAL database open
                    logger.info("KV disk index keeps journal mode %s (%r).", mode, exc)
            con.execute("PRAGMA synchronous = OFF")  # see "Durability" in the disk tier's docstring
            check = con.execute("PRAGMA quick_check").fetchone()
            if check is None or check[0] != "ok":  # damaged pages: let the caller move the database aside
                raise sqlite3.DatabaseError(f"database disk image is malformed (quick_check: {check!r})")
            con.execute("BEGIN IMMEDIATE")
            try:
                for statement in _SCHEMA:
                    con.execute(statement)
                con.execute("INSERT OR IGNORE INTO kv_meta (name, value) VALUES ('schema', ?)", (SCHEMA_VERSION,))
                _check_schema(con, self.directory)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        except BaseException:
            con.close()
            raise
        return con

    def _open_read_only(self, db: str, why: str) -> sqlite3.Connection:
        if not os.path.isfile(db):
            raise StoreError(
                f"The KV disk directory {self.directory!r} is read-only and holds no cache index ({why}). Make "
                "it writable, or pass disk_dir=None to disable the disk tier."
            )
        try:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=_BUSY_TIMEOUT_S, isolation_level=None,
                                  check_same_thread=False)
            con.text_factory = _text
            con.execute("PRAGMA mmap_size = 0")
            _check_schema(con, self.directory)
            con.execute("SELECT COUNT(*) FROM kv_entries").fetchone()
        except DB_ERRORS as exc:
            raise StoreError(
                f"The KV disk directory {self.directory!r} is read-only ({why}) and its cache.db cannot be read "
                f"({exc}). Make it writable, or pass disk_dir=None to disable the disk tier."
            ) from exc
        self.read_only = True
        logger.warning("KV disk cache %s is read-only (%s): serving hits, skipping writes.", self.directory, why)
        return con


def _text(raw: bytes) -> str | bytes:
    """SQLite TEXT as ``str``; text that is not valid UTF-8 (a damaged or forged row) stays ``bytes``, never raises."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return bytes(raw)


def _check_schema(con: sqlite3.Connection, directory: str) -> None:
    row = con.execute("SELECT value FROM kv_meta WHERE name = 'schema'").fetchone()
    if row is None or row[0] != SCHEMA_VERSION:
        raise StoreError(
            f"The KV disk directory {directory!r} holds a cache index of schema {row[0] if row else None!r}; this "
            f"library reads schema {SCHEMA_VERSION!r}. Point StoreConfig.disk_dir at another directory or delete "
            "this one (its entries are only a cache)."
        )


def _store_error(directory: str, exc: BaseException) -> StoreError:
    return StoreError(
        f"The KV store could not open its disk directory {directory!r} ({exc!r}). Pass a writable "
        "StoreConfig.disk_dir, or disk_dir=None to disable the disk tier."
    )


def _writable(directory: str, db: str) -> bool:
    if not os.access(directory, os.W_OK | os.X_OK):
        return False
    return not os.path.exists(db) or os.access(db, os.R_OK | os.W_OK)


def _is_read_only_error(exc: sqlite3.Error) -> bool:
    text = str(exc).lower()
    return "readonly" in text or "read-only" in text


__all__ = ["DB_ERRORS", "DB_NAME", "SCHEMA_VERSION", "DiskIndex", "doc_column"]
