"""DiskTier on a real cache directory: restart round trips, corruption, planted pickles, bounds, I/O errors."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pickle

import diskcache
import pytest

from block_attention.core.errors import StoreError
from block_attention.store import serialize
from block_attention.store.disk import DiskTier, value_relpath
from block_attention.store.keys import CacheKey
from block_attention.testing.kv import key, kv_bitwise_equal, make_kv

MiB = 1024**2
SMALL = dict(n_tokens=8)  # 4 KiB of tensors
LARGE = dict(n_tokens=128)  # 64 KiB of tensors


class Planted:
    """Unpickling this touches ``marker``: proof that a pickle was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., None], tuple[Path]]:
        return (Path.touch, (self.marker,))


@pytest.fixture
def tier(tmp_path: Path) -> Iterator[DiskTier]:
    t = DiskTier(tmp_path / "kv", 64 * MiB)
    yield t
    t.close()


def _rewrite(directory: Path, k: CacheKey, fn: Callable[[bytes], bytes]) -> None:
    """Apply ``fn`` to the stored bytes of ``k`` (its value file), keeping the index row's size consistent."""
    path = directory / value_relpath(k)
    data = fn(path.read_bytes())
    path.write_bytes(data)
    with sqlite3.connect(directory / "cache.db") as con:
        con.execute("UPDATE kv_entries SET size = ? WHERE key = ?", (len(data), k.as_str()))


def _flip(data: bytes) -> bytes:
    out = bytearray(data)
    out[len(out) // 2] ^= 0x40
    return bytes(out)


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["inline", "file"])
def test_round_trip_after_restart_is_bitwise(tmp_path: Path, size: dict[str, int]) -> None:
    kv = make_kv(7, **size)
    first = DiskTier(tmp_path / "kv", 64 * MiB)
    assert first.put(key(), kv)
    first.close()
    second = DiskTier(tmp_path / "kv", 64 * MiB)
    out = second.get(key())
    assert out is not None and kv_bitwise_equal(out, kv)
    assert second.contains(key()) and len(second) == 1
    second.close()


