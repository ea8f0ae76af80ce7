"""MemoryTier: exact LRU order, exact byte budget, oversized entries, deletes and thread safety."""

from __future__ import annotations

import threading

import pytest

from block_attention.store.memory import MemoryTier
from block_attention.testing.kv import make_kv

ENTRY = make_kv().nbytes  # 4096 bytes


def test_entry_size_assumption() -> None:
    assert ENTRY == 4096


def test_get_returns_the_stored_object_and_miss_is_none() -> None:
    tier: MemoryTier[str] = MemoryTier(10 * ENTRY)
    kv = make_kv(1)
    assert tier.put("a", kv)
    assert tier.get("a") is kv
    assert tier.get("zzz") is None


def test_eviction_is_exact_lru_with_exact_budget() -> None:
    tier: MemoryTier[str] = MemoryTier(3 * ENTRY)  # exactly three entries fit
    for name in "abc":
        tier.put(name, make_kv())
    assert tier.nbytes == 3 * ENTRY and tier.evictions == 0  # == budget is allowed
    assert tier.get("a") is not None  # refresh a: order is now b, c, a
    tier.put("d", make_kv())
    assert tier.keys() == ["c", "a", "d"] and tier.evictions == 1
    assert tier.contains("c")  # contains does not refresh ...
    tier.put("e", make_kv())
    assert tier.keys() == ["a", "d", "e"]  # ... so c was the LRU victim
    assert tier.nbytes == 3 * ENTRY and tier.evictions == 2


def test_mixed_sizes_evict_until_within_budget() -> None:
    tier: MemoryTier[str] = MemoryTier(4 * ENTRY)
    tier.put("s1", make_kv())
    tier.put("s2", make_kv())
    tier.put("s3", make_kv())
    big = make_kv(n_tokens=16)  # 2 * ENTRY
    tier.put("big", big)  # total 5 * ENTRY -> evict s1 only
    assert tier.keys() == ["s2", "s3", "big"] and tier.nbytes == 4 * ENTRY
    tier.put("big2", make_kv(n_tokens=24))  # 3 * ENTRY: 7 > 4, evict s2, s3, big in LRU order
    assert tier.keys() == ["big2"] and tier.nbytes == 3 * ENTRY
    assert tier.evictions == 4


def test_replace_keeps_exact_accounting_and_refreshes() -> None:
    tier: MemoryTier[str] = MemoryTier(10 * ENTRY)
    tier.put("a", make_kv())
    tier.put("b", make_kv())
    replacement = make_kv(n_tokens=16)
    tier.put("a", replacement)
    assert tier.keys() == ["b", "a"] and tier.get("a") is replacement
    assert tier.nbytes == 3 * ENTRY and len(tier) == 2 and tier.evictions == 0


def test_oversized_entry_is_not_stored_and_evicts_nothing() -> None:
    tier: MemoryTier[str] = MemoryTier(2 * ENTRY)
    tier.put("a", make_kv())
    tier.put("old", make_kv())
    assert tier.put("huge", make_kv(n_tokens=24)) is False
    assert tier.keys() == ["a", "old"] and tier.evictions == 0
    assert tier.put("old", make_kv(n_tokens=24)) is False  # a replacement too large drops the stale entry
    assert tier.keys() == ["a"] and tier.nbytes == ENTRY


def test_zero_budget_stores_nothing() -> None:
    tier: MemoryTier[str] = MemoryTier(0)
    assert tier.put("a", make_kv()) is False
    assert len(tier) == 0 and tier.nbytes == 0


def test_deletes_and_clear() -> None:
    tier: MemoryTier[str] = MemoryTier(10 * ENTRY)
    for name in ["x1", "x2", "y1", "y2"]:
        tier.put(name, make_kv())
    assert tier.delete_where(lambda k: k.startswith("x")) == 2
    assert tier.delete_keys(["y1", "nope"]) == 1
    assert tier.keys() == ["y2"] and tier.nbytes == ENTRY
    assert tier.clear() == 1
    assert len(tier) == 0 and tier.nbytes == 0 and tier.evictions == 0


def test_invalid_budget() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        MemoryTier(-1)


def test_concurrent_puts_and_gets_keep_exact_accounting() -> None:
    tier: MemoryTier[int] = MemoryTier(20 * ENTRY)
    kvs = [make_kv(i, n_tokens=8 * (1 + i % 3)) for i in range(12)]
    errors: list[BaseException] = []

    def worker(offset: int) -> None:
        try:
            for step in range(300):
                i = (offset + step) % len(kvs)
                tier.put(i, kvs[i])
                tier.get((i * 7) % len(kvs))
                if step % 50 == 0:
                    tier.delete_where(lambda k: k == offset)
        except BaseException as exc:  # pragma: no cover - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    held = tier.keys()
    assert tier.nbytes == sum(kvs[i].nbytes for i in held) <= tier.max_bytes
