"""RedisTier against a real redis-server: round trips, sharing across stores, bad values, faults, caps, deletes."""

from __future__ import annotations

import logging
import time

import pytest
import redis

from block_attention.core.errors import ConfigError, StoreError
from block_attention.store import KVStore, StoreConfig
from block_attention.store import serialize
from block_attention.store.remote import DEFAULT_PREFIX, RedisTier
from block_attention.testing.kv import key, kv_bitwise_equal, make_kv
from block_attention.testing.redis_server import RedisProcess


def _client(proc: RedisProcess) -> redis.Redis:
    return redis.Redis.from_url(proc.url)


def test_round_trip_contains_delete_stats(redis_proc: RedisProcess) -> None:
    tier = RedisTier(redis_proc.url)
    k, kv = key("doc-1"), make_kv(1)
    assert tier.get(k) is None and not tier.contains(k)
    assert tier.put(k, kv)
    assert tier.contains(k)
    got = tier.get(k)
    assert got is not None and kv_bitwise_equal(got, kv)
    stats = tier.stats()
    assert stats.name == "remote" and stats.entries >= 1 and stats.nbytes > 0 and stats.errors == 0
    raw = _client(redis_proc).get(DEFAULT_PREFIX + k.as_str())
    assert raw[:4] == serialize.MAGIC and kv_bitwise_equal(serialize.loads(k, raw), kv)  # the disk tier's format
    assert tier.delete(k) and tier.get(k) is None and not tier.delete(k)
    tier.close()
    tier.close()


def test_two_stores_share_entries_and_remote_hits_are_promoted(redis_proc: RedisProcess) -> None:
    cfg = StoreConfig(memory_bytes=1 << 20, remote_url=redis_proc.url)
    kv = make_kv(2)
    with KVStore(cfg) as a:
        assert [t.name for t in a.tiers] == ["memory", "remote"]
        a.put(key("shared"), kv)
    with KVStore(cfg) as b:  # another process or machine: empty memory, same Redis
        hit = b.lookup(key("shared"))
        assert hit is not None and hit.tier == "remote" and kv_bitwise_equal(hit.kv, kv)
        again = b.lookup(key("shared"))
        assert again is not None and again.tier == "memory"
        assert b.stats().remote_hits == 1 and b.stats().memory_hits == 1
        assert b.lookup(key("shared", fp="another-model")) is None  # a different model never hits


def test_memory_disk_remote_order(redis_proc: RedisProcess, tmp_path) -> None:
    cfg = StoreConfig(memory_bytes=1 << 20, disk_dir=tmp_path / "kv", remote_url=redis_proc.url)
    with KVStore(cfg) as store:
        assert [t.name for t in store.tiers] == ["memory", "disk", "remote"]
        store.put(key("d"), make_kv(3))
    with KVStore(StoreConfig(memory_bytes=1 << 20, disk_dir=tmp_path / "kv2", remote_url=redis_proc.url)) as s2:
        assert s2.lookup(key("d")).tier == "remote"
        assert s2.contains(key("d")) == "memory"
        assert s2.tier("disk").contains(key("d"))  # promoted into every tier above


