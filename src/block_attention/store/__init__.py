"""KV store of Block-Attention: each block's KV, computed once alone, cached by (model fingerprint, doc id, hash).

Contract:

* :class:`KVStore` composes tiers that share one contract (:class:`KVTier`): an in-memory LRU tier (exact byte
  budget) in front of an optional size-bounded disk tier (SQLite index + safetensors value files), write-through or
  write-behind. ``lookup`` says which tier hit; a lower-tier hit is promoted upwards.
* Entries are keyed by :class:`CacheKey`; a changed model or changed document text changes the key, so stale KV is
  never served. ``delete_doc`` drops a document under every fingerprint.
* Returned :class:`~block_attention.core.kv.BlockKV` objects are shared and read-only; ``put`` keeps the tensors it is
  given, so callers hand over fresh tensors and never mutate them afterwards.
* Cache problems are not errors: corrupt entries and I/O failures are logged (``block_attention.store``), dropped
  and reported as misses. Nothing on disk is ever unpickled.
* Configuration is :class:`StoreConfig` (validated, frozen); counters and sizes are :class:`StoreStats`.
"""

from block_attention.store.config import StoreConfig
from block_attention.store.keys import CacheKey
from block_attention.store.tier import KVTier, TierStats
from block_attention.store.tiered import Hit, KVStore, StoreStats

__all__ = ["CacheKey", "Hit", "KVStore", "KVTier", "StoreConfig", "StoreStats", "TierStats"]
