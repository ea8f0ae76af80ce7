"""Remote tier of the KV store on Redis (or any server speaking its protocol: Valkey, KeyDB, Redis Cluster proxy).

Contract:

* Values are the same checksummed safetensors bytes as the disk tier (:func:`serialize.dumps`); nothing is
  pickled and every value read is validated by :func:`serialize.loads` against the requested key. Keys are
  ``<prefix>`` + ``CacheKey.as_str()`` (model fingerprint, JSON-quoted doc id, token hash), so several
  processes and machines serving the same model share entries and a changed model or document never hits.
* Each document has a Redis SET ``<prefix>doc:<json doc id>`` listing its entry keys, so :meth:`delete_doc`
  needs no pattern matching over user-chosen ids. Entries get the optional TTL (``SET ... EX``); the index set's
  TTL is refreshed with it.
* A value larger than ``max_value_bytes`` is not written. Eviction is Redis's own: run the server with
  ``maxmemory <bytes>`` and ``maxmemory-policy allkeys-lru``. An index set may outlive evicted entries; that only
  makes ``delete_doc`` try keys that are already gone.
* Any Redis fault (refused or dropped connection, timeout, slow server, out-of-memory reply, a foreign or
  corrupted value, a key of the wrong type) costs a miss or a skipped write and is never raised; a run of faults
  logs one WARNING (until the next success). After a connection fault Redis is skipped for ``retry_after_s``
  seconds (so a down server does not add a timeout to every request); the next call after that reconnects by
  itself and an INFO line says so.
  Bad values are deleted, logged and counted in ``corrupt_dropped``.
* ``stats()`` reports ``entries`` as the Redis database's key count (``DBSIZE``: every entry plus one index set
  per document; give the cache its own database number) and ``nbytes`` as the server's ``used_memory``; both are 0
  while Redis is unreachable.
* Thread-safe: redis-py's connection pool hands each thread its own connection.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import block_attention.store.serialize as serialize
from block_attention.core.errors import StoreError
from block_attention.core.extras import require
from block_attention.core.kv import BlockKV
from block_attention.store.keys import CacheKey
from block_attention.store.standard import REMOTE
from block_attention.store.tier import KVTier, TierStats

logger = logging.getLogger("block_attention.store")

DEFAULT_PREFIX = "block-attention:kv:"


def _redis() -> Any:
    return require("serve", "redis")


class RedisTier(KVTier):
    """Shared KV tier on a Redis server. See the module docstring for the contract."""

    name = REMOTE

    def __init__(self, url: str, *, ttl_s: int | None = None, max_value_bytes: int = 256 * 1024**2,
                 timeout_s: float = 0.5, retry_after_s: float = 2.0, prefix: str = DEFAULT_PREFIX,
                 codec: str = "none") -> None:
        redis = _redis()
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self._codec = codec  # how put() serializes (store/codec.py); get() reads any codec, "none" only exact ones
        self._errors_mod = redis.exceptions
        self._url = url
        self._ttl_s = ttl_s
        self._max_value_bytes = max_value_bytes
        self._retry_after_s = retry_after_s
        self._prefix = prefix
        try:
            # No client-side retries: one fault costs one miss; reconnecting happens on a later call.
            self._client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                                retry=Retry(NoBackoff(), 0), health_check_interval=0)
        except ValueError as exc:
            raise StoreError(f"The remote KV URL {url!r} is not a valid Redis URL ({exc}); pass e.g. "
                             "redis://127.0.0.1:6379/0 or redis://:PASSWORD@host:6379/0.") from None
        self._lock = threading.Lock()
        self._down_until = 0.0
        self._down = False
        self._errors = 0
        self._corrupt_dropped = 0
        self._warned = False
        self._closed = False

    # -- fault handling --------------------------------------------------------------------------------------

    def _available(self) -> bool:
        with self._lock:
            return not self._closed and (not self._down or time.monotonic() >= self._down_until)

    def _ok(self) -> None:
        with self._lock:
            was_down, self._down, self._warned = self._down, False, False
        if was_down:
            logger.info("KV remote tier %s is reachable again; using it.", self._safe_url())

    def _fault(self, what: str, exc: Exception) -> None:
        """Count a fault and warn once until the next success; a connection fault also marks Redis down for
        ``retry_after_s`` seconds."""
        errors = self._errors_mod
        connection_fault = isinstance(exc, (errors.ConnectionError, errors.TimeoutError, OSError))
        with self._lock:
            self._errors += 1
            warn, self._warned = not self._warned, True
            if connection_fault:
                self._down = True
                self._down_until = time.monotonic() + self._retry_after_s
        if not warn:
            return
        if connection_fault:
            logger.warning("KV remote tier %s failed during %s (%r); serving without it (misses) and retrying "
                           "every %.1f s.", self._safe_url(), what, exc, self._retry_after_s)
        elif isinstance(exc, errors.OutOfMemoryError) or "OOM" in str(exc):
            logger.warning("KV remote tier %s is out of memory (%s); entries are not written. Configure Redis "
                           "with maxmemory-policy allkeys-lru so it evicts instead.", self._safe_url(), exc)
        else:
            logger.warning("KV remote tier %s: %s failed (%r); treating it as a miss.", self._safe_url(), what, exc)

    def _safe_url(self) -> str:
        """The URL without its password (for logs)."""
        kwargs = self._client.connection_pool.connection_kwargs
        where = kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}"
        return f"redis://{where}/{kwargs.get('db', 0)}"

    def _key(self, key: CacheKey) -> str:
        return self._prefix + key.as_str()

    def _doc_set(self, doc_id: str) -> str:
        return f"{self._prefix}doc:{json.dumps(doc_id)}"

    # -- the tier contract -----------------------------------------------------------------------------------

    def get(self, key: CacheKey) -> BlockKV | None:
        if not self._available():
            return None
        rkey = self._key(key)
        try:
            data = self._client.get(rkey)
        except self._errors_mod.ResponseError as exc:  # e.g. WRONGTYPE: a foreign value under our key
            self._ok()
            self._drop_corrupt(key, f"Redis refused the read ({exc})")
            return None
        except (self._errors_mod.RedisError, OSError) as exc:
            self._fault("a read", exc)
            return None
        self._ok()
        return serialize.loads_or_drop(key, data, self._drop_corrupt, exact=self._codec == "none")

    def put(self, key: CacheKey, kv: BlockKV) -> bool:
        if not self._available():
            return False
        data = serialize.dumps(key, kv, self._codec)  # type: ignore[arg-type]
        if len(data) > self._max_value_bytes:
            logger.warning("KV entry %s (%d bytes) is larger than the remote tier's value cap (%d bytes); not "
                           "writing it.", key.as_str(), len(data), self._max_value_bytes)
            return False
        rkey, doc_set = self._key(key), self._doc_set(key.doc_id)
        try:
            pipe = self._client.pipeline(transaction=False)
            pipe.set(rkey, data, ex=self._ttl_s)
            pipe.sadd(doc_set, rkey)
            if self._ttl_s:
                pipe.expire(doc_set, self._ttl_s)
            pipe.execute()
        except (self._errors_mod.RedisError, OSError) as exc:
            self._fault("a write", exc)
            return False
        self._ok()
        return True

    def contains(self, key: CacheKey) -> bool:
        if not self._available():
            return False
        try:
            found = bool(self._client.exists(self._key(key)))
        except (self._errors_mod.RedisError, OSError) as exc:
            self._fault("a lookup", exc)
            return False
        self._ok()
        return found

    def delete(self, key: CacheKey) -> bool:
        if not self._available():
            return False
        try:
            pipe = self._client.pipeline(transaction=False)
            pipe.delete(self._key(key))
            pipe.srem(self._doc_set(key.doc_id), self._key(key))
            removed = pipe.execute()[0]
        except (self._errors_mod.RedisError, OSError) as exc:
            self._fault("a delete", exc)
            return False
        self._ok()
        return bool(removed)

    def delete_doc(self, doc_id: str) -> int:
        if not self._available():
            return 0
        doc_set = self._doc_set(doc_id)
        try:
            members = list(self._client.smembers(doc_set))
            removed = int(self._client.delete(*members)) if members else 0
            self._client.delete(doc_set)
        except (self._errors_mod.RedisError, OSError) as exc:
            self._fault("a document delete", exc)
            return 0
        self._ok()
        return removed

    def clear(self) -> int:
        """Delete every key under this tier's prefix (SCAN + DEL in batches; other keys are left alone)."""
        if not self._available():
            return 0
        removed = 0
        try:
            batch: list[bytes] = []
            for rkey in self._client.scan_iter(match=_glob_escape(self._prefix) + "*", count=500):
                batch.append(rkey)
                if len(batch) >= 500:
                    removed += int(self._client.delete(*batch))
                    batch.clear()
            if batch:
                removed += int(self._client.delete(*batch))
        except (self._errors_mod.RedisError, OSError) as exc:
            self._fault("a clear", exc)
            return removed
        self._ok()
        return removed

    def stats(self) -> TierStats:
        entries = nbytes = 0
        if self._available():
            try:
                entries = int(self._client.dbsize())
                nbytes = int(self._client.info("memory").get("used_memory", 0))
                self._ok()
            except (self._errors_mod.RedisError, OSError) as exc:
                self._fault("a stats query", exc)
        with self._lock:
            return TierStats(self.name, entries, nbytes, corrupt_dropped=self._corrupt_dropped, errors=self._errors)

    def reset_counters(self) -> None:
        with self._lock:
            self._errors = 0
            self._corrupt_dropped = 0

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._client.close()
        except (self._errors_mod.RedisError, OSError):  # pragma: no cover - closing a dead connection
            pass

    def _drop_corrupt(self, key: CacheKey, reason: str) -> None:
        with self._lock:
            self._corrupt_dropped += 1
        logger.warning("Dropping bad KV remote entry %s: %s. It will be recomputed.", key.as_str(), reason)
        self.delete(key)


def _glob_escape(text: str) -> str:
    """``text`` with Redis glob metacharacters escaped (for SCAN MATCH)."""
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)
