"""Names of the library's standard tiers and the named views of stats that read them.

The tier contract (:mod:`block_attention.store.tier`) and the store (:mod:`block_attention.store.tiered`) know
tiers only by their ``name`` and their capabilities; counters are kept per name (``hits_by_tier``, one
:class:`~block_attention.store.tier.TierStats` per tier). The standard tiers are called :data:`MEMORY`,
:data:`DISK` and :data:`REMOTE`; the mixins here give records properties such as ``memory_hits`` or
``disk_bytes`` that read those names (0 when the store has no such tier). A custom tier is counted under its own
name and read with ``hits_by_tier[name]`` / ``StoreStats.tier(name)``.
"""

from __future__ import annotations

from collections.abc import Mapping

MEMORY = "memory"
DISK = "disk"
REMOTE = "remote"


class HitsByTier:
    """Mixin for frozen records with a ``hits_by_tier`` mapping: the total and the standard tiers' hits."""

    hits_by_tier: Mapping[str, int]

    @property
    def hits(self) -> int:
        return sum(self.hits_by_tier.values())

    @property
    def memory_hits(self) -> int:
        return self.hits_by_tier.get(MEMORY, 0)

    @property
    def disk_hits(self) -> int:
        return self.hits_by_tier.get(DISK, 0)

    @property
    def remote_hits(self) -> int:
        return self.hits_by_tier.get(REMOTE, 0)


class StandardTierSizes:
    """Mixin for records with ``_size(tier name, TierStats field)``: the standard tiers' sizes and evictions."""

    def _size(self, name: str, attr: str) -> int:
        raise NotImplementedError

    @property
    def evictions(self) -> int:
        """Memory-tier LRU evictions."""
        return self._size(MEMORY, "evictions")

    @property
    def memory_bytes(self) -> int:
        return self._size(MEMORY, "nbytes")

    @property
    def memory_entries(self) -> int:
        return self._size(MEMORY, "entries")

    @property
    def disk_bytes(self) -> int:
        return self._size(DISK, "nbytes")

    @property
    def disk_entries(self) -> int:
        return self._size(DISK, "entries")


__all__ = ["DISK", "MEMORY", "REMOTE", "HitsByTier", "StandardTierSizes"]
