"""The one contract every KV tier implements (memory, disk, remote, or a backend of your own).

A tier maps :class:`~block_attention.store.keys.CacheKey` to :class:`~block_attention.core.kv.BlockKV`. The
:class:`~block_attention.store.tiered.KVStore` composes an ordered list of tiers (fastest first): a lookup walks
the list, a hit is promoted into the tiers above it, and a write goes to every tier.

Rules for implementers:

* ``get`` returns a validated entry or ``None``. Anything wrong with a stored entry (corrupt, foreign, forged,
  unreachable backend) is a miss: log it, count it in ``corrupt_dropped`` when the entry itself was bad, and
  return ``None``. Never raise for a cache problem and never unpickle anything.
* ``put`` stores the entry and returns whether it did; a failed write is logged and returns ``False``.
  Tiers other than the memory tier must not keep references to the given tensors (serialize or copy).
* ``contains`` says whether an entry is probably there, without validating it and without touching recency.
* Every method is thread-safe. ``close`` is idempotent; a tier is not used after it.

To add a backend (Valkey, S3, a shared file system), subclass :class:`KVTier`, give it a ``name`` and pass it in
``KVStore(config, tiers=[...])`` (fastest first), then hand that store to the engine.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass

from block_attention.core.kv import BlockKV
from block_attention.store.keys import CacheKey


@dataclass(frozen=True)
class TierStats:
    """Size and counters of one tier (counters since construction or the last ``reset_counters``)."""

    name: str
    entries: int
    nbytes: int
    evictions: int = 0
    corrupt_dropped: int = 0
    errors: int = 0


class HitsByTier:
    """Mixin for frozen records with a ``hits_by_tier`` mapping: named views of the standard tiers' hits."""

    hits_by_tier: Mapping[str, int]

    @property
    def hits(self) -> int:
        return sum(self.hits_by_tier.values())

    @property
    def memory_hits(self) -> int:
        return self.hits_by_tier.get("memory", 0)

    @property
    def disk_hits(self) -> int:
        return self.hits_by_tier.get("disk", 0)

    @property
    def remote_hits(self) -> int:
        return self.hits_by_tier.get("remote", 0)


class KVTier(ABC):
    """One level of the KV store. See the module docstring for the contract."""

    #: Short name used in stats and traces ("memory", "disk", "remote", ...). Unique within a store.
    name: str = "tier"

    @abstractmethod
    def get(self, key: CacheKey) -> BlockKV | None:
        """The validated entry for ``key`` (CPU or the tier's device), or ``None`` on a miss or a bad entry."""

    @abstractmethod
    def put(self, key: CacheKey, kv: BlockKV) -> bool:
        """Store ``kv`` under ``key``; return whether it was stored."""

    @abstractmethod
    def contains(self, key: CacheKey) -> bool:
        """Whether an entry for ``key`` is held (not validated; recency untouched)."""

    @abstractmethod
    def delete(self, key: CacheKey) -> bool:
        """Remove the entry for ``key``; return whether one was removed."""

    @abstractmethod
    def delete_doc(self, doc_id: str) -> int:
        """Remove every entry of ``doc_id`` (all fingerprints and versions); return how many."""

    @abstractmethod
    def clear(self) -> int:
        """Remove every entry; return how many (best effort for remote tiers)."""

    @abstractmethod
    def stats(self) -> TierStats:
        """Current size and counters."""

    def reset_counters(self) -> None:
        """Zero the counters reported by :meth:`stats` (sizes are not counters)."""

    def close(self) -> None:
        """Release files, connections and threads; idempotent."""
