"""Disk tier of the KV store: an SQLite index plus one value file per entry, every path derived by the library.

The tier composes two parts with public interfaces: :mod:`block_attention.store.disk_index` (the SQLite index:
entries, LRU bookkeeping, eviction) and :mod:`block_attention.store.disk_files` (the value files: crash-safe
write, refusing read, scan, delete of paths derived from keys). This module holds the rules that need both.

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

import logging
import os
import threading
from typing import Any

import block_attention.store.serialize as serialize
from block_attention.core.kv import BlockKV
from block_attention.store.disk_files import VALUE_DIR, VALUE_SUFFIX, RefusedFile, ValueFiles, temp_name
from block_attention.store.disk_files import unlink_quietly as _unlink_quietly
from block_attention.store.disk_files import value_digest, value_relpath, write_file
from block_attention.store.disk_index import DB_ERRORS, DB_NAME, SCHEMA_VERSION, DiskIndex, doc_column
from block_attention.store.keys import CacheKey
from block_attention.store.standard import DISK
from block_attention.store.tier import KVTier, TierStats

logger = logging.getLogger("block_attention.store")

_IO_ERRORS = (OSError, *DB_ERRORS)


class DiskTier(KVTier):
    """Size-bounded LRU disk cache of serialized block KV, keyed by :class:`CacheKey` (see the module docstring)."""

    name = DISK

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int, *, codec: str = "none") -> None:
        self._codec = codec  # how put() serializes (store/codec.py); get() reads any codec, "none" only exact ones
        self._directory = os.path.abspath(os.fspath(directory))
        self._max_bytes = max_bytes
        self._corrupt_dropped = 0
        self._evictions = 0
        self._closed = False
        self._index = DiskIndex(self._directory)
        self._files = ValueFiles(self._directory)
        self._lock: threading.RLock = self._index.lock  # one lock for the index and the tier's counters
        if not self._index.read_only:
            self._sweep()

    @property
    def _con(self) -> Any:
        """The index's SQLite connection (for tests that make it fail)."""
        return self._index.con

    @_con.setter
    def _con(self, con: Any) -> None:
        self._index.con = con

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
        return self._index.read_only

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
        try:
            row = self._index.size_row(skey)
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
            data = self._files.read(digest, size)
        except RefusedFile as exc:
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
        if not self._index.read_only:
            self._index.touch(skey)
        return data

    def get(self, key: CacheKey) -> BlockKV | None:
        """Validated entry for ``key`` (CPU tensors), or None; a corrupt entry is dropped and counted."""
        return serialize.loads_or_drop(key, self.get_bytes(key), self.drop_corrupt, exact=self._codec == "none")

    def contains(self, key: CacheKey) -> bool:
        """Whether an index row exists for ``key`` (not validated; does not touch recency)."""
        try:
            return self._index.has(key.as_str())
        except _IO_ERRORS as exc:
            logger.warning("KV disk tier lookup of %s failed (%r); treating it as absent.", key.as_str(), exc)
            return False

    # -- writes ----------------------------------------------------------------------------------------------
    def put_bytes(self, key: CacheKey, data: bytes) -> bool:
        """Write serialized bytes for ``key``; return whether written (False if too large, read-only or on error)."""
        skey = key.as_str()
        if self._index.read_only:
            return False
        if len(data) > self._max_bytes:
            logger.warning(
                "KV entry %s (%d bytes) is larger than the disk tier budget (%d bytes); not writing it.",
                skey, len(data), self._max_bytes,
            )
            return False
        digest = value_digest(skey)
        tmp = temp_name(digest)
        final = digest + VALUE_SUFFIX
        try:
            with self._files.subdir(digest, create=True) as sub:
                placed = False
                try:
                    write_file(sub, tmp, data)
                    with self._lock, self._index.transaction():
                        os.replace(tmp, final, src_dir_fd=sub, dst_dir_fd=sub)
                        placed = True
                        self._index.insert_locked(skey, key.doc_id, len(data))
                        self._index.evict_locked(skey, self._max_bytes, self._evict_locked)
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
        if self._index.read_only:
            return 0
        try:
            with self._lock, self._index.transaction():
                # the doc column is a hint only: a row is the document's when its key names it
                removed = 0
                for rowid, skey in self._index.doc_rows_locked(doc_id):
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
        if self._index.read_only:
            return 0
        try:
            with self._lock, self._index.transaction():
                count = self._index.clear_locked()
                for digest in self._files.scan():  # no row is left, so every value file goes (orphans too)
                    self._files.unlink(digest)
            return count
        except _IO_ERRORS as exc:
            logger.warning("KV disk tier clear failed (%r).", exc)
            return 0

    # -- sizes -----------------------------------------------------------------------------------------------
    def volume(self) -> int:
        """Bytes this tier really keeps on disk: SQLite files (journal/WAL/shm included), value and temporary files."""
        return self._index.db_bytes() + self._files.volume()

    def stats(self) -> TierStats:
        return TierStats(self.name, len(self), self.volume(), evictions=self.evictions,
                         corrupt_dropped=self.corrupt_dropped)

    def __len__(self) -> int:
        try:
            return self._index.count()
        except _IO_ERRORS as exc:
            logger.warning("KV disk tier count query failed (%r).", exc)
            return 0

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._index.close()

    # -- internals -------------------------------------------------------------------------------------------
    def _remove_locked(self, rowid: int, skey: object) -> None:
        """Delete a row (by rowid: its key may not even decode) and its value file (in a transaction, lock held)."""
        self._index.delete_locked(rowid)
        if isinstance(skey, str):
            self._files.unlink(value_digest(skey))

    def _evict_locked(self, rowid: int, skey: object) -> None:
        self._remove_locked(rowid, skey)
        self._evictions += 1

    def _delete_row(self, skey: str) -> bool:
        if self._index.read_only:
            return False
        try:
            with self._lock, self._index.transaction():
                rowids = self._index.rowids_locked(skey)
                for rowid in rowids:
                    self._remove_locked(rowid, skey)
                if not rowids:
                    self._files.unlink(value_digest(skey))  # (an orphan of this key: never worth keeping)
            return bool(rowids)
        except _IO_ERRORS as exc:
            logger.warning("KV disk tier delete of %s failed (%r).", skey, exc)
            return False

    def _sweep(self) -> None:
        """Remove temporary files of dead writers, value files without a row and rows without a valid file."""
        try:
            with self._lock, self._index.transaction():
                files = self._files.scan()
                keep: set[str] = set()
                for rowid, skey, doc, size in self._index.all_rows_locked():
                    parsed = CacheKey.from_str(skey)  # None: not a key this library writes (junk, undecodable)
                    digest = value_digest(skey) if parsed is not None else None
                    doc_ok = parsed is not None and doc == doc_column(parsed.doc_id)
                    if digest is not None and doc_ok and type(size) is int and files.get(digest) == size \
                            and digest not in keep:
                        keep.add(digest)
                        continue
                    self._index.delete_locked(rowid)
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
                    self._files.unlink(digest)
                    logger.info("KV disk tier removed orphan value file %s%s.", digest, VALUE_SUFFIX)
        except _IO_ERRORS as exc:
            logger.warning("KV disk tier sweep of %s failed (%r); continuing without it.", self._directory, exc)


__all__ = ["DB_NAME", "SCHEMA_VERSION", "VALUE_DIR", "VALUE_SUFFIX", "DiskTier", "value_digest", "value_relpath"]