def test_foreign_and_corrupted_values_are_misses_and_dropped(redis_proc: RedisProcess,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    tier = RedisTier(redis_proc.url)
    client = _client(redis_proc)
    good = serialize.dumps(key("x"), make_kv(4))
    flipped = bytearray(good)
    flipped[-5] ^= 0xFF
    planted = {
        key("garbage"): b"not a kv entry at all",
        key("pickle"): b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00\x8c\x08builtins\x94.",
        key("flipped"): bytes(flipped),
        key("other-key"): good,  # a valid entry, but for another key
        key("truncated"): good[: len(good) // 2],
    }
    for k, value in planted.items():
        client.set(DEFAULT_PREFIX + k.as_str(), value)
    client.rpush(DEFAULT_PREFIX + key("wrongtype").as_str(), b"a", b"b")
    with caplog.at_level(logging.WARNING, logger="block_attention.store"):
        for k in [*planted, key("wrongtype")]:
            assert tier.get(k) is None
            assert not client.exists(DEFAULT_PREFIX + k.as_str())  # dropped, so it is recomputed and rewritten
    assert tier.stats().corrupt_dropped == len(planted) + 1
    assert sum("Dropping bad KV remote entry" in r.getMessage() for r in caplog.records) == len(planted) + 1
    assert tier.put(key("flipped"), make_kv(5)) and tier.get(key("flipped")) is not None


def test_redis_down_costs_misses_one_warning_then_reconnects(redis_proc: RedisProcess,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    tier = RedisTier(redis_proc.url, timeout_s=0.2, retry_after_s=0.3)
    kv = make_kv(6)
    assert tier.put(key("a"), kv)
    redis_proc.stop()
    with caplog.at_level(logging.INFO, logger="block_attention.store"):
        for _ in range(3):
            assert tier.get(key("a")) is None
            assert not tier.put(key("b"), kv)
            assert not tier.contains(key("a"))
        assert tier.stats().entries == 0
        time.sleep(0.35)
        assert tier.get(key("a")) is None  # retried after the back-off: still down, still no new warning
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "serving without it" in warnings[0].getMessage()
        assert tier.stats().errors >= 2
        redis_proc.start()  # same port, empty (no persistence)
        time.sleep(0.35)
        assert tier.put(key("b"), kv)
        got = tier.get(key("b"))
        assert got is not None and kv_bitwise_equal(got, kv)
        assert any("reachable again" in r.getMessage() for r in caplog.records)


def test_slow_redis_is_a_miss_not_a_hang(redis_proc: RedisProcess) -> None:
    tier = RedisTier(redis_proc.url, timeout_s=0.2, retry_after_s=0.1)
    assert tier.put(key("slow"), make_kv(7))
    _client(redis_proc).client_pause(1500)  # every client's commands now wait 1.5 s
    started = time.monotonic()
    assert tier.get(key("slow")) is None
    assert time.monotonic() - started < 1.2
    assert tier.stats().errors >= 1


def test_out_of_memory_reply_skips_writes(redis_proc: RedisProcess, caplog: pytest.LogCaptureFixture) -> None:
    client = _client(redis_proc)
    client.config_set("maxmemory", "2mb")
    client.config_set("maxmemory-policy", "noeviction")
    tier = RedisTier(redis_proc.url)
    kv = make_kv(8, n_tokens=512)  # 256 KiB per entry
    with caplog.at_level(logging.WARNING, logger="block_attention.store"):
        results = [tier.put(key(f"big-{i}"), kv) for i in range(24)]
    assert results[0] and not all(results)  # the first fit, later ones hit the OOM reply
    assert sum("out of memory" in r.getMessage() for r in caplog.records) == 1
    assert tier.get(key("big-0")) is not None  # reads still work


def test_value_cap_and_ttl(redis_proc: RedisProcess) -> None:
    small = RedisTier(redis_proc.url, max_value_bytes=1024)
    assert not small.put(key("too-big"), make_kv(9)) and small.get(key("too-big")) is None
    tier = RedisTier(redis_proc.url, ttl_s=100)
    assert tier.put(key("ttl"), make_kv(9))
    ttl = _client(redis_proc).ttl(DEFAULT_PREFIX + key("ttl").as_str())
    assert 0 < ttl <= 100


def test_delete_doc_and_clear_touch_only_our_keys(redis_proc: RedisProcess) -> None:
    tier = RedisTier(redis_proc.url)
    odd = 'a b*?[x]\\"'  # glob metacharacters and quotes in a user-chosen id
    tier.put(key(odd, fp="fp-a"), make_kv(1))
    tier.put(key(odd, fp="fp-b"), make_kv(2))
    tier.put(key("a"), make_kv(3))
    client = _client(redis_proc)
    client.set("someone-elses-key", b"keep me")
    assert tier.delete_doc(odd) == 2
    assert tier.get(key(odd, fp="fp-a")) is None and tier.get(key("a")) is not None
    assert tier.clear() >= 1
    assert tier.get(key("a")) is None and client.get("someone-elses-key") == b"keep me"


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"remote_url": "http://localhost:6379"}, "remote_url"),
        ({"remote_url": 6379}, "remote_url"),
        ({"remote_ttl_s": 0}, "remote_ttl_s"),
        ({"remote_ttl_s": 1.5}, "remote_ttl_s"),
        ({"remote_max_value_bytes": 10}, "remote_max_value_bytes"),
        ({"remote_max_value_bytes": 1 << 30}, "remote_max_value_bytes"),
        ({"remote_timeout_s": 0}, "remote_timeout_s"),
        ({"remote_timeout_s": "1"}, "remote_timeout_s"),
    ],
)
def test_remote_config_validation(overrides: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment) as info:
        StoreConfig(**overrides)  # type: ignore[arg-type]
    assert str(info.value).endswith(".") and "pass" in str(info.value)


def test_bad_url_is_a_store_error() -> None:
    with pytest.raises(StoreError, match="redis://"):
        RedisTier("redis://host:notaport/0")
