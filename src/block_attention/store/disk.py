"""Disk tier of the KV store: an SQLite index plus one value file per entry, every path derived by the library.

Layout of a cache directory::

    <dir>/cache.db                      SQLite index: table kv_entries(key, doc, size, access), table kv_meta
    <dir>/v/<2 hex>/<40 hex>.bakv       one serialized entry (:func:`serialize.dumps`), named from the key's digest

Contract:

* **Paths come from keys, never from the database.** A value file's name is ``blake2b(key)`` computed here; the
  index holds no file names. Files are opened relative to directory descriptors with ``O_NOFOLLOW`` and
  ``O_NONBLOCK``; anything that is not a regular file of exactly the indexed size (a symlink, a FIFO, a device, a
  directory, a file of another size) is refused, counted in ``corrupt_dropped``, and its row and directory entry
  are removed without following it. ``cache.db`` and its journal/WAL/shm must be regular files too: a link or
  other special file under those names is removed before SQLite (or ``os.access``) could follow it, at open and
  before every statement (a read-only directory where it cannot be removed is a :class:`StoreError`). Nothing
  outside ``<dir>`` is ever read, written or deleted.
* **The index is not trusted.** Text that does not decode as UTF-8 (a damaged schema, forged rows) is damage, never
  a ``UnicodeDecodeError``: rows are removed by ``rowid``. The ``doc`` column is only a hint: an entry belongs to
  the document its key names (:meth:`CacheKey.from_str`), which ``delete_doc`` uses; the sweep drops rows whose
  ``doc`` disagrees with their key.
* **No memory-mapped SQLite** (``PRAGMA mmap_size=0``) and a rollback journal: truncating or damaging
  ``cache.db`` under a live process turns into ``sqlite3`` errors (misses, skipped writes), never ``SIGBUS``.
* **Crash-consistent writes.** A value is written to ``<digest>.<pid>.<random>.tmp``, fsynced, then renamed over
  its final name and indexed in one ``BEGIN IMMEDIATE`` transaction; if the insert, the eviction or the commit
  fails, the transaction is rolled back and the renamed file unlinked (no file outlives its row). Opening a tier
  sweeps temporary files of dead writers (or older than an hour), value files without an index row and rows
  without a valid value file.
* **Durability.** Value files are fsynced before they are renamed into place; the index runs with
  ``synchronous=OFF`` (a recency update costs no fsync). A killed process cannot damage either (SQLite's journal
  rolls an interrupted transaction back); a power loss can lose index rows (their files are swept as orphans)
  or damage the index (detected by ``quick_check`` at open and moved aside): a cache loses entries, never
  serves wrong ones.
* **Exact LRU bound.** After each write, least-recently-used entries are evicted one by one, exactly while the
  index volume (value sizes + SQLite files + 8 KiB for pages the commit may add) exceeds ``max_bytes``; the entry just written is evicted last (only
  if it alone is over budget, which :meth:`put_bytes` refuses up front). :meth:`volume` measures what is really
  on disk: SQLite files (journal/WAL included), value files, temporary files.
* **Reads never crash.** A corrupt, forged or refused entry is dropped, logged at WARNING on
  ``block_attention.store`` and counted; an ``OSError`` or SQLite error is logged and reported as a miss; a
  failed write is logged and skipped. A tier with ``codec="none"`` reads exact entries only: a lossy (int8) entry
  is a miss for it. Nothing is ever pickled or unpickled.
* **Opening.** An unusable directory or a database of another schema version raises
  :class:`~block_attention.core.errors.StoreError` naming the fix. A database that SQLite reports as damaged (not
  locked, not unreadable for permissions) is moved aside once (``cache.db.damaged-<time>``) and a fresh one
  started. Unknown ``kv_meta`` rows are ignored.
* **Read-only mode.** If the directory or ``cache.db`` is not writable (or SQLite says the database is
  read-only), the tier opens read-only: hits are served, writes, deletes, recency updates and sweeps are skipped
  (``read_only`` is True and one WARNING says so). A read-only directory without a usable index is a
  :class:`StoreError`.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import secrets
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import block_attention.store.serialize as serialize
from block_attention.core.errors import StoreError
from block_attention.core.kv import BlockKV
from block_attention.store.keys import CacheKey
from block_attention.store.standard import DISK
from block_attention.store.tier import KVTier, TierStats

logger = logging.getLogger("block_attention.store")

SCHEMA_VERSION = "1"
DB_NAME = "cache.db"
VALUE_DIR = "v"
VALUE_SUFFIX = ".bakv"
_DB_SIDE_FILES = ("", "-journal", "-wal", "-shm")
_DB_ERRORS = (sqlite3.Error, UnicodeDecodeError)  # (SQLite's message about a damaged schema may not decode)
_IO_ERRORS = (OSError, *_DB_ERRORS)
_VALUE_NAME = re.compile(r"^[0-9a-f]{40}\.bakv$")
_TMP_NAME = re.compile(r"^([0-9a-f]{40})\.(\d+)\.[0-9a-f]+\.tmp$")
_TMP_MAX_AGE_S = 3600.0
_BUSY_TIMEOUT_S = 30.0
_PAGE_MARGIN = 8192  # room for the index pages a commit may add after eviction ran
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS kv_meta (name TEXT PRIMARY KEY, value TEXT)",
    "CREATE TABLE IF NOT EXISTS kv_entries (key TEXT PRIMARY KEY, doc TEXT NOT NULL, size INTEGER NOT NULL, "
    "access INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS kv_entries_access ON kv_entries (access)",
    "CREATE INDEX IF NOT EXISTS kv_entries_doc ON kv_entries (doc)",
)


class _Refused(Exception):
    """A value file that must not be read (not a regular file, wrong size, a link)."""


def value_digest(skey: str) -> str:
    """The 40-hex digest naming the value file of a flat cache key (``CacheKey.as_str()``)."""
    return hashlib.blake2b(skey.encode("utf-8", "surrogatepass"), digest_size=20).hexdigest()


def value_relpath(key: CacheKey) -> str:
    """Path of ``key``'s value file relative to the cache directory (``v/<2 hex>/<digest>.bakv``)."""
    digest = value_digest(key.as_str())
    return os.path.join(VALUE_DIR, digest[:2], digest + VALUE_SUFFIX)


