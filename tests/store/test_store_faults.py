"""Disk tier under attack and abuse (issue #15, classes 1, 2, 4, 5, 6): a database truncated under a live process,
tampered paths and file types, killed writers, exact LRU eviction, read-only directories and odd index rows.

Everything runs on a real cache directory; the SIGBUS and SIGKILL cases run in real subprocesses.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from block_attention.core.errors import StoreError
from block_attention.store import serialize
from block_attention.store.disk import DiskTier, value_relpath
from block_attention.testing.kv import key, kv_bitwise_equal, make_kv, plant_special_file

MiB = 1024**2
LARGE = dict(n_tokens=128)  # ~64 KiB per entry


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}


def _python(script: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], capture_output=True, text=True,
                          env=_env(), timeout=timeout)


def _files(directory: Path) -> dict[str, int]:
    """Every regular file under ``directory`` (relative path -> size)."""
    return {str(p.relative_to(directory)): p.stat().st_size for p in directory.rglob("*") if p.is_file()}


def _consistent(directory: Path) -> None:
    """No temporary file, every value file indexed with its exact size, every row backed by its file."""
    files = _files(directory)
    assert not [f for f in files if f.endswith(".tmp")]
    with sqlite3.connect(directory / "cache.db") as con:
        rows = con.execute("SELECT key, size FROM kv_entries").fetchall()
    from block_attention.store.disk import value_digest
    expected = {os.path.join("v", value_digest(k)[:2], value_digest(k) + ".bakv"): size for k, size in rows}
    values = {f: s for f, s in files.items() if f.endswith(".bakv")}
    assert values == expected


# -- 1. a database truncated under a live process ----------------------------------------------------------------

TRUNCATE_LIVE = """
    import os, sys
    from block_attention.store.disk import DiskTier
    from block_attention.testing.kv import key, make_kv
    directory = sys.argv[1]
    tier = DiskTier(directory, 64 << 20)
    for i in range(20):
        tier.put(key(doc=f"d{i}"), make_kv(i, n_tokens=16))
    for size in (0, 4096, 100):
        with open(os.path.join(directory, "cache.db"), "r+b") as f:
            f.truncate(size)
        for i in range(20):
            tier.get(key(doc=f"d{i}"))
            tier.contains(key(doc=f"d{i}"))
        tier.put(key(doc="new"), make_kv(99))
        len(tier), tier.volume(), tier.stats()
    tier.close()
    reopened = DiskTier(directory, 64 << 20)  # damaged: moved aside, fresh index, still works
    assert reopened.put(key(doc="again"), make_kv(1)) and reopened.get(key(doc="again")) is not None
    reopened.close()
    print("survived")
