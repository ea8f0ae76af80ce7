"""The two-tier KV store: an in-memory LRU tier in front of a size-bounded disk tier (write-through).

Contract:

* ``get(key)`` looks in memory, then on disk. A disk hit is validated (a corrupt entry is dropped, logged and
  reported as a miss), promoted to the memory tier and counted as a disk hit; the next ``get`` is a memory hit.
* ``put(key, kv)`` stores ``kv`` *as given* in memory (moved to ``memory_device`` when one is configured) and
  writes a CPU copy through to disk. The store keeps a reference to the tensors it is handed: the caller (the
  engine) must hand over fresh tensors and never write into them afterwards.
* Every returned :class:`~block_attention.kv.BlockKV` is shared with the store and read-only: consumers copy, never
  write in place.
* Cache problems are never errors: I/O failures and corrupt entries become misses (and warnings). Only an
  unusable disk directory (:class:`~block_attention.errors.StoreError` at construction) or use after
  :meth:`KVStore.close` raise.
* All methods are thread-safe.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

import torch

from block_attention.errors import StoreError
from block_attention.kv import BlockKV
from block_attention.store.config import StoreConfig
from block_attention.store.disk import DiskTier
from block_attention.store.keys import CacheKey
from block_attention.store.memory import MemoryTier

Tier = Literal["memory", "disk"]


@dataclass(frozen=True)
class StoreStats:
    """Counters since construction (or the last ``reset_stats``) and current tier sizes.

    ``evictions`` counts memory-tier LRU evictions; ``disk_bytes`` is diskcache's ``volume()`` estimate.
    """

    memory_hits: int
    disk_hits: int
    misses: int
    puts: int
    evictions: int
    corrupt_dropped: int
    memory_bytes: int
    memory_entries: int
    disk_bytes: int
    disk_entries: int

    @property
    def hits(self) -> int:
        return self.memory_hits + self.disk_hits


class KVStore:
    """Memory LRU tier + disk tier of block KV, keyed by :class:`CacheKey`."""

    def __init__(self, config: StoreConfig) -> None:
        if not isinstance(config, StoreConfig):
            raise StoreError(f"KVStore needs a StoreConfig, got {type(config).__name__}; pass StoreConfig(...).")
        self._config = config
        self._memory: MemoryTier[CacheKey] | None = MemoryTier(config.memory_bytes) if config.memory_enabled else None
        self._disk: DiskTier | None = None
        if config.disk_dir is not None:
            self._disk = DiskTier(config.disk_dir, config.disk_bytes)
        self._lock = threading.RLock()
        self._closed = False
        self._memory_hits = self._disk_hits = self._misses = self._puts = 0

    @property
    def config(self) -> StoreConfig:
        return self._config

    # -- lookups -------------------------------------------------------------------------------------------------

    def get(self, key: CacheKey, device: torch.device | str | None = None) -> BlockKV | None:
        """Cached KV for ``key`` (shared, read-only), on ``device`` when given; None on a miss."""
        self._check_open()
        kv = self._memory.get(key) if self._memory is not None else None
        if kv is not None:
            with self._lock:
                self._memory_hits += 1
            return _on(kv, device)
        with self._lock:
            kv = self._disk.load(key) if self._disk is not None else None
            if kv is None:
                self._misses += 1
                return None
            self._disk_hits += 1
            kv = _on(kv, self._config.memory_device or device)
            if self._memory is not None:
                self._memory.put(key, kv)
        return _on(kv, device)

    def contains(self, key: CacheKey) -> Tier | None:
        """Which tier holds ``key`` ("memory" first), without touching stats or recency."""
        self._check_open()
        if self._memory is not None and self._memory.contains(key):
            return "memory"
        if self._disk is not None and self._disk.contains(key):
            return "disk"
        return None

    # -- mutations -----------------------------------------------------------------------------------------------

    def put(self, key: CacheKey, kv: BlockKV) -> None:
        """Store ``kv`` for ``key`` in memory (as given) and write it through to disk (as CPU tensors)."""
        self._check_open()
        with self._lock:
            self._puts += 1
            if self._memory is not None:
                self._memory.put(key, _on(kv, self._config.memory_device))
            if self._disk is not None:
                self._disk.save(key, kv)

    def delete_doc(self, doc_id: str) -> int:
        """Remove ``doc_id`` from both tiers (every fingerprint); return entries removed, summed over tiers."""
        self._check_open()
        with self._lock:
            removed = self._memory.delete(lambda k: k.doc_id == doc_id) if self._memory is not None else 0
            if self._disk is not None:
                removed += self._disk.delete_doc(doc_id)
            return removed

    def clear(self) -> None:
        """Remove every entry from both tiers (stats counters are kept)."""
        self._check_open()
        with self._lock:
            if self._memory is not None:
                self._memory.clear()
            if self._disk is not None:
                self._disk.clear()

    # -- stats ---------------------------------------------------------------------------------------------------

    def stats(self) -> StoreStats:
        self._check_open()
        with self._lock:
            memory, disk = self._memory, self._disk
            return StoreStats(
                memory_hits=self._memory_hits,
                disk_hits=self._disk_hits,
                misses=self._misses,
                puts=self._puts,
                evictions=memory.evictions if memory is not None else 0,
                corrupt_dropped=disk.corrupt_dropped if disk is not None else 0,
                memory_bytes=memory.nbytes if memory is not None else 0,
                memory_entries=len(memory) if memory is not None else 0,
                disk_bytes=disk.volume() if disk is not None else 0,
                disk_entries=len(disk) if disk is not None else 0,
            )

    def reset_stats(self) -> None:
        with self._lock:
            self._memory_hits = self._disk_hits = self._misses = self._puts = 0
            if self._memory is not None:
                self._memory.reset_counters()
            if self._disk is not None:
                self._disk.reset_counters()

    # -- lifecycle -----------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Release the disk tier and drop the memory tier; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._memory is not None:
                self._memory.clear()
            if self._disk is not None:
                self._disk.close()

    def __enter__(self) -> "KVStore":
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("This KVStore is closed; create a new KVStore to keep using the cache.")


def _on(kv: BlockKV, device: torch.device | str | None) -> BlockKV:
    """``kv`` on ``device`` (the same object when no move is needed)."""
    if device is None:
        return kv
    target = torch.device(device)
    if kv.keys.device == target and kv.values.device == target:
        return kv
    return kv.to(target)
