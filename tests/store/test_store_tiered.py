"""KVStore and StoreConfig: tiering, promotion across restarts, corruption, deletes, stats, devices, threads."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from pathlib import Path

import pytest
import torch

from block_attention.core.errors import ConfigError, StoreError
from block_attention.store import CacheKey, KVStore, StoreConfig, StoreStats
from block_attention.store.disk import value_relpath
from block_attention.testing.kv import key, kv_bitwise_equal, make_kv

MiB = 1024**2
ENTRY = make_kv().nbytes


def _store(tmp_path: Path, **overrides: object) -> KVStore:
    settings: dict[str, object] = {"memory_bytes": 64 * ENTRY, "disk_dir": tmp_path / "kv", "disk_bytes": 64 * MiB}
    settings.update(overrides)
    return KVStore(StoreConfig(**settings))  # type: ignore[arg-type]


def _counts(stats: StoreStats) -> tuple[int, int, int, int]:
    return stats.memory_hits, stats.disk_hits, stats.misses, stats.puts


# -- StoreConfig ---------------------------------------------------------------------------------------------------


def test_config_defaults_and_pathlike(tmp_path: Path) -> None:
    cfg = StoreConfig()
    assert cfg.memory_bytes == 2 * 1024**3 and cfg.disk_dir is None and cfg.disk_bytes == 20 * 1024**3
    assert cfg.memory_device is None and cfg.memory_enabled and not cfg.disk_enabled
    assert StoreConfig(disk_dir=tmp_path / "new", memory_bytes=0, memory_device="cpu").disk_enabled


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"memory_bytes": -1}, "memory_bytes"),
        ({"memory_bytes": 1.5}, "memory_bytes"),
        ({"memory_bytes": True}, "memory_bytes"),
        ({"disk_bytes": 1024}, "disk_bytes"),
        ({"disk_bytes": "20GB"}, "disk_bytes"),
        ({"disk_dir": ""}, "disk_dir"),
        ({"disk_dir": 42}, "disk_dir"),
        ({"memory_device": "not-a-device"}, "memory_device"),
        ({"memory_device": torch.device("cpu")}, "memory_device"),
    ],
)
def test_config_validation(overrides: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment) as info:
        StoreConfig(**overrides)  # type: ignore[arg-type]
    message = str(info.value)
    assert message.endswith(".") and "pass" in message  # a full sentence naming the fix


def test_config_rejects_a_file_as_disk_dir(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        StoreConfig(disk_dir=path)


def test_config_is_frozen() -> None:
    with pytest.raises(AttributeError):
        StoreConfig().memory_bytes = 1  # type: ignore[misc]


# -- KVStore -------------------------------------------------------------------------------------------------------


def test_put_then_memory_hit_returns_the_given_object(tmp_path: Path) -> None:
    with _store(tmp_path) as store:
        kv = make_kv(1)
        store.put(key(), kv)
        assert store.contains(key()) == "memory"
        assert store.get(key()) is kv  # stored as given, shared
        stats = store.stats()
        assert _counts(stats) == (1, 0, 0, 1)
        assert stats.memory_bytes == ENTRY and stats.memory_entries == 1 and stats.disk_entries == 1
        assert stats.disk_bytes > 0 and stats.hits == 1


def test_disk_hit_after_restart_is_bitwise_and_promoted(tmp_path: Path) -> None:
    kv = make_kv(2, dtype=torch.bfloat16)
    with _store(tmp_path) as first:
        first.put(key(), kv)
    with _store(tmp_path) as second:
        assert second.contains(key()) == "disk"
        assert second.stats().memory_entries == 0
        out = second.get(key())
        assert out is not None and kv_bitwise_equal(out, kv)
        assert second.contains(key()) == "memory"
        again = second.get(key())
        assert again is out
        stats = second.stats()
        assert _counts(stats) == (1, 1, 0, 0) and stats.memory_entries == 1


def test_misses_for_unknown_fingerprint_hash_or_doc(tmp_path: Path) -> None:
    with _store(tmp_path) as store:
        store.put(key(), make_kv())
        for other in (key(fp="fp-b"), key(content="hash-1"), key(doc="doc-9")):
            assert store.get(other) is None and store.contains(other) is None
        assert _counts(store.stats()) == (0, 0, 3, 1)


@pytest.mark.parametrize("mode", ["truncate", "flip"])
def test_corrupt_disk_entry_is_dropped_and_counted(
    tmp_path: Path, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    with _store(tmp_path) as store:
        store.put(key(), make_kv(n_tokens=128))  # file-backed entry
    (value_file,) = (tmp_path / "kv").rglob("*.bakv")
    data = bytearray(value_file.read_bytes())
    if mode == "truncate":
        data = data[: len(data) - 1000]
    else:
        data[-5] ^= 0xFF
    value_file.write_bytes(bytes(data))
    with _store(tmp_path) as store, caplog.at_level(logging.WARNING, logger="block_attention.store"):
        assert store.get(key()) is None
        stats = store.stats()
        assert stats.corrupt_dropped == 1 and stats.misses == 1 and stats.disk_entries == 0
        assert store.contains(key()) is None
    assert any(r.levelno == logging.WARNING and "corrupt" in r.getMessage().lower() for r in caplog.records)


def test_entry_moved_to_another_keys_slot_is_corrupt(tmp_path: Path) -> None:
    with _store(tmp_path) as store:
        store.put(key(doc="a"), make_kv(1))
        store.put(key(doc="b"), make_kv(2))
    root = tmp_path / "kv"
    (root / value_relpath(key(doc="b"))).write_bytes((root / value_relpath(key(doc="a"))).read_bytes())
    with sqlite3.connect(root / "cache.db") as con:  # keep the index's size consistent with the copied file
        (size,) = con.execute("SELECT size FROM kv_entries WHERE key = ?", (key(doc="a").as_str(),)).fetchone()
        con.execute("UPDATE kv_entries SET size = ? WHERE key = ?", (size, key(doc="b").as_str()))
    with _store(tmp_path) as store:
        assert store.get(key(doc="b")) is None
        assert store.get(key(doc="a")) is not None
        assert store.stats().corrupt_dropped == 1


def test_memory_eviction_falls_back_to_disk(tmp_path: Path) -> None:
    with _store(tmp_path, memory_bytes=2 * ENTRY) as store:
        for i in range(3):
            store.put(key(doc=f"d{i}"), make_kv(i))
        assert store.stats().evictions == 1
        assert store.contains(key(doc="d0")) == "disk"
        out = store.get(key(doc="d0"))
        assert out is not None and kv_bitwise_equal(out, make_kv(0))
        stats = store.stats()
        assert stats.disk_hits == 1 and stats.evictions == 2 and stats.memory_bytes == 2 * ENTRY


def test_delete_doc_removes_both_tiers_and_all_fingerprints(tmp_path: Path) -> None:
    with _store(tmp_path) as store:
        store.put(key(doc="x", fp="a"), make_kv(1))
        store.put(key(doc="x", fp="b"), make_kv(2))
        store.put(key(doc="y", fp="a"), make_kv(3))
        assert store.delete_doc("x") == 4  # two entries, each in both tiers
        assert store.contains(key(doc="x", fp="a")) is None and store.contains(key(doc="x", fp="b")) is None
        assert store.get(key(doc="x", fp="a")) is None
        assert store.contains(key(doc="y", fp="a")) == "memory"
    with _store(tmp_path) as reopened:
        assert reopened.get(key(doc="x", fp="b")) is None and reopened.get(key(doc="y", fp="a")) is not None


def test_clear_and_reset_stats(tmp_path: Path) -> None:
    with _store(tmp_path) as store:
        store.put(key(), make_kv())
        store.get(key())
        store.get(key(doc="missing"))
        store.clear()
        assert store.contains(key()) is None
        stats = store.stats()
        assert stats.memory_entries == 0 and stats.disk_entries == 0 and _counts(stats) == (1, 0, 1, 1)
        store.reset_stats()
        assert _counts(store.stats()) == (0, 0, 0, 0)


def test_memory_only_and_disk_only(tmp_path: Path) -> None:
    with KVStore(StoreConfig(memory_bytes=10 * ENTRY)) as mem_only:
        mem_only.put(key(), make_kv())
        assert mem_only.contains(key()) == "memory" and mem_only.stats().disk_bytes == 0
    with _store(tmp_path, memory_bytes=0) as disk_only:
        disk_only.put(key(), make_kv(3))
        assert disk_only.contains(key()) == "disk"
        out = disk_only.get(key())
        assert out is not None and kv_bitwise_equal(out, make_kv(3))
        assert disk_only.contains(key()) == "disk" and disk_only.stats().disk_hits == 1


def test_devices_for_promotion_and_return(tmp_path: Path) -> None:
    """'meta' stands in for an accelerator: it exercises every move without needing one."""
    with _store(tmp_path) as store:
        store.put(key(), make_kv())
    with _store(tmp_path) as store:
        out = store.get(key(), device="meta")
        assert out is not None and out.keys.device.type == "meta"
        assert store.get(key()) is out  # promoted on the requested device (no memory_device configured)
    with _store(tmp_path, memory_device="cpu") as store:
        out = store.get(key(), device="meta")
        assert out is not None and out.keys.device.type == "meta"
        cached = store.get(key())
        assert cached is not None and cached.keys.device.type == "cpu"  # memory copy lives on memory_device


def test_put_moves_to_memory_device(tmp_path: Path) -> None:
    with _store(tmp_path, memory_device="meta") as store:
        store.put(key(), make_kv(4))
        assert store.get(key()).keys.device.type == "meta"  # type: ignore[union-attr]
    with _store(tmp_path) as store:
        out = store.get(key())  # the disk copy was written from the original CPU tensors
        assert out is not None and kv_bitwise_equal(out, make_kv(4))


def test_closed_store_raises_and_close_is_idempotent(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.close()
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.get(key())
    with pytest.raises(StoreError, match="closed"):
        store.put(key(), make_kv())


def test_unwritable_disk_dir_raises_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError):
        KVStore(StoreConfig(disk_dir=os.path.join(blocker, "sub")))


def test_concurrent_use(tmp_path: Path) -> None:
    keys = [CacheKey("fp", f"doc{i}", "h") for i in range(16)]
    kvs = [make_kv(i) for i in range(16)]
    errors: list[BaseException] = []
    with _store(tmp_path, memory_bytes=6 * ENTRY) as store:

        def worker(offset: int) -> None:
            try:
                for step in range(40):
                    i = (offset * 5 + step) % len(keys)
                    store.put(keys[i], kvs[i])
                    out = store.get(keys[(i + 3) % len(keys)])
                    if out is not None:
                        j = (i + 3) % len(keys)
                        assert kv_bitwise_equal(out, kvs[j])
                    store.contains(keys[i])
            except BaseException as exc:  # pragma: no cover - surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        stats = store.stats()
        assert stats.puts == 6 * 40 and stats.memory_hits + stats.disk_hits + stats.misses == 6 * 40
        assert stats.memory_bytes == stats.memory_entries * ENTRY <= 6 * ENTRY
        assert stats.corrupt_dropped == 0