"""


def test_truncating_the_database_under_a_live_process_never_kills_it(tmp_path: Path) -> None:
    res = _python(TRUNCATE_LIVE, str(tmp_path / "kv"))
    assert res.returncode == 0, (res.returncode, signal.Signals(-res.returncode).name if res.returncode < 0 else "",
                                 res.stderr[-3000:])
    assert res.stdout.strip().endswith("survived")


def test_index_never_memory_maps(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path / "kv", 64 * MiB)
    assert tier._con.execute("PRAGMA mmap_size").fetchone()[0] == 0
    tier.close()


# -- 2. never touch a path the library did not derive ------------------------------------------------------------

def test_value_paths_are_derived_from_the_key_and_stay_inside(tmp_path: Path) -> None:
    for doc in ("../victim", "/etc/passwd", "a/../../b", "\x00nul", "é" * 300, "\\" * 50):
        rel = value_relpath(key(doc=doc))
        parts = Path(rel).parts
        assert parts[0] == "v" and len(parts) == 3 and ".." not in parts and not os.path.isabs(rel)
    tier = DiskTier(tmp_path / "kv", 64 * MiB)
    assert tier.put(key(doc="../victim"), make_kv()) and tier.get(key(doc="../victim")) is not None
    assert not (tmp_path / "victim").exists()
    tier.close()


@pytest.mark.parametrize("plant", ["symlink-file", "symlink-devzero", "fifo", "directory", "symlink-subdir"])
def test_planted_links_and_special_files_are_refused_without_following(tmp_path: Path, plant: str) -> None:
    directory = tmp_path / "kv"
    victim = tmp_path / "victim"
    planted = serialize.dumps(key(), make_kv(**LARGE))
    victim.write_bytes(planted)  # even a valid entry outside is never read
    tier = DiskTier(directory, 64 * MiB)
    kv = make_kv(**LARGE)
    assert tier.put(key(), kv)
    path = directory / value_relpath(key())
    size = path.stat().st_size
    if plant != "symlink-subdir":
        plant_special_file(path, {"symlink-file": "symlink-outside"}.get(plant, plant), victim)
    else:  # the whole <2 hex> directory replaced by a link to a directory outside
        outside = tmp_path / "outside"
        outside.mkdir()
        shutil.copy(victim, outside / path.name)
        os.truncate(outside / path.name, size)
        shutil.rmtree(path.parent)
        path.parent.symlink_to(outside, target_is_directory=True)
    started = time.monotonic()
    assert tier.get(key()) is None  # refused, no hang, no MemoryError
    assert time.monotonic() - started < 5
    assert tier.corrupt_dropped == 1 and not tier.contains(key())
    assert victim.exists() and victim.read_bytes() == planted
    if plant == "symlink-subdir":
        assert (tmp_path / "outside" / path.name).exists()  # nothing deleted through the link
    elif plant != "directory":
        assert not os.path.lexists(path)  # the planted entry itself is gone
    assert tier.put(key(), kv) or plant == "symlink-subdir"
    tier.close()


def test_planted_entries_are_swept_at_open_without_following(tmp_path: Path) -> None:
    directory = tmp_path / "kv"
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    DiskTier(directory, 64 * MiB).close()
    sub = directory / "v" / "ab"
    sub.mkdir(parents=True)
    (sub / ("ab" + "0" * 38 + ".bakv")).symlink_to(victim)
    os.mkfifo(sub / "fifo")
    (sub / "stray.bin").write_bytes(b"x" * 100)
    tier = DiskTier(directory, 64 * MiB)
    assert sorted(os.listdir(sub)) == [] and victim.read_text() == "keep me"
    tier.close()


# -- 4. crash-consistent writes ----------------------------------------------------------------------------------

WRITER = """
    import sys
    from block_attention.store.disk import DiskTier
    from block_attention.testing.kv import key, make_kv
    tier = DiskTier(sys.argv[1], int(sys.argv[2]))
    i = 0
    print("ready", flush=True)
    while True:
        tier.put(key(doc=f"w{i % 300}"), make_kv(i, n_tokens=512))  # ~256 KiB per entry
        i += 1
