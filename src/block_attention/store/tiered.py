"""The KV store: an ordered list of tiers (fastest first) behind one lookup, with optional write-behind.

Contract:

* ``lookup(key)`` walks the tiers in order and returns a :class:`Hit` naming the tier that held the entry, or
  ``None`` (counted as a miss). A hit in a lower tier is promoted into every tier above it, so the next lookup
  is served by the first tier. ``get(key)`` is ``lookup(key).kv``. There is no contains-then-get: one call, one
  answer.
* ``put(key, kv)`` stores ``kv`` *as given* in every tier that keeps tensors (``KVTier.keeps_tensors``, e.g. the
  memory tier; moved to ``memory_device`` when one is configured) and writes it to every other tier:
  synchronously (write-through, the default) or, with ``StoreConfig(write_behind=True)``, on one background
  thread fed by a bounded queue (a full queue makes the caller write synchronously; ``flush()`` and ``close()``
  wait for every queued write). The store
  keeps a reference to the tensors it is handed: the caller must hand over fresh tensors and never write into
  them afterwards.
* Every returned :class:`~block_attention.core.kv.BlockKV` is shared with the store and read-only: consumers copy,
  never write in place.
* Cache problems are never errors: I/O failures and corrupt entries become misses (and warnings). Only an
  unusable disk directory (:class:`~block_attention.core.errors.StoreError` at construction) or use after
  :meth:`KVStore.close` raise.
* Tiers follow :class:`~block_attention.store.tier.KVTier`; a new backend is one class. The store asks a tier
  for its capabilities, never for its class; hits are counted per tier name (named views of the standard tiers
  come from :mod:`block_attention.store.standard`).
* All methods are thread-safe.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType
from typing import Any

import torch

from block_attention.core.errors import StoreError
from block_attention.core.kv import BlockKV, KVGeometry
from block_attention.store.config import StoreConfig
from block_attention.store.disk import DiskTier
from block_attention.store.keys import CacheKey
from block_attention.store.memory import MemoryTier
from block_attention.store.standard import HitsByTier, StandardTierSizes
from block_attention.store.tier import KVTier, TierStats

logger = logging.getLogger("block_attention.store")


@dataclass(frozen=True)
class Hit:
    """A lookup that found its entry: the KV (shared, read-only) and the name of the tier that held it."""

    kv: BlockKV
    tier: str


@dataclass(frozen=True)
class StoreStats(HitsByTier, StandardTierSizes):
    """Counters since construction (or the last ``reset_stats``) and the current state of every tier.

    ``hits_by_tier`` maps tier name to hits served by that tier; ``tiers`` holds each tier's own stats, fastest
    first. The named properties (``memory_hits``, ``disk_bytes``, ...) read those for the standard tiers.
    """

    hits_by_tier: Mapping[str, int]
    misses: int
    puts: int
    tiers: tuple[TierStats, ...]
    pending_writes: int = 0
    rejected: int = 0  # entries that did not fit the model's KV geometry (dropped from every tier)

    def tier(self, name: str) -> TierStats | None:
        return next((t for t in self.tiers if t.name == name), None)

    def _size(self, name: str, attr: str) -> int:
        t = self.tier(name)
        return int(getattr(t, attr)) if t is not None else 0

    @property
    def corrupt_dropped(self) -> int:
        return sum(t.corrupt_dropped for t in self.tiers) + self.rejected

    def as_dict(self) -> dict[str, Any]:
        return {
            "hits": self.hits, "misses": self.misses, "puts": self.puts, "pending_writes": self.pending_writes,
            "rejected": self.rejected,
            "hits_by_tier": dict(self.hits_by_tier),
            "tiers": {t.name: {"entries": t.entries, "bytes": t.nbytes, "evictions": t.evictions,
                               "corrupt_dropped": t.corrupt_dropped, "errors": t.errors} for t in self.tiers},
        }


def tiers_from_config(config: StoreConfig) -> list[KVTier]:
    """The standard tiers a :class:`StoreConfig` asks for, fastest first: memory, then disk, then remote (Redis)."""
    tiers: list[KVTier] = []
    if config.memory_enabled:
        tiers.append(MemoryTier(config.memory_bytes))
    if config.disk_dir is not None:
        tiers.append(DiskTier(config.disk_dir, config.disk_bytes, codec=config.kv_codec))
    if config.remote_url is not None:
        from block_attention.store.remote import RedisTier  # needs the optional redis client

        tiers.append(RedisTier(config.remote_url, ttl_s=config.remote_ttl_s,
                               max_value_bytes=config.remote_max_value_bytes, timeout_s=config.remote_timeout_s,
                               codec=config.kv_codec))
    return tiers


class KVStore:
    """Block KV keyed by :class:`CacheKey`, kept in an ordered list of tiers (see the module docstring).

    ``KVStore(config)`` builds the tiers a :class:`StoreConfig` describes; ``KVStore(config, tiers=[...])`` uses
    the given tiers instead (fastest first; names must be unique).
    """

    def __init__(self, config: StoreConfig | None = None, *, tiers: Sequence[KVTier] | None = None) -> None:
        if config is None:
            config = StoreConfig()
        if not isinstance(config, StoreConfig):
            raise StoreError(f"KVStore needs a StoreConfig, got {type(config).__name__}; pass StoreConfig(...).")
        self._config = config
        self._tiers: tuple[KVTier, ...] = tuple(tiers) if tiers is not None else tuple(tiers_from_config(config))
        names = [t.name for t in self._tiers]
        if len(set(names)) != len(names):
            raise StoreError(f"KVStore tiers need unique names, got {names}; give each tier its own `name`.")
        self._lock = threading.RLock()
        self._closed = False
        self._hits: dict[str, int] = {}
        self._misses = self._puts = self._rejected = 0
        self._writer = _WriteBehind(config.write_queue) if config.write_behind and self._lower_tiers() else None

    @property
    def config(self) -> StoreConfig:
        return self._config

    @property
    def tiers(self) -> tuple[KVTier, ...]:
        return self._tiers

    def tier(self, name: str) -> KVTier | None:
        return next((t for t in self._tiers if t.name == name), None)

    def _lower_tiers(self) -> tuple[KVTier, ...]:
        """Tiers written as serialized copies (every tier that does not keep tensors)."""
        return tuple(t for t in self._tiers if not t.keeps_tensors)

    # -- lookups -------------------------------------------------------------------------------------------------

    def lookup(self, key: CacheKey, device: torch.device | str | None = None, *,
               expect: tuple[KVGeometry, int] | None = None) -> Hit | None:
        """The entry for ``key`` and the tier that held it (promoted upwards), on ``device`` when given.

        ``expect=(geometry, n_tokens)`` checks the entry's shape and dtype first: a mismatching (forged or foreign)
        entry is deleted from every tier, logged, counted in ``corrupt_dropped`` and reported as a miss.
        """
        self._check_open()
        for level, tier in enumerate(self._tiers):
            kv = tier.get(key)
            if kv is None and self._writer is not None and not tier.keeps_tensors:
                kv = self._writer.pending(key)
            if kv is None:
                continue
            if expect is not None and (reason := expect[0].mismatch(kv, expect[1])) is not None:
                self._reject(key, tier.name, reason)
                break
            with self._lock:
                self._hits[tier.name] = self._hits.get(tier.name, 0) + 1
            if level:
                kv = self._promote(key, kv, self._tiers[:level], device)
            return Hit(_on(kv, device), tier.name)
        with self._lock:
            self._misses += 1
        return None

    def _reject(self, key: CacheKey, tier: str, reason: str) -> None:
        logger.warning("Dropping KV cache entry %s from every tier: the %s tier's copy does not fit the model (%s). "
                       "It will be recomputed.", key.as_str(), tier, reason)
        with self._lock:
            self._rejected += 1
        self.delete(key)

    def delete(self, key: CacheKey) -> int:
        """Remove ``key`` from every tier; return how many tiers held it."""
        self._check_open()
        self.flush()
        removed = 0
        for tier in self._tiers:
            try:
                removed += bool(tier.delete(key))
            except Exception as exc:  # a failing tier must not keep the others from dropping the entry
                logger.warning("KV %s tier delete of %s failed (%r).", tier.name, key.as_str(), exc)
        return removed

    def get(self, key: CacheKey, device: torch.device | str | None = None) -> BlockKV | None:
        """Cached KV for ``key`` (shared, read-only), on ``device`` when given; None on a miss."""
        hit = self.lookup(key, device)
        return hit.kv if hit is not None else None

    def contains(self, key: CacheKey) -> str | None:
        """Name of the first tier that holds ``key``, without touching stats or recency (for inspection)."""
        self._check_open()
        for tier in self._tiers:
            if tier.contains(key):
                return tier.name
        if self._writer is not None and self._writer.pending(key) is not None:
            lower = self._lower_tiers()
            return lower[0].name if lower else None
        return None

    def _promote(self, key: CacheKey, kv: BlockKV, above: Sequence[KVTier],
                 device: torch.device | str | None) -> BlockKV:
        """Write a lower-tier hit into the tiers ``above`` it; return the copy to hand out."""
        for tier in above:
            if tier.keeps_tensors:
                kv = _on(kv, self._config.memory_device or device)
                tier.put(key, kv)
            else:
                self._write(tier, key, kv)
        return kv

    # -- mutations -----------------------------------------------------------------------------------------------

    def put(self, key: CacheKey, kv: BlockKV) -> None:
        """Store ``kv`` for ``key`` (as given) in the tiers that keep tensors and write it to every other tier."""
        self._check_open()
        with self._lock:
            self._puts += 1
        for tier in self._tiers:
            if tier.keeps_tensors:
                tier.put(key, _on(kv, self._config.memory_device))
            else:
                self._write(tier, key, kv)

    def _write(self, tier: KVTier, key: CacheKey, kv: BlockKV) -> None:
        if self._writer is not None:
            self._writer.submit(tier, key, kv)
        else:
            _safe_put(tier, key, kv)

    def flush(self) -> None:
        """Wait until every queued write-behind write has reached its tier (no-op for write-through)."""
        if self._writer is not None:
            self._writer.flush()

    def delete_doc(self, doc_id: str) -> int:
        """Remove ``doc_id`` from every tier (every fingerprint); return entries removed, summed over tiers."""
        self._check_open()
        self.flush()
        return sum(tier.delete_doc(doc_id) for tier in self._tiers)

    def clear(self) -> None:
        """Remove every entry from every tier (stats counters are kept)."""
        self._check_open()
        self.flush()
        for tier in self._tiers:
            tier.clear()

    # -- stats ---------------------------------------------------------------------------------------------------

    def stats(self) -> StoreStats:
        self._check_open()
        tiers = tuple(tier.stats() for tier in self._tiers)
        with self._lock:
            return StoreStats(MappingProxyType(dict(self._hits)), self._misses, self._puts, tiers,
                              self._writer.queued if self._writer is not None else 0, self._rejected)

    def reset_stats(self) -> None:
        with self._lock:
            self._hits.clear()
            self._misses = self._puts = self._rejected = 0
        for tier in self._tiers:
            tier.reset_counters()

    # -- lifecycle -----------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Finish queued writes, then release every tier; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._writer is not None:
            self._writer.close()
        for tier in self._tiers:
            try:
                if tier.keeps_tensors:  # drop the references it holds
                    tier.clear()
                tier.close()
            except Exception as exc:  # a tier that fails to close must not keep the others open
                logger.warning("Closing KV tier %r failed (%r).", tier.name, exc)

    def __enter__(self) -> "KVStore":
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("This KVStore is closed; create a new KVStore to keep using the cache.")


def _safe_put(tier: KVTier, key: CacheKey, kv: BlockKV) -> bool:
    """``tier.put`` that turns an unexpected exception into a logged skipped write (cache faults are not errors)."""
    try:
        return tier.put(key, kv)
    except Exception as exc:
        logger.warning("KV %s tier write of %s failed (%r); skipping it.", tier.name, key.as_str(), exc)
        return False


@dataclass
class _WriteBehind:
    """One background thread writing queued entries to lower tiers; a full queue writes in the caller."""

    maxsize: int
    _queue: "queue.Queue[tuple[KVTier, CacheKey, BlockKV] | None]" = field(init=False)
    _pending: dict[CacheKey, list[BlockKV]] = field(init=False, default_factory=dict)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)
    _thread: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self._queue = queue.Queue(self.maxsize)
        self._thread = threading.Thread(target=self._run, name="block-attention-kv-writer", daemon=True)
        self._thread.start()

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def pending(self, key: CacheKey) -> BlockKV | None:
        with self._lock:
            items = self._pending.get(key)
            return items[-1] if items else None

    def submit(self, tier: KVTier, key: CacheKey, kv: BlockKV) -> None:
        with self._lock:
            self._pending.setdefault(key, []).append(kv)
        try:
            self._queue.put_nowait((tier, key, kv))
        except queue.Full:  # back-pressure: the caller pays for this write
            self._done(tier, key, kv)

    def _done(self, tier: KVTier, key: CacheKey, kv: BlockKV) -> None:
        _safe_put(tier, key, kv)
        with self._lock:
            items = self._pending.get(key)
            if items:
                index = next((i for i, item in enumerate(items) if item is kv), None)
                if index is not None:
                    items.pop(index)
                if not items:
                    del self._pending[key]

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self._done(*item)
            finally:
                self._queue.task_done()

    def flush(self) -> None:
        self._queue.join()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()


def _on(kv: BlockKV, device: torch.device | str | None) -> BlockKV:
    """``kv`` on ``device`` (the same object when no move is needed)."""
    if device is None:
        return kv
    target = torch.device(device)
    if kv.keys.device == target and kv.values.device == target:
        return kv
    return kv.to(target)
