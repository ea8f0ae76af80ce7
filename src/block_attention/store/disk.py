"""Disk tier of the KV store: a size-bounded LRU ``diskcache.Cache`` holding :func:`serialize.dumps` bytes.

Contract:

* Keys are ``CacheKey.as_str()`` (stored raw, never pickled); values are ``bytes`` only; each entry is tagged with
  its ``doc_id`` so :meth:`DiskTier.delete_doc` drops every fingerprint/version of a document at once.
* A cache directory is never a code-execution path: :class:`SafeDisk` refuses to store anything but ``str`` keys
  and ``bytes`` values, and refuses to *read* pickled keys or pickled/text values that someone else planted in the
  sqlite database (diskcache's default ``Disk`` would unpickle them).
* Reads never crash: a corrupt or refused entry is deleted, logged at WARNING on ``block_attention.store``,
  counted in ``corrupt_dropped`` and reported as a miss; an ``OSError``/sqlite error/timeout is logged and
  reported as a miss. A failed write is logged and skipped. Only opening an unusable directory raises
  :class:`~block_attention.errors.StoreError`.
* The size bound is diskcache's: after each write, least-recently-used entries are culled while the cache volume
  (sqlite pages + value files) exceeds ``max_bytes``; an entry larger than ``max_bytes`` is not written.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from typing import Any

import diskcache
from diskcache.core import MODE_BINARY, MODE_RAW, UNKNOWN

from block_attention.errors import CorruptEntryError, StoreError
from block_attention.kv import BlockKV
from block_attention.store import serialize
from block_attention.store.keys import CacheKey
from block_attention.store.tier import KVTier, TierStats

logger = logging.getLogger("block_attention.store")

_IO_ERRORS = (OSError, sqlite3.Error, diskcache.Timeout)
_MIN_FILE_SIZE = 32 * 1024  # values at least this large live in their own file, smaller ones inline in sqlite


class SafeDisk(diskcache.Disk):
    """A ``diskcache.Disk`` that never pickles and never unpickles."""

    def put(self, key: Any) -> tuple[Any, bool]:
        if type(key) is not str:
            raise TypeError(f"The disk tier only accepts str keys, got {type(key).__name__}.")
        return super().put(key)

    def get(self, key: Any, raw: bool) -> Any:
        if not raw:
            raise CorruptEntryError("refusing to unpickle a key planted in the cache database")
        return super().get(key, raw)

    def store(self, value: Any, read: bool, key: Any = UNKNOWN) -> tuple[int, int, str | None, Any]:
        if read or type(value) is not bytes:
            raise TypeError(f"The disk tier only accepts bytes values, got {type(value).__name__}.")
        return super().store(value, read, key=key)

    def fetch(self, mode: int, filename: str | None, value: Any, read: bool) -> bytes:
        if read:
            raise TypeError("The disk tier never reads values as file handles.")
        if mode == MODE_RAW and isinstance(value, (bytes, memoryview)):
            return bytes(value)
        if mode == MODE_BINARY:
            return super().fetch(mode, filename, value, read)
        raise CorruptEntryError(f"refusing to decode a value stored in diskcache mode {mode} (only bytes are allowed)")


class DiskTier(KVTier):
    """Size-bounded LRU disk cache of serialized block KV, keyed by :class:`CacheKey`."""

    name = "disk"

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int) -> None:
        self._directory = os.fspath(directory)
        self._max_bytes = max_bytes
        self._corrupt_dropped = 0
        self._counter_lock = threading.Lock()
        self._closed = False
        self._cache = _open_cache(self._directory, max_bytes)

    @property
    def directory(self) -> str:
        return self._directory

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    @property
    def corrupt_dropped(self) -> int:
        """Entries dropped because they failed validation or were refused (since the last reset)."""
        with self._counter_lock:
            return self._corrupt_dropped

    def reset_counters(self) -> None:
        with self._counter_lock:
            self._corrupt_dropped = 0

    def get_bytes(self, key: CacheKey) -> bytes | None:
        """Raw entry bytes for ``key`` (unvalidated), or None on a miss, refused entry or I/O error."""
        skey = key.as_str()
        try:
            data = self._cache.get(skey, default=None)
        except CorruptEntryError as exc:
            self.drop_corrupt(key, str(exc))
            return None
        except _IO_ERRORS as exc:
            logger.warning("KV disk tier read of %s failed (%r); treating it as a miss.", skey, exc)
            return None
        return data

    def get(self, key: CacheKey) -> BlockKV | None:
        """Validated entry for ``key`` (CPU tensors), or None; a corrupt entry is dropped and counted."""
        data = self.get_bytes(key)
        if data is None:
            return None
        try:
            return serialize.loads(key, data)
        except CorruptEntryError as exc:
            self.drop_corrupt(key, str(exc))
            return None

    def put_bytes(self, key: CacheKey, data: bytes) -> bool:
        """Write serialized bytes for ``key``; return whether written (False if too large or on I/O error)."""
        skey = key.as_str()
        if len(data) > self._max_bytes:
            logger.warning(
                "KV entry %s (%d bytes) is larger than the disk tier budget (%d bytes); not writing it.",
                skey, len(data), self._max_bytes,
            )
            return False
        try:
            self._cache.set(skey, data, tag=key.doc_id)
        except _IO_ERRORS as exc:
            logger.warning("KV disk tier write of %s failed (%r); skipping it.", skey, exc)
            return False
        return True

    def put(self, key: CacheKey, kv: BlockKV) -> bool:
        """Serialize ``kv`` (moved to CPU) and write it."""
        return self.put_bytes(key, serialize.dumps(key, kv))

    def contains(self, key: CacheKey) -> bool:
        """Whether an entry exists for ``key`` (not validated; does not touch recency)."""
        try:
            return key.as_str() in self._cache
        except _IO_ERRORS as exc:
            logger.warning("KV disk tier lookup of %s failed (%r); treating it as absent.", key.as_str(), exc)
            return False

    def delete(self, key: CacheKey) -> bool:
        try:
            return bool(self._cache.delete(key.as_str()))
        except _IO_ERRORS as exc:
            logger.warning("KV disk tier delete of %s failed (%r).", key.as_str(), exc)
            return False

    def delete_doc(self, doc_id: str) -> int:
        """Remove every entry of ``doc_id`` (all fingerprints); return how many were removed."""
        try:
            return int(self._cache.evict(doc_id))
        except _IO_ERRORS as exc:
            logger.warning("KV disk tier delete of document %r failed (%r).", doc_id, exc)
            return 0

    def drop_corrupt(self, key: CacheKey, reason: str) -> None:
        """Delete a corrupt entry, log it at WARNING and count it."""
        with self._counter_lock:
            self._corrupt_dropped += 1
        logger.warning("Dropping corrupt KV cache entry %s: %s. It will be recomputed.", key.as_str(), reason)
        self.delete(key)

    def clear(self) -> int:
        try:
            return int(self._cache.clear())
        except _IO_ERRORS as exc:
            logger.warning("KV disk tier clear failed (%r).", exc)
            return 0

    def volume(self) -> int:
        """Estimated bytes on disk (sqlite pages + value files), as diskcache culls by it."""
        try:
            return int(self._cache.volume())
        except _IO_ERRORS as exc:
            logger.warning("KV disk tier size query failed (%r).", exc)
            return 0

    def stats(self) -> TierStats:
        return TierStats(self.name, len(self), self.volume(), corrupt_dropped=self.corrupt_dropped)

    def __len__(self) -> int:
        try:
            return int(len(self._cache))
        except _IO_ERRORS as exc:
            logger.warning("KV disk tier count query failed (%r).", exc)
            return 0

    def close(self) -> None:
        with self._counter_lock:
            if self._closed:
                return
            self._closed = True
        self._cache.close()


def _open_cache(directory: str, max_bytes: int) -> diskcache.Cache:
    """Open the cache; a damaged cache database is moved aside (logged) and a fresh one started, once."""
    try:
        return _open_cache_once(directory, max_bytes)
    except StoreError:
        db = os.path.join(directory, "cache.db")
        if not os.path.isfile(db):
            raise
        aside = f"{db}.damaged-{int(time.time())}"
        try:
            os.replace(db, aside)
        except OSError:
            raise
        logger.warning("KV disk cache database %s was damaged; moved it to %s and started an empty cache "
                       "(its entries will be recomputed).", db, aside)
        return _open_cache_once(directory, max_bytes)


def _open_cache_once(directory: str, max_bytes: int) -> diskcache.Cache:
    try:
        return diskcache.Cache(
            directory,
            disk=SafeDisk,
            size_limit=max_bytes,
            eviction_policy="least-recently-used",
            tag_index=True,
            statistics=False,
            cull_limit=10,
            disk_min_file_size=_MIN_FILE_SIZE,
        )
    except (*_IO_ERRORS, ValueError, KeyError) as exc:
        raise StoreError(
            f"The KV store could not open its disk directory {directory!r} ({exc!r}). Pass a writable "
            "StoreConfig.disk_dir, or disk_dir=None to disable the disk tier."
        ) from exc
