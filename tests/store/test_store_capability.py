"""The store treats a tier by its capability (``KVTier.keeps_tensors``), never by its class or its name."""

from __future__ import annotations

import threading

from block_attention.core.kv import BlockKV
from block_attention.store import CacheKey, KVStore, KVTier, StoreConfig, TierStats
from block_attention.store import serialize, standard
from block_attention.store.memory import MemoryTier
from block_attention.store.tier import KVTier as ContractTier
from block_attention.testing.kv import key, kv_bitwise_equal, make_kv

ENTRY = make_kv().nbytes


class BytesTier(KVTier):
    """A serializing backend whose writes wait for ``gate`` (to see whether a write ran behind or in the caller)."""

    name = "bytes"

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.data: dict[str, bytes] = {}
        self.gate = gate

    def get(self, key: CacheKey) -> BlockKV | None:
        raw = self.data.get(key.as_str())
        return serialize.loads(key, raw) if raw is not None else None

    def put(self, key: CacheKey, kv: BlockKV) -> bool:
        if self.gate is not None:
            assert self.gate.wait(10)
        self.data[key.as_str()] = serialize.dumps(key, kv)
        return True

    def contains(self, key: CacheKey) -> bool:
        return key.as_str() in self.data

    def delete(self, key: CacheKey) -> bool:
        return self.data.pop(key.as_str(), None) is not None

    def delete_doc(self, doc_id: str) -> int:
        return 0

    def clear(self) -> int:
        n = len(self.data)
        self.data.clear()
        return n

    def stats(self) -> TierStats:
        return TierStats(self.name, len(self.data), sum(map(len, self.data.values())))


class PoolTier(KVTier):
    """A third-party tier that keeps the tensors it is handed (say, a pinned-memory pool); not a MemoryTier."""

    name = "pool"
    keeps_tensors = True

    def __init__(self) -> None:
        self.entries: dict[CacheKey, BlockKV] = {}
        self.writers: list[str] = []  # the thread of each put

    def get(self, key: CacheKey) -> BlockKV | None:
        return self.entries.get(key)

    def put(self, key: CacheKey, kv: BlockKV) -> bool:
        self.writers.append(threading.current_thread().name)
        self.entries[key] = kv
        return True

    def contains(self, key: CacheKey) -> bool:
        return key in self.entries

    def delete(self, key: CacheKey) -> bool:
        return self.entries.pop(key, None) is not None

    def delete_doc(self, doc_id: str) -> int:
        return 0

    def clear(self) -> int:
        n = len(self.entries)
        self.entries.clear()
        return n

    def stats(self) -> TierStats:
        return TierStats(self.name, len(self.entries), sum(kv.nbytes for kv in self.entries.values()))


class CopyingMemoryTier(MemoryTier):
    """A MemoryTier subclass that declares it does not keep tensors: the store must write it like any copy tier."""

    name = "copying"
    keeps_tensors = False

    def __init__(self, max_bytes: int) -> None:
        super().__init__(max_bytes)
        self.writers: list[str] = []  # the thread of each put

    def put(self, key: CacheKey, kv: BlockKV) -> bool:
        self.writers.append(threading.current_thread().name)
        return super().put(key, kv)


def test_the_contract_names_no_tier() -> None:
    import inspect

    import block_attention.store.tier as contract

    source = inspect.getsource(contract).lower()
    assert not any(name in source for name in ('"memory"', '"disk"', '"remote"', "memory_hits", "disk_hits"))
    assert ContractTier.keeps_tensors is False and MemoryTier.keeps_tensors is True


def test_a_custom_tensor_keeping_tier_is_written_in_place_and_in_the_callers_thread() -> None:
    gate = threading.Event()
    pool, lower = PoolTier(), BytesTier(gate)
    with KVStore(StoreConfig(write_behind=True, write_queue=4), tiers=[pool, lower]) as store:
        kv = make_kv(3)
        store.put(key(), kv)  # returns although the lower write waits for the gate
        assert pool.entries[key()] is kv  # kept as given, synchronously
        assert not lower.contains(key()) and store.contains(key()) == "pool"
        hit = store.lookup(key())
        assert hit is not None and hit.tier == "pool" and hit.kv is kv
        gate.set()
        store.flush()
        assert lower.contains(key())
        pool.clear()
        hit = store.lookup(key())  # from the lower tier, promoted into the pool as the handed-out object
        assert hit is not None and hit.tier == "bytes" and kv_bitwise_equal(hit.kv, kv)
        assert pool.entries[key()] is hit.kv
        assert pool.writers == [threading.current_thread().name] * 2  # put and promotion, never behind
        stats = store.stats()
        assert dict(stats.hits_by_tier) == {"pool": 1, "bytes": 1} and stats.hits == 2
        assert (stats.memory_hits, stats.disk_hits, stats.remote_hits, stats.memory_bytes) == (0, 0, 0, 0)
        assert stats.tier("pool") is not None and stats.tier("pool").entries == 1  # type: ignore[union-attr]
    assert pool.entries == {}  # a tier that keeps tensors is emptied on close


def test_a_memory_tier_class_that_copies_is_written_behind_like_any_copy_tier() -> None:
    copying, lower = CopyingMemoryTier(8 * ENTRY), BytesTier()
    with KVStore(StoreConfig(write_behind=True, write_queue=4), tiers=[copying, lower]) as store:
        store.put(key(), make_kv(5))
        store.flush()
        assert copying.contains(key()) and lower.contains(key())
        assert copying.writers == ["block-attention-kv-writer"]  # on the write-behind thread, not the caller's


def test_standard_names_read_the_standard_tiers() -> None:
    with KVStore(StoreConfig(memory_bytes=4 * ENTRY)) as store:
        store.put(key(), make_kv(1))
        assert store.lookup(key()) is not None
        stats = store.stats()
        assert stats.tiers[0].name == standard.MEMORY and stats.memory_hits == 1 and stats.memory_entries == 1
        assert stats.memory_bytes == ENTRY and stats.disk_bytes == 0
