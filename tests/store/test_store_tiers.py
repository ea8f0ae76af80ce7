"""The tier contract: lookup names the tier, promotion walks upward, a custom backend is one class, write-behind."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from block_attention.core.errors import StoreError
from block_attention.core.kv import BlockKV
from block_attention.store import CacheKey, KVStore, KVTier, StoreConfig, TierStats
from block_attention.store import serialize
from block_attention.store.memory import MemoryTier
from block_attention.testing.kv import key, kv_bitwise_equal, make_kv

ENTRY = make_kv().nbytes


class BytesTier(KVTier):
    """A minimal third-party backend: a dict of serialized bytes (what a Valkey or S3 tier would hold)."""

    name = "remote"

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.data: dict[str, bytes] = {}
        self.gate = gate
        self.puts = 0

    def get(self, key: CacheKey) -> BlockKV | None:
        raw = self.data.get(key.as_str())
        return serialize.loads(key, raw) if raw is not None else None

    def put(self, key: CacheKey, kv: BlockKV) -> bool:
        if self.gate is not None:
            self.gate.wait(10)
        self.data[key.as_str()] = serialize.dumps(key, kv)
        self.puts += 1
        return True

    def contains(self, key: CacheKey) -> bool:
        return key.as_str() in self.data

    def delete(self, key: CacheKey) -> bool:
        return self.data.pop(key.as_str(), None) is not None

    def delete_doc(self, doc_id: str) -> int:
        doomed = [k for k in self.data if k.split("|")[2] == f'"{doc_id}"']
        for k in doomed:
            del self.data[k]
        return len(doomed)

    def clear(self) -> int:
        n = len(self.data)
        self.data.clear()
        return n

    def stats(self) -> TierStats:
        return TierStats(self.name, len(self.data), sum(map(len, self.data.values())))


class FailingTier(BytesTier):
    name = "flaky"

    def put(self, key: CacheKey, kv: BlockKV) -> bool:
        raise ConnectionError("backend down")


def test_lookup_names_the_tier_and_promotes_upwards(tmp_path: Path) -> None:
    remote = BytesTier()
    remote.put(key(), make_kv(7))
    cfg = StoreConfig(memory_bytes=8 * ENTRY, disk_dir=tmp_path / "kv")
    with KVStore(cfg, tiers=[MemoryTier(8 * ENTRY), _disk(tmp_path), remote]) as store:
        assert [t.name for t in store.tiers] == ["memory", "disk", "remote"]
        hit = store.lookup(key())
        assert hit is not None and hit.tier == "remote" and kv_bitwise_equal(hit.kv, make_kv(7))
        assert store.contains(key()) == "memory"  # promoted into every tier above
        assert store.tier("disk").contains(key())  # type: ignore[union-attr]
        second = store.lookup(key())
        assert second is not None and second.tier == "memory"
        assert store.lookup(key(doc="absent")) is None
        stats = store.stats()
        assert dict(stats.hits_by_tier) == {"remote": 1, "memory": 1} and stats.misses == 1
        assert stats.remote_hits == 1 and stats.hits == 2
        assert stats.tier("remote") == TierStats("remote", 1, len(remote.data[key().as_str()]))


def _disk(tmp_path: Path) -> KVTier:
    from block_attention.store.disk import DiskTier

    return DiskTier(tmp_path / "kv", 64 << 20)


def test_put_reaches_every_tier_and_delete_doc_clears_them(tmp_path: Path) -> None:
    remote = BytesTier()
    with KVStore(StoreConfig(), tiers=[MemoryTier(8 * ENTRY), remote]) as store:
        store.put(key(doc="a"), make_kv(1))
        store.put(key(doc="b"), make_kv(2))
        assert remote.puts == 2 and store.stats().puts == 2
        assert store.delete_doc("a") == 2  # memory + remote
        assert store.contains(key(doc="a")) is None and store.contains(key(doc="b")) == "memory"


def test_a_failing_tier_costs_a_skipped_write_not_an_error(caplog: pytest.LogCaptureFixture) -> None:
    with KVStore(StoreConfig(), tiers=[MemoryTier(8 * ENTRY), FailingTier()]) as store:
        store.put(key(), make_kv(3))
        assert "flaky tier write" in caplog.text
        assert store.lookup(key()).tier == "memory"  # type: ignore[union-attr]


def test_tier_names_must_be_unique() -> None:
    with pytest.raises(StoreError, match="unique names"):
        KVStore(StoreConfig(), tiers=[BytesTier(), BytesTier()])


def test_write_behind_returns_before_the_lower_tier_write_and_flushes() -> None:
    gate = threading.Event()
    remote = BytesTier(gate)
    cfg = StoreConfig(memory_bytes=0, write_behind=True, write_queue=4)
    store = KVStore(cfg, tiers=[remote])
    store.put(key(), make_kv(5))  # returns while the backend is still blocked
    assert remote.puts == 0 and not remote.data
    hit = store.lookup(key())  # served from the pending write, never a miss
    assert hit is not None and hit.tier == "remote" and kv_bitwise_equal(hit.kv, make_kv(5))
    gate.set()
    store.flush()
    assert remote.puts == 1 and remote.contains(key())
    store.close()


def test_write_behind_close_loses_nothing(tmp_path: Path) -> None:
    cfg = StoreConfig(memory_bytes=4 * ENTRY, disk_dir=tmp_path / "kv", write_behind=True, write_queue=2)
    with KVStore(cfg) as store:
        for i in range(12):  # more than the queue holds: the caller writes when it is full
            store.put(key(doc=f"d{i}"), make_kv(i))
    with KVStore(StoreConfig(memory_bytes=0, disk_dir=tmp_path / "kv")) as reopened:
        for i in range(12):
            out = reopened.get(key(doc=f"d{i}"))
            assert out is not None and kv_bitwise_equal(out, make_kv(i))


def test_write_behind_config_is_validated() -> None:
    from block_attention.core.errors import ConfigError

    with pytest.raises(ConfigError, match="write_queue"):
        StoreConfig(write_queue=0)
    with pytest.raises(ConfigError, match="write_behind"):
        StoreConfig(write_behind="yes")  # type: ignore[arg-type]