"""


def test_writer_killed_mid_write_leaves_no_orphans_after_reopen(tmp_path: Path) -> None:
    directory = tmp_path / "kv"
    budget = 4 * MiB
    for round_ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(WRITER), str(directory), str(budget)],
                                stdout=subprocess.PIPE, env=_env())
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        time.sleep(0.3 + 0.2 * round_)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    tier = DiskTier(directory, budget)
    _consistent(directory)
    assert tier.volume() == sum(_files(directory).values()) <= budget
    for k in [key(doc=f"w{i}") for i in range(300)]:
        if tier.contains(k):
            assert tier.get(k) is not None
    tier.close()


def test_dead_writers_temporary_files_and_unindexed_values_are_swept(tmp_path: Path) -> None:
    directory = tmp_path / "kv"
    tier = DiskTier(directory, 64 * MiB)
    tier.put(key(doc="kept"), make_kv())
    tier.close()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    digest = "cd" + "1" * 38
    sub = directory / "v" / "cd"
    sub.mkdir(parents=True, exist_ok=True)
    (sub / f"{digest}.{dead_pid}.abcdef.tmp").write_bytes(b"half a write")
    (sub / f"{digest}.{os.getpid()}.abcdef.tmp").write_bytes(b"a live writer's file")  # kept: writer alive
    (sub / f"{digest}.bakv").write_bytes(b"renamed but never indexed")
    tier = DiskTier(directory, 64 * MiB)
    assert sorted(os.listdir(sub)) == [f"{digest}.{os.getpid()}.abcdef.tmp"]
    assert tier.get(key(doc="kept")) is not None and len(tier) == 1
    (sub / f"{digest}.{os.getpid()}.abcdef.tmp").unlink()
    assert tier.volume() == sum(_files(directory).values())
    tier.close()


def test_volume_counts_every_file_the_tier_keeps(tmp_path: Path) -> None:
    directory = tmp_path / "kv"
    tier = DiskTier(directory, 64 * MiB)
    for i in range(5):
        tier.put(key(doc=f"d{i}"), make_kv(i, **LARGE))
    (directory / "cache.db-wal").write_bytes(b"w" * 5000)  # SQLite side files count too
    assert tier.volume() == sum(_files(directory).values())
    tier.close()


# -- 5. exact eviction -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("budget_entries", [1.5, 3.5, 16.5])
def test_eviction_is_exact_lru_while_over_budget(tmp_path: Path, budget_entries: float) -> None:
    entry = len(serialize.dumps(key(), make_kv(**LARGE)))
    budget = max(MiB, int(entry * budget_entries))
    tier = DiskTier(tmp_path / "kv", budget)
    keys = [key(doc=f"d{i:02d}") for i in range(40)]
    for i, k in enumerate(keys):
        assert tier.put(k, make_kv(i, **LARGE))
        if i >= 1:
            assert tier.get_bytes(keys[0]) is not None or i < 2  # d00 stays the most recently used
        held = [j for j, other in enumerate(keys[: i + 1]) if tier.contains(other)]
        volume = tier.volume()
        assert k in [keys[j] for j in held]  # never evicts what was just written
        assert volume <= budget
        assert volume + entry > budget - 8192 or len(held) == i + 1  # evicted no more than needed (8 KiB margin)
        rest = [j for j in held if j != 0]
        assert rest == list(range(i + 1 - len(rest), i + 1))  # the survivors are the newest (LRU order)
    assert tier.contains(keys[0])
    assert tier.evictions == 40 - len(tier)
    tier.close()


def test_small_budget_does_not_empty_itself(tmp_path: Path) -> None:
    entry = len(serialize.dumps(key(), make_kv(n_tokens=1024)))  # ~512 KiB: 1 MiB holds one, barely two
    tier = DiskTier(tmp_path / "kv", MiB)
    for i in range(10):
        assert tier.put(key(doc=f"d{i}"), make_kv(i, n_tokens=1024))
        assert len(tier) >= 1 and tier.get(key(doc=f"d{i}")) is not None
        assert tier.volume() <= MiB < tier.volume() + entry + 8192
    tier.close()


# -- 6. read-only and odd states ---------------------------------------------------------------------------------

READ_ONLY = """
    import sys
    from block_attention.store.disk import DiskTier
    from block_attention.testing.kv import key, make_kv, kv_bitwise_equal
    tier = DiskTier(sys.argv[1], 64 << 20)
    assert tier.read_only
    got = tier.get(key(doc="a"))
    assert got is not None and kv_bitwise_equal(got, make_kv(1))
    assert tier.put(key(doc="b"), make_kv(2)) is False and tier.get(key(doc="b")) is None
    assert tier.delete_doc("a") == 0 and tier.clear() == 0 and len(tier) == 1
    tier.close()
    print("read-only ok")
"""


def _run_read_only(target: Path, script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` with ``target`` (a directory or a file) made read-only: a read-only bind mount in a private
    user+mount namespace when running as root (root ignores permission bits), else ``chmod``."""
    if os.geteuid() != 0:
        mode = target.stat().st_mode
        target.chmod(0o555 if target.is_dir() else 0o444)
        try:
            return _python(script, *args)
        finally:
            target.chmod(mode)
    if shutil.which("unshare") is None:
        pytest.skip("running as root without unshare: cannot make a directory read-only for root")
    wrapper = (f'mount --bind "$1" "$1" && mount -o remount,ro,bind "$1" && shift && exec "$@"')
    return subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", wrapper, "sh",
                           str(target), sys.executable, "-c", textwrap.dedent(script), *args],
                          capture_output=True, text=True, env=_env(), timeout=120)


