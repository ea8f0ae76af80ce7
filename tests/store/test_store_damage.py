"""Disk tier against a damaged or planted index (issue #27): non-UTF-8 bytes in the schema or in rows, writes that
fail at insert, eviction or commit, a ``cache.db`` or journal that is a link to a file outside, and a ``doc`` column
that lies. Never a traceback, nothing outside the directory read, written or deleted, the byte budget exact.

Everything runs on a real cache directory with real SQLite; faults are injected by wrapping the tier's connection.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from block_attention.core.errors import StoreError
from block_attention.store.disk import DiskTier, value_digest, value_relpath
from block_attention.store.keys import CacheKey
from block_attention.testing.kv import failing_index, key, kv_bitwise_equal, make_kv

MiB = 1024**2
ENTRY = dict(n_tokens=512)  # ~256 KiB per entry


def _disk_state(directory: Path) -> tuple[dict[str, int], dict[str, int]]:
    """(value files on disk: digest -> size, index rows: digest -> size) of a closed tier's directory."""
    files = {p.name[:-5]: p.stat().st_size for p in (directory / "v").rglob("*.bakv") if p.is_file()} \
        if (directory / "v").exists() else {}
    with sqlite3.connect(directory / "cache.db") as con:
        con.text_factory = bytes
        rows = {value_digest(k.decode()): s for k, s in con.execute("SELECT key, size FROM kv_entries")}
    return files, rows


def _on_disk(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file() and not p.is_symlink())


# -- 1. non-UTF-8 bytes in the database ---------------------------------------------------------------------------

def _poke_schema(db: Path, statement: bytes, offset: int, value: int) -> None:
    data = bytearray(db.read_bytes())
    at = data.find(statement)
    assert at >= 0
    data[at + offset] = value
    db.write_bytes(bytes(data))