def _doc_column(doc_id: str) -> str:
    return json.dumps(doc_id)  # ASCII even for lone surrogates


class DiskTier(KVTier):
    """Size-bounded LRU disk cache of serialized block KV, keyed by :class:`CacheKey` (see the module docstring)."""

    name = DISK

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int, *, codec: str = "none") -> None:
        self._codec = codec  # how put() serializes (store/codec.py); get() reads any codec, "none" only exact ones
        self._directory = os.path.abspath(os.fspath(directory))
        self._max_bytes = max_bytes
        self._corrupt_dropped = 0
        self._evictions = 0
        self._lock = threading.RLock()
        self._closed = False
        self._read_only = False
        self._con = self._open()
        if not self._read_only:
            self._sweep()

    # -- properties ------------------------------------------------------------------------------------------
    @property
    def directory(self) -> str:
        return self._directory

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    @property
    def read_only(self) -> bool:
        """True when the directory or database is not writable: hits are served, writes are skipped."""
        return self._read_only

    @property
    def corrupt_dropped(self) -> int:
        """Entries dropped because they failed validation or were refused (since the last reset)."""
        with self._lock:
            return self._corrupt_dropped

    @property
    def evictions(self) -> int:
        with self._lock:
            return self._evictions

    def reset_counters(self) -> None:
        with self._lock:
            self._corrupt_dropped = 0
            self._evictions = 0

    # -- reads -----------------------------------------------------------------------------------------------
    def get_bytes(self, key: CacheKey) -> bytes | None:
        """Raw entry bytes for ``key`` (unvalidated), or None on a miss, refused entry or I/O error."""
        skey = key.as_str()
        digest = value_digest(skey)
        with self._lock:
            try:
                self._refuse_db_links()
                row = self._con.execute("SELECT size FROM kv_entries WHERE key = ?", (skey,)).fetchone()
            except _IO_ERRORS as exc:
                logger.warning("KV disk tier read of %s failed (%r); treating it as a miss.", skey, exc)
                return None
        if row is None:
            return None
        size = row[0]
        if type(size) is not int or not serialize.HEADER_SIZE <= size <= self._max_bytes:
            self.drop_corrupt(key, f"its index row has an invalid size {size!r}")
            return None
        try:
            data = self._read_value(digest, size)
        except _Refused as exc:
            self.drop_corrupt(key, str(exc))
            return None
        except FileNotFoundError:
            if self._delete_row(skey):  # (no row left: another process evicted it meanwhile, a plain miss)
                logger.warning("KV disk tier value file of %s is missing; dropped its index row (it will be "
                               "recomputed).", skey)
            return None
        except OSError as exc:
            logger.warning("KV disk tier read of %s failed (%r); treating it as a miss.", skey, exc)
            return None
        self._touch(skey)
        return data

    def get(self, key: CacheKey) -> BlockKV | None:
        """Validated entry for ``key`` (CPU tensors), or None; a corrupt entry is dropped and counted."""
        return serialize.loads_or_drop(key, self.get_bytes(key), self.drop_corrupt, exact=self._codec == "none")

    def contains(self, key: CacheKey) -> bool:
        """Whether an index row exists for ``key`` (not validated; does not touch recency)."""
        with self._lock:
            try:
                self._refuse_db_links()
                row = self._con.execute("SELECT 1 FROM kv_entries WHERE key = ?", (key.as_str(),)).fetchone()
            except _IO_ERRORS as exc:
                logger.warning("KV disk tier lookup of %s failed (%r); treating it as absent.", key.as_str(), exc)
                return False
        return row is not None

    # -- writes ----------------------------------------------------------------------------------------------
    def put_bytes(self, key: CacheKey, data: bytes) -> bool:
        """Write serialized bytes for ``key``; return whether written (False if too large, read-only or on error)."""
        skey = key.as_str()
        if self._read_only:
            return False
        if len(data) > self._max_bytes:
            logger.warning(
                "KV entry %s (%d bytes) is larger than the disk tier budget (%d bytes); not writing it.",
                skey, len(data), self._max_bytes,
            )
            return False
        digest = value_digest(skey)
        tmp = f"{digest}.{os.getpid()}.{secrets.token_hex(6)}.tmp"
        final = digest + VALUE_SUFFIX
        try:
            with self._subdir(digest, create=True) as sub:
                placed = False
                try:
                    _write_file(sub, tmp, data)
                    with self._lock, self._transaction():
                        os.replace(tmp, final, src_dir_fd=sub, dst_dir_fd=sub)
                        placed = True
                        self._con.execute(
                            "INSERT OR REPLACE INTO kv_entries (key, doc, size, access) VALUES "
                            "(?, ?, ?, (SELECT COALESCE(MAX(access), 0) + 1 FROM kv_entries))",
                            (skey, _doc_column(key.doc_id), len(data)),
                        )
                        self._evict_locked(skey)
                except BaseException:
                    if placed:  # rolled back: the file must not outlive its row (the sweep reclaims it otherwise)
                        _unlink_quietly(sub, final)
                    raise
                finally:
                    _unlink_quietly(sub, tmp)
        except _IO_ERRORS as exc:
            logger.warning("KV disk tier write of %s failed (%r); skipping it.", skey, exc)
            return False
        return True

    def put(self, key: CacheKey, kv: BlockKV) -> bool:
        """Serialize ``kv`` (moved to CPU) and write it."""
        return self.put_bytes(key, serialize.dumps(key, kv, self._codec))  # type: ignore[arg-type]

    def delete(self, key: CacheKey) -> bool:
        return self._delete_row(key.as_str())

    def delete_doc(self, doc_id: str) -> int:
        """Remove every entry of ``doc_id`` (all fingerprints); return how many were removed."""
        if self._read_only:
            return 0
        try:
            with self._lock, self._transaction():
                # the doc column is a hint only: a row is the document's when its key names it
                rows = self._con.execute("SELECT rowid, key FROM kv_entries WHERE doc = ? OR instr(key, ?) > 0",
                                         (_doc_column(doc_id), f"|{_doc_column(doc_id)}|")).fetchall()
                removed = 0
                for rowid, skey in rows:
                    parsed = CacheKey.from_str(skey)
                    if parsed is None or parsed.doc_id == doc_id:  # (a key naming nothing is junk: removed too)
                        self._remove_locked(rowid, skey)
                        removed += parsed is not None
            return removed
        except _IO_ERRORS as exc:
            logger.warning("KV disk tier delete of document %r failed (%r).", doc_id, exc)
            return 0

    def drop_corrupt(self, key: CacheKey, reason: str) -> None:
        """Delete a corrupt entry, log it at WARNING and count it."""
        with self._lock:
            self._corrupt_dropped += 1
        logger.warning("Dropping corrupt KV cache entry %s: %s. It will be recomputed.", key.as_str(), reason)
        self.delete(key)

    def clear(self) -> int:
        if self._read_only:
            return 0
        try:
            with self._lock, self._transaction():
                (count,) = self._con.execute("SELECT COUNT(*) FROM kv_entries").fetchone()
                self._con.execute("DELETE FROM kv_entries")
                for digest in self._scan_values():  # no row is left, so every value file goes (orphans too)
                    self._unlink_entry(digest)
            return int(count)
        except _IO_ERRORS as exc:
            logger.warning("KV disk tier clear failed (%r).", exc)
            return 0

    # -- sizes -----------------------------------------------------------------------------------------------
    def volume(self) -> int:
        """Bytes this tier really keeps on disk: SQLite files (journal/WAL/shm included), value and temporary files."""
        total = self._db_bytes()
        vdir = os.path.join(self._directory, VALUE_DIR)
        try:
            if not stat.S_ISDIR(os.lstat(vdir).st_mode):
                return total
            with os.scandir(vdir) as top:
                for sub in top:
                    if not sub.is_dir(follow_symlinks=False):
                        continue
                    with os.scandir(sub.path) as files:
                        total += sum(f.stat(follow_symlinks=False).st_size for f in files
                                     if f.is_file(follow_symlinks=False))
        except FileNotFoundError:
            pass
        except OSError as exc:
            logger.warning("KV disk tier size query failed (%r).", exc)
        return total

    def stats(self) -> TierStats:
        return TierStats(self.name, len(self), self.volume(), evictions=self.evictions,
                         corrupt_dropped=self.corrupt_dropped)

    def __len__(self) -> int:
        with self._lock:
            try:
                self._refuse_db_links()
                return int(self._con.execute("SELECT COUNT(*) FROM kv_entries").fetchone()[0])
            except _IO_ERRORS as exc:
                logger.warning("KV disk tier count query failed (%r).", exc)
                return 0

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._con.close()
            except _DB_ERRORS as exc:
                logger.warning("Closing the KV disk index failed (%r).", exc)

    # -- internals: files ------------------------------------------------------------------------------------
    @contextmanager
    def _subdir(self, digest: str, create: bool = False) -> Iterator[int]:
        """A descriptor of ``<dir>/v/<digest[:2]>``, reached without following any link."""
        root = os.open(self._directory, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
        try:
            if create:
                _mkdir_quietly(VALUE_DIR, root)
            vdir = os.open(VALUE_DIR, _DIR_FLAGS, dir_fd=root)
            try:
                if create:
                    _mkdir_quietly(digest[:2], vdir)
                sub = os.open(digest[:2], _DIR_FLAGS, dir_fd=vdir)
            finally:
                os.close(vdir)
        finally:
            os.close(root)
        try:
            yield sub
        finally:
            os.close(sub)

    def _read_value(self, digest: str, size: int) -> bytes:
        try:
            with self._subdir(digest) as sub:
                try:
                    fd = os.open(digest + VALUE_SUFFIX, _READ_FLAGS, dir_fd=sub)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.EMLINK, errno.ENXIO, errno.EISDIR):
                        self._unlink_entry(digest)
                        raise _Refused(f"its value file is not a regular file ({exc.strerror})") from None
                    raise
                try:
                    st = os.fstat(fd)
                    if not stat.S_ISREG(st.st_mode):
                        raise _Refused("its value file is not a regular file")
                    if st.st_size != size:
                        raise _Refused(f"its value file has {st.st_size} bytes, the index says {size}")
                    return _read_exactly(fd, size)
                finally:
                    os.close(fd)
        except NotADirectoryError:
            raise _Refused("its value directory is not a plain directory") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _Refused("its value directory is a symbolic link") from None
            raise

    def _unlink_entry(self, digest: str) -> None:
        """Remove the directory entry of a value file (never following it); best effort."""
        try:
            with self._subdir(digest) as sub:
                _unlink_quietly(sub, digest + VALUE_SUFFIX)
        except OSError:
            pass

    # -- internals: index ------------------------------------------------------------------------------------
    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``; any failure, the commit's included, rolls back and re-raises."""
        self._refuse_db_links()
        self._con.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._con.execute("COMMIT")
        except BaseException:
            try:
                self._con.execute("ROLLBACK")
            except _DB_ERRORS:
                pass
            raise

    def _remove_locked(self, rowid: int, skey: object) -> None:
        """Delete a row (by rowid: its key may not even decode) and its value file (in a transaction, lock held)."""
        self._con.execute("DELETE FROM kv_entries WHERE rowid = ?", (rowid,))
        if isinstance(skey, str):
            self._unlink_entry(value_digest(skey))

    def _refuse_db_links(self) -> None:
        """``cache.db`` and its journal/WAL/shm must be regular files of this directory; anything else there (a link,
        a FIFO, a directory) is removed without following it, before SQLite can open it. A removal that fails is a
        :class:`StoreError` at open and an ``OSError`` (a miss, a skipped write) afterwards.
        """
        for suffix in _DB_SIDE_FILES:
            path = os.path.join(self._directory, DB_NAME + suffix)
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

    def _delete_row(self, skey: str) -> bool:
        if self._read_only:
            return False
        try:
            with self._lock, self._transaction():
                rows = self._con.execute("SELECT rowid FROM kv_entries WHERE key = ?", (skey,)).fetchall()
                for (rowid,) in rows:
                    self._remove_locked(rowid, skey)
                if not rows:
                    self._unlink_entry(value_digest(skey))  # (an orphan of this key: never worth keeping)
            return bool(rows)
        except _IO_ERRORS as exc:
            logger.warning("KV disk tier delete of %s failed (%r).", skey, exc)
            return False

    def _touch(self, skey: str) -> None:
        """Make ``skey`` the most recently used entry (best effort: a busy or read-only index skips it)."""
        if self._read_only:
            return
        with self._lock:
            try:
                self._con.execute("UPDATE kv_entries SET access = (SELECT COALESCE(MAX(access), 0) + 1 "
                                  "FROM kv_entries) WHERE key = ?", (skey,))
            except _DB_ERRORS as exc:
                logger.debug("KV disk tier recency update of %s skipped (%r).", skey, exc)

    def _db_bytes(self, transient: bool = True) -> int:
        """Bytes of the SQLite files; ``transient=False`` leaves out the rollback journal of the open transaction."""
        total = 0
        for suffix in _DB_SIDE_FILES if transient else ("", "-wal"):
            try:
                st = os.lstat(os.path.join(self._directory, DB_NAME + suffix))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
        return total

    def _evict_locked(self, protect: str) -> None:
        """Evict least-recently-used entries, exactly while over budget (inside the write transaction)."""
        (values,) = self._con.execute(
            "SELECT COALESCE(SUM(CASE WHEN typeof(size) = 'integer' AND size > 0 THEN size ELSE 0 END), 0) "
            "FROM kv_entries").fetchone()
        total = int(values) + self._db_bytes(transient=False) + _PAGE_MARGIN
        while total > self._max_bytes:
            batch = self._con.execute("SELECT rowid, key, size FROM kv_entries WHERE key IS NOT ? "
                                      "ORDER BY access ASC LIMIT 32", (protect,)).fetchall()
            if not batch:
                return
            for rowid, skey, size in batch:
                if total <= self._max_bytes:
                    return
                self._remove_locked(rowid, skey)
                self._evictions += 1
                total -= size if type(size) is int and size > 0 else 0

    def _open(self) -> sqlite3.Connection:
        try:
            os.makedirs(self._directory, exist_ok=True)
        except OSError as exc:
            raise _store_error(self._directory, exc) from exc
        db = os.path.join(self._directory, DB_NAME)
        try:
            self._refuse_db_links()  # before anything follows a planted link (os.access and SQLite would)
        except OSError as exc:
            raise StoreError(
                f"The KV disk directory {self._directory!r} holds an index file this library never follows "
                f"({exc.strerror}). Remove it, or point StoreConfig.disk_dir at another directory."
            ) from None
        if not _writable(self._directory, db):
            return self._open_read_only(db, "the directory or its cache.db is not writable")
        try:
            return self._connect(db)
        except UnicodeDecodeError:
            pass  # SQLite's message about the schema is not UTF-8: the schema text is damaged
        except sqlite3.DatabaseError as exc:
            if _is_read_only_error(exc):
                return self._open_read_only(db, str(exc))
            if isinstance(exc, sqlite3.OperationalError) or not os.path.isfile(db):
                raise _store_error(self._directory, exc) from exc
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
        except _DB_ERRORS as exc:
            raise _store_error(self._directory, exc) from exc

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
            con.execute("PRAGMA synchronous = OFF")  # see "Durability" in the module docstring
            check = con.execute("PRAGMA quick_check").fetchone()
            if check is None or check[0] != "ok":  # damaged pages: let the caller move the database aside
                raise sqlite3.DatabaseError(f"database disk image is malformed (quick_check: {check!r})")
            con.execute("BEGIN IMMEDIATE")
            try:
                for statement in _SCHEMA:
                    con.execute(statement)
                con.execute("INSERT OR IGNORE INTO kv_meta (name, value) VALUES ('schema', ?)", (SCHEMA_VERSION,))
                _check_schema(con, self._directory)
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
                f"The KV disk directory {self._directory!r} is read-only and holds no cache index ({why}). Make "
                "it writable, or pass disk_dir=None to disable the disk tier."
            )
        try:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=_BUSY_TIMEOUT_S, isolation_level=None,
                                  check_same_thread=False)
            con.text_factory = _text
            con.execute("PRAGMA mmap_size = 0")
            _check_schema(con, self._directory)
            con.execute("SELECT COUNT(*) FROM kv_entries").fetchone()
        except _DB_ERRORS as exc:
            raise StoreError(
                f"The KV disk directory {self._directory!r} is read-only ({why}) and its cache.db cannot be read "
                f"({exc}). Make it writable, or pass disk_dir=None to disable the disk tier."
            ) from exc
        self._read_only = True
        logger.warning("KV disk cache %s is read-only (%s): serving hits, skipping writes.", self._directory, why)
        return con

    def _sweep(self) -> None:
        """Remove temporary files of dead writers, value files without a row and rows without a valid file."""
        try:
            with self._lock, self._transaction():
                files = self._scan_values()
                keep: set[str] = set()
                rows = self._con.execute("SELECT rowid, key, doc, size FROM kv_entries").fetchall()
                for rowid, skey, doc, size in rows:
                    parsed = CacheKey.from_str(skey)  # None: not a key this library writes (junk, undecodable)
                    digest = value_digest(skey) if parsed is not None else None
                    doc_ok = parsed is not None and doc == _doc_column(parsed.doc_id)
                    if digest is not None and doc_ok and type(size) is int and files.get(digest) == size \
                            and digest not in keep:
                        keep.add(digest)
                        continue
                    self._con.execute("DELETE FROM kv_entries WHERE rowid = ?", (rowid,))
                    if digest is not None and digest not in files:
                        logger.warning("KV disk tier dropped the index row of %r: its value file is missing.", skey)
                        continue
                    self._corrupt_dropped += 1
                    why = "its key is not one this library writes" if parsed is None else (
                        f"its index row names document {doc!r}, its key another" if not doc_ok else
                        f"its index row (size {size!r}) does not match its value file ({files.get(digest or '')!r} "
                        "bytes)")
                    logger.warning("Dropping corrupt KV cache entry %r: %s. It will be recomputed.", skey, why)
                for digest in set(files) - keep:
                    self._unlink_entry(digest)
                    logger.info("KV disk tier removed orphan value file %s%s.", digest, VALUE_SUFFIX)
        except _IO_ERRORS as exc:
            logger.warning("KV disk tier sweep of %s failed (%r); continuing without it.", self._directory, exc)

    def _scan_values(self) -> dict[str, int]:
        """Digest -> size of every value file; removes dead temporary files and foreign entries on the way."""
        found: dict[str, int] = {}
        vdir = os.path.join(self._directory, VALUE_DIR)
        try:
            if not stat.S_ISDIR(os.lstat(vdir).st_mode):  # a link (or file) named v/: removed, never followed
                _remove_path(vdir)
                logger.warning("KV disk tier removed foreign entry %s.", vdir)
                return found
            top = list(os.scandir(vdir))
        except FileNotFoundError:
            return found
        now = time.time()
        for sub in top:
            if not sub.is_dir(follow_symlinks=False):
                _remove_path(sub.path)  # a file, link or FIFO where a value directory belongs: never followed
                logger.warning("KV disk tier removed foreign entry %s.", sub.path)
                continue
            if len(sub.name) != 2:
                logger.warning("KV disk tier ignores foreign directory %s.", sub.path)
                continue
            with os.scandir(sub.path) as entries:
                for entry in entries:
                    st = entry.stat(follow_symlinks=False)
                    tmp = _TMP_NAME.match(entry.name)
                    if _VALUE_NAME.match(entry.name) and stat.S_ISREG(st.st_mode) and entry.name[:2] == sub.name:
                        found[entry.name[: -len(VALUE_SUFFIX)]] = st.st_size
                    elif tmp and stat.S_ISREG(st.st_mode):
                        if not _pid_alive(int(tmp.group(2))) or now - st.st_mtime > _TMP_MAX_AGE_S:
                            _remove_path(entry.path)
                    elif stat.S_ISDIR(st.st_mode):
                        try:
                            os.rmdir(entry.path)  # only an empty one: nothing is removed recursively
                        except OSError:
                            logger.warning("KV disk tier ignores foreign directory %s.", entry.path)
                    else:
                        _remove_path(entry.path)  # a link, FIFO or stray file in the library's own directory
                        logger.warning("KV disk tier removed foreign entry %s.", entry.path)
        return found


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


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def _write_file(dir_fd: int, name: str, data: bytes) -> None:
    fd = os.open(name, _WRITE_FLAGS, 0o644, dir_fd=dir_fd)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_exactly(fd: int, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = os.read(fd, min(size - len(chunks), 1 << 24))
        if not chunk:
            raise _Refused(f"its value file ended after {len(chunks)} of {size} bytes")
        chunks += chunk
    return bytes(chunks)


def _mkdir_quietly(name: str, dir_fd: int) -> None:
    try:
        os.mkdir(name, 0o755, dir_fd=dir_fd)
    except FileExistsError:
        pass


def _unlink_quietly(dir_fd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        try:
            os.rmdir(name, dir_fd=dir_fd)
        except OSError:
            pass
    except OSError:
        pass


def _remove_path(path: str) -> None:
    try:
        os.unlink(path)  # never follows a link: removes the link itself
    except OSError:
        pass
