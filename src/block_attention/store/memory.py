"""In-memory LRU tier of the KV store, bounded by the exact sum of stored tensor bytes.

Contract:

* ``get`` returns the stored :class:`~block_attention.core.kv.BlockKV` itself (shared, read-only for consumers) and
  makes it the most recently used entry; ``contains`` does not touch recency.
* ``put`` inserts or replaces, then evicts least-recently-used entries until ``nbytes <= max_bytes``. An entry
  larger than the whole budget is not stored (and an older entry under the same key is dropped).
* ``nbytes`` is the exact sum of ``kv.nbytes`` of the entries held; ``evictions`` counts entries dropped to make
  room (not replacements or deletes).
* Implements :class:`~block_attention.store.tier.KVTier` (the store uses ``CacheKey`` keys; any hashable works).
* Every method is thread-safe (one lock per tier).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from typing import Generic, TypeVar

from block_attention.core.checks import is_int
from block_attention.core.kv import BlockKV
from block_attention.store.standard import MEMORY
from block_attention.store.tier import KVTier, TierStats

K = TypeVar("K", bound=Hashable)


class MemoryTier(KVTier, Generic[K]):
    """Thread-safe LRU map ``key -> BlockKV`` bounded by total tensor bytes."""

    name = MEMORY
    keeps_tensors = True  # holds the tensors it is given (no serialization)

    def __init__(self, max_bytes: int) -> None:
        if not is_int(max_bytes) or max_bytes < 0:
            raise ValueError(f"MemoryTier max_bytes must be a non-negative integer, got {max_bytes!r}.")
        self._max_bytes = max_bytes
        self._entries: OrderedDict[K, BlockKV] = OrderedDict()  # least recently used first
        self._nbytes = 0
        self._evictions = 0
        self._lock = threading.Lock()

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._nbytes

    @property
    def evictions(self) -> int:
        with self._lock:
            return self._evictions

    def reset_counters(self) -> None:
        with self._lock:
            self._evictions = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def contains(self, key: K) -> bool:  # type: ignore[override]
        """Whether ``key`` is held; does not change recency."""
        with self._lock:
            return key in self._entries

    __contains__ = contains

    def keys(self) -> list[K]:
        """Snapshot of the keys, least recently used first."""
        with self._lock:
            return list(self._entries)

    def get(self, key: K) -> BlockKV | None:  # type: ignore[override]
        with self._lock:
            kv = self._entries.get(key)
            if kv is not None:
                self._entries.move_to_end(key)
            return kv

    def put(self, key: K, kv: BlockKV) -> bool:  # type: ignore[override]
        """Insert or replace ``key``; return whether it is now stored (False when larger than the budget)."""
        size = kv.nbytes
        with self._lock:
            self._pop(key)
            if size > self._max_bytes:
                return False
            self._entries[key] = kv
            self._nbytes += size
            self._evict_to_budget()
            return True

    def delete_keys(self, keys: Iterable[K]) -> int:
        with self._lock:
            return sum(self._pop(key) for key in list(keys))

    def delete(self, key: K) -> bool:  # type: ignore[override]
        with self._lock:
            return self._pop(key)

    def delete_doc(self, doc_id: str) -> int:
        """Remove every entry whose key has this ``doc_id`` (keys without one are kept)."""
        return self.delete_where(lambda k: getattr(k, "doc_id", None) == doc_id)

    def delete_where(self, pred: Callable[[K], bool]) -> int:
        """Remove every entry whose key satisfies ``pred``; return how many were removed."""
        with self._lock:
            doomed = [key for key in self._entries if pred(key)]
            return sum(self._pop(key) for key in doomed)

    def clear(self) -> int:
        with self._lock:
            count = len(self._entries)
            self._entries.clear()
            self._nbytes = 0
            return count

    def stats(self) -> TierStats:
        with self._lock:
            return TierStats(self.name, len(self._entries), self._nbytes, evictions=self._evictions)

    def _pop(self, key: K) -> bool:
        kv = self._entries.pop(key, None)
        if kv is None:
            return False
        self._nbytes -= kv.nbytes
        return True

    def _evict_to_budget(self) -> None:
        while self._nbytes > self._max_bytes:
            _, kv = self._entries.popitem(last=False)
            self._nbytes -= kv.nbytes
            self._evictions += 1