def test_other_fingerprint_or_hash_is_a_miss(tier: DiskTier) -> None:
    tier.put(key(), make_kv())
    assert tier.get(key(fp="fp-b")) is None
    assert tier.get(key(content="hash-1")) is None
    assert tier.get_bytes(key(doc="other")) is None
    assert tier.corrupt_dropped == 0


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["inline", "file"])
@pytest.mark.parametrize("damage", [lambda b: b[: len(b) // 2], _flip], ids=["truncated", "flipped"])
def test_damaged_entry_is_dropped_logged_and_missed(
    tmp_path: Path, size: dict[str, int], damage: Callable[[bytes], bytes], caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "kv"
    tier = DiskTier(directory, 64 * MiB)
    tier.put(key(), make_kv(**size))
    _rewrite(directory, key(), damage)
    with caplog.at_level(logging.WARNING, logger="block_attention.store"):
        assert tier.get(key()) is None
    assert tier.corrupt_dropped == 1 and not tier.contains(key()) and len(tier) == 0
    assert any("corrupt" in r.getMessage().lower() and r.name == "block_attention.store" for r in caplog.records)
    tier.close()


def test_entry_copied_into_another_keys_slot_is_corrupt(tier: DiskTier, caplog: pytest.LogCaptureFixture) -> None:
    assert tier.put_bytes(key(doc="victim"), serialize.dumps(key(doc="source"), make_kv()))
    with caplog.at_level(logging.WARNING, logger="block_attention.store"):
        assert tier.get(key(doc="victim")) is None
    assert tier.corrupt_dropped == 1 and not tier.contains(key(doc="victim"))
    assert "does not match the requested key" in caplog.text


@pytest.mark.parametrize("padding", [0, 100_000], ids=["inline-pickle", "file-pickle"])
def test_planted_pickles_are_never_unpickled(tmp_path: Path, padding: int) -> None:
    """A foreign diskcache writer (pickling by default) planting keys and values in the directory: never run."""
    directory = tmp_path / "kv"
    DiskTier(directory, 64 * MiB).close()
    marker, key_marker = tmp_path / "pwned", tmp_path / "pwned-key"
    with diskcache.Cache(str(directory)) as plain:
        plain.set(key().as_str(), (Planted(marker), "x" * padding), tag=key().doc_id)
        plain.set(Planted(key_marker), b"payload")
        plain.set(key(doc="control").as_str(), Planted(tmp_path / "control"))
    (directory / value_relpath(key())).parent.mkdir(parents=True, exist_ok=True)
    (directory / value_relpath(key())).write_bytes(pickle.dumps(Planted(marker)))  # a pickle at the right path

    tier = DiskTier(directory, 64 * MiB)
    assert tier.get_bytes(key()) is None and tier.get(key()) is None
    assert tier.put(key(), make_kv()) and tier.get(key()) is not None
    assert len(tier) == 1
    tier.close()
    assert not marker.exists() and not key_marker.exists()
    with diskcache.Cache(str(directory)) as plain:  # control: the plain Disk *would* have run the payload
        plain.get(key(doc="control").as_str())
    assert (tmp_path / "control").exists()


def test_delete_doc_removes_every_fingerprint(tier: DiskTier) -> None:
    tier.put(key(doc="d1", fp="a"), make_kv(1))
    tier.put(key(doc="d1", fp="b"), make_kv(2))
    tier.put(key(doc="d2", fp="a"), make_kv(3))
    assert tier.delete_doc("d1") == 2
    assert not tier.contains(key(doc="d1", fp="a")) and not tier.contains(key(doc="d1", fp="b"))
    assert tier.get(key(doc="d2", fp="a")) is not None
    assert tier.delete_doc("nothing") == 0


def test_byte_bound_culls_least_recently_used(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path / "kv", 1 * MiB)
    entry = len(serialize.dumps(key(), make_kv(**LARGE)))  # ~64 KiB, file-backed
    keys = [key(doc=f"d{i}") for i in range(40)]  # ~2.6 MiB written in total
    for i, k in enumerate(keys):
        assert tier.put(k, make_kv(i, **LARGE))
        assert tier.get_bytes(keys[0]) is not None  # keep d0 recently used
        assert tier.volume() <= 1 * MiB + entry
    held = [k for k in keys if tier.contains(k)]
    assert len(held) < 20 and tier.contains(keys[0]) and tier.contains(keys[-1])
    assert not tier.contains(keys[1])
    tier.close()


def test_entry_larger_than_the_budget_is_not_written(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tier = DiskTier(tmp_path / "kv", 1 * MiB)
    tier.put(key(doc="small"), make_kv())
    with caplog.at_level(logging.WARNING, logger="block_attention.store"):
        assert tier.put(key(doc="huge"), make_kv(n_tokens=4096)) is False  # 2 MiB
    assert not tier.contains(key(doc="huge")) and tier.contains(key(doc="small"))
    assert "larger than the disk tier budget" in caplog.text
    tier.close()


def test_io_errors_are_misses_and_skipped_writes(
    tier: DiskTier, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    tier.put(key(), make_kv())

    class BrokenConnection:
        def execute(self, *args: object, **kwargs: object) -> None:
            raise sqlite3.OperationalError("disk I/O error")

    with caplog.at_level(logging.WARNING, logger="block_attention.store"):
        monkeypatch.setattr(tier, "_con", BrokenConnection())
        assert tier.get(key()) is None
        assert tier.put(key(doc="new"), make_kv()) is False
    assert tier.corrupt_dropped == 0
    assert "read of" in caplog.text and "write of" in caplog.text
    monkeypatch.undo()
    assert not list(Path(tier.directory).rglob("*.tmp"))  # the failed write left no temporary file


def test_missing_value_file_is_a_miss(tmp_path: Path) -> None:
    directory = tmp_path / "kv"
    tier = DiskTier(directory, 64 * MiB)
    tier.put(key(), make_kv(**LARGE))
    for path in directory.rglob("*.bakv"):
        path.unlink()
    assert tier.get(key()) is None
    assert tier.put(key(), make_kv(**LARGE)) and tier.get(key()) is not None  # rewritable afterwards
    tier.close()


def test_unusable_directory_raises_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="disk_dir"):
        DiskTier(blocker / "sub", 64 * MiB)
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "cache.db").write_bytes(b"this is not an sqlite database" * 100)
    recovered = DiskTier(damaged, 64 * MiB)  # a damaged database is a cache failure: recover, never crash
    assert len(recovered) == 0 and recovered.get(key()) is None
    assert recovered.put(key(), make_kv()) and recovered.get(key()) is not None
    assert list(damaged.glob("cache.db.damaged-*"))
    recovered.close()


def test_clear(tier: DiskTier) -> None:
    tier.put(key(doc="a"), make_kv())
    tier.put(key(doc="b"), make_kv(**LARGE))
    assert tier.clear() == 2 and len(tier) == 0
