"""The one contract every KV tier implements (the library's own tiers and any backend of your own).

A tier maps :class:`~block_attention.store.keys.CacheKey` to :class:`~block_attention.core.kv.BlockKV`. The
:class:`~block_attention.store.tiered.KVStore` composes an ordered list of tiers (fastest first): a lookup walks
the list, a hit is promoted into the tiers above it, and a write goes to every tier.

Rules for implementers:

* ``get`` returns a validated entry or ``None``. Anything wrong with a stored entry (corrupt, foreign, forged,
  unreachable backend) is a miss: log it, count it in ``corrupt_dropped`` when the entry itself was bad, and
  return ``None``. Never raise for a cache problem and never unpickle anything.
* ``put`` stores the entry and returns whether it did; a failed write is logged and returns ``False``.
  A tier keeps references to the given tensors only if it says so with ``keeps_tensors = True``; the store then
  hands it the tensors as they are (moved to ``StoreConfig.memory_device`` when one is set), writes to it in the
  caller's thread (never behind), and empties it on close. Any other tier must serialize or copy.
* ``contains`` says whether an entry is probably there, without validating it and without touching recency.
* Every method is thread-safe. ``close`` is idempotent; a tier is not used after it.

To add a backend (Valkey, S3, a shared file system), subclass :class:`KVTier`, give it a ``name`` (the key of its
counters in the store's stats) and its capabilities, pass it in ``KVStore(config, tiers=[...])`` (fastest first),
then hand that store to the engine. The store treats a tier by its capabilities, never by its class or name; the
library's standard tier names live in :mod:`block_attention.store.standard`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
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


class KVTier(ABC):
    """One level of the KV store. See the module docstring for the contract."""

    #: Short name used in stats and traces. Unique within a store.
    name: str = "tier"
    #: Whether ``put`` keeps references to the given tensors instead of serializing or copying them.
    keeps_tensors: bool = False

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
        """Remove every entry; return how many (best effort for shared backends)."""

    @abstractmethod
    def stats(self) -> TierStats:
        """Current size and counters."""

    def reset_counters(self) -> None:
        """Zero the counters reported by :meth:`stats` (sizes are not counters)."""

    def close(self) -> None:
        """Release files, connections and threads; idempotent."""