@pytest.mark.parametrize("what", ["directory", "database"])
def test_read_only_cache_serves_hits_and_skips_writes(tmp_path: Path, what: str) -> None:
    directory = tmp_path / "kv"
    tier = DiskTier(directory, 64 * MiB)
    tier.put(key(doc="a"), make_kv(1))
    tier.close()
    before = _files(directory)
    res = _run_read_only(directory if what == "directory" else directory / "cache.db", READ_ONLY, str(directory))
    if "Operation not permitted" in res.stderr or "unshare failed" in res.stderr:
        pytest.skip(f"user namespaces are not available here: {res.stderr[-300:]}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "read-only ok" in res.stdout and "Traceback" not in res.stderr
    assert _files(directory) == before  # nothing renamed aside, nothing written


def test_read_only_directory_without_index_is_a_store_error(tmp_path: Path) -> None:
    directory = tmp_path / "empty"
    directory.mkdir()
    script = """
        import sys
        from block_attention.core.errors import StoreError
        from block_attention.store.disk import DiskTier
        try:
            DiskTier(sys.argv[1], 64 << 20)
        except StoreError as exc:
            print("StoreError:", exc)
    """
    res = _run_read_only(directory, script, str(directory))
    if "Operation not permitted" in res.stderr or "unshare failed" in res.stderr:
        pytest.skip(f"user namespaces are not available here: {res.stderr[-300:]}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "StoreError:" in res.stdout and "disk_dir=None" in res.stdout


def test_unknown_meta_rows_are_ignored_and_another_schema_is_a_store_error(tmp_path: Path) -> None:
    directory = tmp_path / "kv"
    tier = DiskTier(directory, 64 * MiB)
    tier.put(key(), make_kv())
    tier.close()
    with sqlite3.connect(directory / "cache.db") as con:
        con.execute("INSERT INTO kv_meta VALUES ('unknown', 'x'), ('sqlite_mmap_size', '1073741824'), (NULL, NULL)")
    tier = DiskTier(directory, 64 * MiB)
    assert tier.get(key()) is not None
    tier.close()
    with sqlite3.connect(directory / "cache.db") as con:
        con.execute("UPDATE kv_meta SET value = '999' WHERE name = 'schema'")
    with pytest.raises(StoreError, match="schema"):
        DiskTier(directory, 64 * MiB)
    assert (directory / "cache.db").exists() and not list(directory.glob("cache.db.damaged-*"))  # healthy: kept


def test_rows_of_the_wrong_types_are_dropped_not_raised(tmp_path: Path) -> None:
    directory = tmp_path / "kv"
    tier = DiskTier(directory, 64 * MiB)
    kv = make_kv()
    tier.put(key(), kv)
    tier.close()
    with sqlite3.connect(directory / "cache.db") as con:  # an index rebuilt without constraints, odd rows in it
        con.executescript("""
            ALTER TABLE kv_entries RENAME TO old;
            CREATE TABLE kv_entries (key, doc, size, access);
            INSERT INTO kv_entries SELECT * FROM old; DROP TABLE old;
            CREATE INDEX kv_entries_access ON kv_entries (access);
            INSERT INTO kv_entries VALUES (NULL, NULL, NULL, NULL), (42, x'00', 'big', 'soon'),
                                          ('v1|x|"d"|h', '"d"', NULL, 1), (x'ff', 1.5, -5, NULL);
        """)
    tier = DiskTier(directory, 64 * MiB)
    assert len(tier) == 1
    got = tier.get(key())
    assert got is not None and kv_bitwise_equal(got, kv)
    with sqlite3.connect(directory / "cache.db") as con:  # the same rows planted under a live tier
        con.execute("""INSERT INTO kv_entries VALUES ('v1|fp-a|"doc-0"|hash-9', NULL, NULL, NULL)""")
        con.execute("""UPDATE kv_entries SET size = 'abc' WHERE key = ?""", (key().as_str(),))
    assert tier.get(key(content="hash-9")) is None and tier.get(key()) is None
    assert tier.put(key(doc="new"), make_kv(3)) and tier.get(key(doc="new")) is not None
    assert tier.clear() >= 1
    tier.close()


def test_damaged_database_is_moved_aside_but_a_locked_or_healthy_one_never(tmp_path: Path) -> None:
    directory = tmp_path / "kv"
    directory.mkdir()
    (directory / "cache.db").write_bytes(b"SQLite format 3\x00" + b"\xff" * 5000)
    tier = DiskTier(directory, 64 * MiB)
    assert len(list(directory.glob("cache.db.damaged-*"))) == 1
    assert tier.put(key(), make_kv())
    tier.close()
    for _ in range(3):  # reopening a healthy database never moves it
        DiskTier(directory, 64 * MiB).close()
    assert len(list(directory.glob("cache.db.damaged-*"))) == 1


def test_value_root_replaced_by_a_link_outside_is_never_followed(tmp_path: Path) -> None:
    directory = tmp_path / "kv"
    tier = DiskTier(directory, 64 * MiB)
    tier.put(key(), make_kv())
    tier.close()
    outside = tmp_path / "outside"
    (outside / "ab").mkdir(parents=True)
    (outside / "ab" / "precious.txt").write_text("keep me")
    (outside / "stray").write_text("keep me too")
    shutil.rmtree(directory / "v")
    (directory / "v").symlink_to(outside, target_is_directory=True)
    tier = DiskTier(directory, 64 * MiB)  # sweep: removes the link itself, nothing behind it
    assert not os.path.lexists(directory / "v")
    assert (outside / "ab" / "precious.txt").read_text() == "keep me" and (outside / "stray").exists()
    assert tier.get(key()) is None and tier.put(key(), make_kv()) and tier.get(key()) is not None
    tier.close()