@pytest.mark.parametrize("statement", [b"CREATE INDEX", b"CREATE TABLE kv_entries"])
def test_schema_with_bytes_that_are_not_utf8_is_moved_aside(tmp_path: Path, statement: bytes,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    directory = tmp_path / "kv"
    tier = DiskTier(directory, 64 * MiB)
    assert tier.put(key(), make_kv())
    tier.close()
    _poke_schema(directory / "cache.db", statement, 9, 0xCC)
    with caplog.at_level(logging.WARNING, logger="block_attention.store"):
        tier = DiskTier(directory, 64 * MiB)  # no UnicodeDecodeError
    assert any("damaged" in r.getMessage() for r in caplog.records)
    assert len(list(directory.glob("cache.db.damaged-*"))) == 1
    assert tier.get(key()) is None and len(tier) == 0  # started empty; the old value file is an orphan, swept
    assert not list((directory / "v").rglob("*.bakv"))
    assert tier.put(key(), make_kv()) and tier.get(key()) is not None
    tier.close()


def test_schema_damaged_under_a_live_tier_is_a_miss_not_a_traceback(tmp_path: Path) -> None:
    directory = tmp_path / "kv"
    tier = DiskTier(directory, 64 * MiB)
    assert tier.put(key(), make_kv())
    other = DiskTier(directory, 64 * MiB)
    _poke_schema(directory / "cache.db", b"CREATE INDEX", 9, 0xCC)
    with sqlite3.connect(directory / "cache.db") as con:  # bump the schema cookie: the live tier re-reads it
        (cookie,) = con.execute("PRAGMA schema_version").fetchone()
    data = bytearray((directory / "cache.db").read_bytes())
    data[40:44] = (cookie + 1).to_bytes(4, "big")
    (directory / "cache.db").write_bytes(bytes(data))
    for t in (tier, other):
        t.get(key()), t.contains(key()), t.put(key(doc="new"), make_kv(1)), len(t), t.clear(), t.delete_doc("x")
        t.stats()
        t.close()
    DiskTier(directory, 64 * MiB).close()  # and the next open moves it aside


def _plant_rows(directory: Path, rows: list[tuple[Any, ...]]) -> None:
    with sqlite3.connect(directory / "cache.db") as con:
        con.executemany("INSERT INTO kv_entries VALUES (CAST(? AS TEXT), CAST(? AS TEXT), ?, ?)", rows)


BAD_KEY_ROWS = [(b"v1|fp|\"\xff\xfe\"|h", b"\"d\"", 4096, 0), (b"\xc3\x28", b"\xff", 10, 1)]


def test_keys_that_are_not_utf8_do_not_stop_sweep_clear_or_eviction(tmp_path: Path) -> None:
    directory = tmp_path / "kv"
    budget = 2 * MiB
    tier = DiskTier(directory, budget)
    assert tier.put(key(doc="kept"), make_kv())
    tier.close()
    _plant_rows(directory, BAD_KEY_ROWS)
    tier = DiskTier(directory, budget)  # the sweep runs through them and drops them
    assert len(tier) == 1 and tier.get(key(doc="kept")) is not None
    tier.close()
    tier = DiskTier(directory, budget)
    _plant_rows(directory, BAD_KEY_ROWS)  # planted under the live tier: no sweep has seen them
    for i in range(20):  # every put needs eviction: the disk never grows past the budget
        assert tier.put(key(doc=f"d{i}"), make_kv(i, **ENTRY)), i
        assert tier.volume() <= budget
    n = len(tier)
    assert tier.clear() == n and len(tier) == 0
    assert not list((directory / "v").rglob("*.bakv"))
    tier.close()


def test_clear_counts_and_removes_rows_with_keys_that_are_not_utf8(tmp_path: Path) -> None:
    directory = tmp_path / "kv"
    tier = DiskTier(directory, 64 * MiB)
    for i in range(3):
        tier.put(key(doc=f"d{i}"), make_kv(i))
    _plant_rows(directory, BAD_KEY_ROWS)
    assert tier.clear() == 5 and len(tier) == 0
    assert not list((directory / "v").rglob("*.bakv"))
    tier.close()


# -- 2. failed writes never leave unindexed files -----------------------------------------------------------------

@pytest.mark.parametrize("fail_on", ["INSERT OR REPLACE INTO kv_entries", "DELETE FROM kv_entries", "COMMIT"])
def test_failed_writes_leave_no_unindexed_file_and_hold_the_budget(tmp_path: Path, fail_on: str) -> None:
    directory = tmp_path / "kv"
    budget = 1 * MiB
    tier = DiskTier(directory, budget)
    for i in range(3):  # a full tier: the next puts need eviction
        assert tier.put(key(doc=f"ok{i}"), make_kv(i, **ENTRY))
    with failing_index(tier, fail_on) as failing:
        for i in range(10):
            assert not tier.put(key(doc=f"failed{i}"), make_kv(100 + i, **ENTRY))
            assert tier.volume() <= budget, i
    assert failing.failures == 10
    assert tier.volume() == _on_disk(directory) <= budget
    files, rows = _disk_state(directory)
    assert set(files) <= set(rows)  # no file without its row
    for i in range(3):
        got = tier.get(key(doc=f"ok{i}"))
        assert got is None or kv_bitwise_equal(got, make_kv(i, **ENTRY))
    assert tier.put(key(doc="after"), make_kv(7, **ENTRY)) and tier.get(key(doc="after")) is not None
    tier.close()
    tier = DiskTier(directory, budget)
    files, rows = _disk_state(directory)
    assert files == rows and tier.volume() == _on_disk(directory) <= budget
    tier.close()


def test_unindexed_files_left_by_a_failed_unlink_are_reclaimed_at_open(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import block_attention.store.disk as disk

    directory = tmp_path / "kv"
    tier = DiskTier(directory, 64 * MiB)
    monkeypatch.setattr(disk, "_unlink_quietly", lambda dir_fd, name: None)  # the clean-up itself fails
    with failing_index(tier, "COMMIT"):
        assert not tier.put(key(), make_kv(**ENTRY))
    tier.close()
    monkeypatch.undo()
    assert list((directory / "v").rglob("*.bakv"))  # an orphan is left ...
    tier = DiskTier(directory, 64 * MiB)  # ... and the open-time sweep reclaims it
    assert not list((directory / "v").rglob("*.bakv")) and not list((directory / "v").rglob("*.tmp"))
    tier.close()


# -- 3. a linked cache.db or journal is never followed ------------------------------------------------------------

def _outside_sqlite(path: Path) -> bytes:
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE precious (x)")
        con.execute("INSERT INTO precious VALUES ('keep me')")
    con.close()
    return path.read_bytes()


@pytest.mark.parametrize("target", ["junk", "sqlite", "tier"])
@pytest.mark.parametrize("name", ["cache.db", "cache.db-journal", "cache.db-wal"])
def test_linked_index_files_are_refused_and_never_followed(tmp_path: Path, target: str, name: str,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    directory = tmp_path / "kv"
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim.db"
    if target == "junk":
        victim.write_bytes(b"outside the cache directory\n" * 200)
    elif target == "sqlite":
        _outside_sqlite(victim)
    else:  # another cache index outside, with an entry of the same key
        other = DiskTier(outside, 64 * MiB)
        other.put(key(), make_kv(5))
        other.close()
        victim = outside / "cache.db"
    before = {p.name: p.read_bytes() for p in outside.rglob("*") if p.is_file()}
    tier = DiskTier(directory, 64 * MiB)
    assert tier.put(key(doc="mine"), make_kv(1))
    tier.close()
    if name == "cache.db":
        (directory / name).unlink()
    (directory / name).symlink_to(victim)
    with caplog.at_level(logging.WARNING, logger="block_attention.store"):
        tier = DiskTier(directory, 64 * MiB)
    assert any("link" in r.getMessage() for r in caplog.records)
    assert not (directory / name).is_symlink() and not (directory / "cache.db").is_symlink()
    assert tier.get(key()) is None  # the outside index's entry is never served
    assert tier.put(key(doc="new"), make_kv(2)) and tier.get(key(doc="new")) is not None
    tier.delete_doc("new"), tier.clear(), tier.stats()
    tier.close()
    after = {p.name: p.read_bytes() for p in outside.rglob("*") if p.is_file()}
    assert after == before  # byte-identical, and no journal appeared beside them


def test_link_planted_under_a_live_tier_is_removed_before_sqlite_opens_it(tmp_path: Path) -> None:
    directory = tmp_path / "kv"
    victim = tmp_path / "victim.bin"
    victim.write_bytes(b"outside\n" * 100)
    tier = DiskTier(directory, 64 * MiB)
    assert tier.put(key(), make_kv())
    (directory / "cache.db-journal").symlink_to(victim)
    assert tier.get(key()) is not None
    assert tier.put(key(doc="b"), make_kv(1))
    assert not os.path.lexists(directory / "cache.db-journal")
    tier.close()
    assert victim.read_bytes() == b"outside\n" * 100
    assert not list(tmp_path.glob("victim.bin-*"))


# -- 4. the doc column is derived from the key, never trusted ------------------------------------------------------

def _rebuild_without_constraints(directory: Path) -> None:
    with sqlite3.connect(directory / "cache.db") as con:
        con.executescript("""
            ALTER TABLE kv_entries RENAME TO old;
            CREATE TABLE kv_entries (key TEXT PRIMARY KEY, doc, size, access);
            INSERT INTO kv_entries SELECT * FROM old; DROP TABLE old;
            CREATE INDEX kv_entries_access ON kv_entries (access);
            CREATE INDEX kv_entries_doc ON kv_entries (doc);
        """)


def _set_doc_column(directory: Path, k: CacheKey, value: object) -> None:
    """Rebuild the index without constraints, then set the doc column of ``k``'s row to ``value``."""
    _rebuild_without_constraints(directory)
    with sqlite3.connect(directory / "cache.db") as con:
        sql = "UPDATE kv_entries SET doc = CAST(? AS TEXT) WHERE key = ?" if isinstance(value, bytes) else \
            "UPDATE kv_entries SET doc = ? WHERE key = ?"
        con.execute(sql, (value, k.as_str()))


DOC_VALUES = {"null": None, "junk": "not json", "other-doc": '"doc-1"', "not-utf8": b"\xff\xfe",
              "blob": sqlite3.Binary(b"\"doc-0\""), "number": 7}


@pytest.mark.parametrize("bad", sorted(DOC_VALUES))
def test_delete_doc_finds_an_entry_whose_doc_column_lies(tmp_path: Path, bad: str) -> None:
    directory = tmp_path / "kv"
    tier = DiskTier(directory, 64 * MiB)
    for d in ("doc-0", "doc-1"):
        assert tier.put(key(doc=d), make_kv()) and tier.put(key(doc=d, fp="fp-b"), make_kv(1))
    _set_doc_column(directory, key(doc="doc-0"), DOC_VALUES[bad])
    assert tier.delete_doc("doc-0") == 2
    assert not tier.contains(key(doc="doc-0")) and not tier.contains(key(doc="doc-0", fp="fp-b"))
    assert not (directory / value_relpath(key(doc="doc-0"))).exists()
    assert tier.contains(key(doc="doc-1")) and tier.get(key(doc="doc-1", fp="fp-b")) is not None
    assert tier.delete_doc("doc-1") == 2 and len(tier) == 0
    tier.close()


@pytest.mark.parametrize("bad", sorted(DOC_VALUES))
def test_sweep_drops_rows_whose_doc_column_disagrees_with_the_key(tmp_path: Path, bad: str) -> None:
    directory = tmp_path / "kv"
    tier = DiskTier(directory, 64 * MiB)
    for d in ("doc-0", "doc-1"):
        assert tier.put(key(doc=d), make_kv())
    tier.close()
    _set_doc_column(directory, key(doc="doc-0"), DOC_VALUES[bad])
    tier = DiskTier(directory, 64 * MiB)
    assert not tier.contains(key(doc="doc-0")) and tier.corrupt_dropped == 1
    assert not (directory / value_relpath(key(doc="doc-0"))).exists()  # its file went with it
    assert tier.get(key(doc="doc-1")) is not None and len(tier) == 1
    tier.close()
    files, rows = _disk_state(directory)
    assert files == rows


@pytest.mark.parametrize("doc", ["plain", 'with "quotes" and |pipes|', "é \u2603 \U0001f600", "", "\\", '"|"'])
@pytest.mark.parametrize("fp", ["fp-a", "f|p", 'f"p|"x"|'])
def test_cache_keys_parse_back_from_their_flat_form(doc: str, fp: str) -> None:
    k = CacheKey(fp, doc, "h|a\"sh")  # type: ignore[arg-type]
    parsed = CacheKey.from_str(k.as_str())
    assert parsed is not None and parsed.as_str() == k.as_str()
    assert parsed == k or '|"' in fp  # (a fingerprint holding '|"' makes the flat form ambiguous, never wrong)
    for junk in ("", "v1|", "v1|fp|doc|h", 'v2|fp|"d"|h', 'v1|fp|"d"', 'v1|fp|"d\\ud800"|h', "x" * 10):
        assert CacheKey.from_str(junk) is None
