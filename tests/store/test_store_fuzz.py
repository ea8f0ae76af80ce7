"""Seeded, bounded fuzz of the disk tier.

* Under a live engine (issues #15, #27): 300 random corruptions of stored values, index rows and the database
  (content, names, file types, modes, sizes, bytes that are not UTF-8, a lying doc column, links for ``cache.db``
  and its journal, writes failing at insert, eviction or commit), each followed by a request. Zero crashes, every
  answer equal to an uncached engine's, nothing outside the cache directory touched, and the directory consistent
  (no orphans, budget respected) after a reopen.
* On the tier alone (issue #27): 600 steps of puts, gets, ``delete_doc`` and ``clear`` under the faults of #27 only,
  checked after every step: every hit bitwise what was last written under its key, ``delete_doc`` leaves no row
  naming the document, the byte budget exact after every put (failed ones included), no value file without its
  row after a failed write, the outside junk file and outside SQLite file byte-identical with no journal beside.
"""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
from collections import Counter
from pathlib import Path

import torch

from block_attention import Block, BlockAttentionEngine, EngineConfig, PromptConfig, StoreConfig
from block_attention.store.disk import DiskTier, value_digest
from block_attention.store.keys import CacheKey
from block_attention.testing import SAMPLE_QUESTION as QUESTION
from block_attention.testing import sample_blocks, tiny_model
from block_attention.testing.kv import SPECIAL_FILES, failing_index, key, kv_bitwise_equal, make_kv, \
    plant_special_file

SEED = 1515
CORRUPTIONS = 300
BUDGET = 1 << 20
DOCS = sample_blocks()

REQUESTS = [[0, 1, 2], [2, 0], [3, 4, 1], [4, 0, 2, 3], [1]]


def _value_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "v").rglob("*") if not p.is_dir() or p.is_symlink()) if (root / "v").exists() \
        else []


def _rows(con: sqlite3.Connection) -> list[tuple[int, object]]:
    return con.execute("SELECT rowid, key FROM kv_entries").fetchall()


ENGINE_WRITE_FAULTS = {"fail-insert": "INSERT OR REPLACE INTO kv_entries", "fail-evict": "DELETE FROM kv_entries",
                       "fail-commit": "COMMIT"}


def _corrupt(rng: random.Random, root: Path, victim: Path, victim_db: Path) -> str:
    """Apply one random corruption; return its kind (a write fault is applied by the caller, around the request)."""
    # regular value files only: writing "through" a link planted by an earlier step would be the test, not the
    # library, touching the victim outside the directory
    files = [p for p in _value_files(root) if p.name.endswith(".bakv") and p.is_file() and not p.is_symlink()]
    file_kinds = ["flip", "truncate", "extend", "junk", "empty", "swap", "symlink-outside", "symlink-devzero",
                  "fifo", "directory", "delete", "chmod", "rename"]
    row_kinds = ["size-int", "size-text", "size-null", "size-negative", "size-huge", "key-swap", "key-null",
                 "doc-junk", "access-text", "delete-row", "junk-row", "meta-row",
                 "key-not-utf8", "doc-other", "doc-not-utf8"]
    db_kinds = ["db-page", "schema-not-utf8", "db-link-outside", "journal-link-outside"]
    kinds = (file_kinds if files else []) + row_kinds + db_kinds + list(ENGINE_WRITE_FAULTS)
    kind = rng.choice(kinds)
    path = rng.choice(files) if files else None
    if kind in file_kinds:
        assert path is not None
        data = path.read_bytes() if path.is_file() and not path.is_symlink() else b""
        if kind == "flip" and data:
            i = rng.randrange(len(data))
            path.write_bytes(data[:i] + bytes([data[i] ^ (1 << rng.randrange(8))]) + data[i + 1:])
        elif kind == "truncate":
            path.write_bytes(data[: rng.randrange(len(data) + 1)])
        elif kind == "extend":
            path.write_bytes(data + rng.randbytes(rng.randrange(1, 5000)))
        elif kind == "junk":
            path.write_bytes(rng.randbytes(len(data)))
        elif kind == "empty":
            path.write_bytes(b"")
        elif kind == "swap":
            other = rng.choice(files)
            if other.is_file() and not other.is_symlink():
                path.write_bytes(other.read_bytes())
        elif kind in SPECIAL_FILES:
            plant_special_file(path, kind, victim)
        elif kind == "delete":
            path.unlink()
        elif kind == "chmod":
            path.chmod(rng.choice([0o000, 0o200, 0o444, 0o777]))
        elif kind == "rename":
            target = path.parent / f"{path.name[:2]}{rng.randbytes(19).hex()}.bakv"
            path.rename(target)
        return kind
    if kind in ENGINE_WRITE_FAULTS:
        return kind
    if kind == "schema-not-utf8":
        _poke_schema(root)
        return kind
    if kind in ("db-link-outside", "journal-link-outside"):
        _link(root, "cache.db" if kind == "db-link-outside" else "cache.db-journal", rng.choice([victim, victim_db]))
        return kind
    if kind in ("key-not-utf8", "doc-other", "doc-not-utf8"):
        _row_fault(rng, root, kind)
        return kind
    if kind == "db-page":  # overwrite one page in the middle of the database file
        db = root / "cache.db"
        if not db.is_file() or db.is_symlink():
            return kind
        size = db.stat().st_size
        if size > 8192:
            with open(db, "r+b") as f:
                f.seek(rng.randrange(4096, size - 4096) // 4096 * 4096)
                f.write(rng.randbytes(4096))
        return kind
    if not (root / "cache.db").is_file() or (root / "cache.db").is_symlink():
        return kind  # (removed by the tier after a planted link: nothing to edit until the next reopen)
    con = sqlite3.connect(root / "cache.db", timeout=30)
    try:
        rows = _rows(con)
        rowid = rng.choice(rows)[0] if rows else None
        updates = {
            "size-int": ("size", rng.randrange(1, 300_000)), "size-text": ("size", "abc"), "size-null": ("size", None),
            "size-negative": ("size", -rng.randrange(1, 10**6)), "size-huge": ("size", 2**62),
            "key-null": ("key", None), "doc-junk": ("doc", rng.randbytes(8)), "access-text": ("access", "later"),
        }
        if kind in updates and rowid is not None:
            column, value = updates[kind]
            con.execute(f"UPDATE kv_entries SET {column} = ? WHERE rowid = ?", (value, rowid))
        elif kind == "key-swap" and len(rows) >= 2:
            (a, ka), (b, kb) = rng.sample(rows, 2)
            con.execute("UPDATE kv_entries SET key = NULL WHERE rowid = ?", (a,))
            con.execute("UPDATE kv_entries SET key = ? WHERE rowid = ?", (ka, b))
            con.execute("UPDATE kv_entries SET key = ? WHERE rowid = ?", (kb, a))
        elif kind == "delete-row" and rowid is not None:
            con.execute("DELETE FROM kv_entries WHERE rowid = ?", (rowid,))
        elif kind == "junk-row":
            con.execute("INSERT OR REPLACE INTO kv_entries VALUES (?, ?, ?, ?)",
                        (f'v1|{rng.randbytes(16).hex()}|"x"|h', '"x"', rng.randrange(0, 10**6), -1))
        elif kind == "meta-row":
            con.execute("INSERT OR REPLACE INTO kv_meta VALUES (?, ?)", (f"unknown-{rng.randrange(100)}", "1"))
        con.commit()
    except sqlite3.DatabaseError:
        pass  # the database itself was damaged by an earlier db-page corruption
    finally:
        con.close()
    return kind


def test_fuzzed_cache_never_crashes_and_never_answers_wrong(tmp_path: Path, tok) -> None:
    rng = random.Random(SEED)
    torch.manual_seed(SEED)
    model = tiny_model("llama", seed=0)
    plain = BlockAttentionEngine(model, tok, EngineConfig(prompt=PromptConfig()), store=False)
    want = {tuple(r): plain.prefill([DOCS[i] for i in r], QUESTION, all_logits=True).logits for r in REQUESTS}
    root = tmp_path / "kv"
    victim, victim_db = plant_outside(tmp_path / "outside")
    outside_before = _outside_state(tmp_path / "outside")
    config = StoreConfig(memory_bytes=0, disk_dir=str(root), disk_bytes=BUDGET)
    engine = BlockAttentionEngine(model, tok, EngineConfig(prompt=PromptConfig()), store=config)
    engine.prefill(DOCS, QUESTION)  # every block cached before the first corruption
    kinds: Counter[str] = Counter()
    hits = failed_writes = 0
    for step in range(CORRUPTIONS):
        request = REQUESTS[step % len(REQUESTS)]
        kind = _corrupt(rng, root, victim, victim_db)
        kinds[kind] += 1
        if kind in ENGINE_WRITE_FAULTS:  # every write of this request fails at that statement
            disk = engine.store.tier("disk")
            engine.store.delete_doc(DOCS[request[0]].doc_id)  # (so that this request writes at least one entry)
            before = _value_names(root)
            with failing_index(disk, ENGINE_WRITE_FAULTS[kind]) as failing:
                out = engine.prefill([DOCS[i] for i in request], QUESTION, all_logits=True)
            failed_writes += failing.failures
            assert (_value_names(root) - before) <= set(_rows_by_doc(root)[1]), (step, kind)
        else:
            out = engine.prefill([DOCS[i] for i in request], QUESTION, all_logits=True)
        hits += out.stats.hits
        got, ref = out.logits, want[tuple(request)]
        assert got.shape == ref.shape and (got - ref).abs().max().item() <= 1e-4, (step, kinds)
        assert torch.equal(got.argmax(-1), ref.argmax(-1))
        if step % 40 == 39:  # reopen: the sweep and the damaged-database recovery run on fuzzed state
            engine.close()
            engine = BlockAttentionEngine(model, tok, EngineConfig(prompt=PromptConfig()), store=config)
    engine.close()
    print("fuzz corruption kinds:", dict(sorted(kinds.items())), "failed writes:", failed_writes)  # the table in docs/reliability.md
    assert sum(kinds.values()) == CORRUPTIONS and len(kinds) >= 20, kinds
    assert failed_writes >= 20, failed_writes  # the injected write faults really failed writes
    assert hits > CORRUPTIONS  # the cache kept serving between corruptions (requests are re-stored after each)
    assert _outside_state(tmp_path / "outside") == outside_before  # byte-identical, no journal beside them

    for p in (root / "v").rglob("*"):  # undo modes a root-less run could not read, then check consistency
        if not p.is_symlink():
            p.chmod(0o755 if p.is_dir() else 0o644)
    tier = DiskTier(root, BUDGET)
    assert tier.volume() <= BUDGET
    con = sqlite3.connect(root / "cache.db")
    indexed = {value_digest(k): size for k, size in con.execute("SELECT key, size FROM kv_entries")
               if isinstance(k, str)}
    con.close()
    on_disk = {p.name[:-5]: p.stat().st_size for p in (root / "v").rglob("*") if p.is_file() and not p.is_symlink()}
    assert on_disk == indexed  # no orphans, no temporary files, no rows without their file
    assert not [p for p in (root / "v").rglob("*") if p.is_symlink() or (not p.is_file() and not p.is_dir())]
    tier.close()
    shutil.rmtree(root)


# -- the tier alone under the faults of issue #27 ----------------------------------------------------------------

TIER_SEED = 2727
TIER_STEPS = 600
WRITE_FAULTS = {"fail-insert": "INSERT OR REPLACE INTO kv_entries", "fail-evict": "DELETE FROM kv_entries",
                "fail-commit": "COMMIT"}
LINK_FAULTS = ("db-link-junk", "db-link-sqlite", "journal-link-junk", "journal-link-sqlite", "wal-link-sqlite")
ROW_FAULTS = ("key-not-utf8", "junk-row-not-utf8", "doc-junk", "doc-other", "doc-not-utf8", "doc-number")
TIER_FAULTS = (*WRITE_FAULTS, *LINK_FAULTS, *ROW_FAULTS, "schema-not-utf8", "none")
DOC_IDS = [f"d{i}" for i in range(8)]


def plant_outside(outside: Path) -> tuple[Path, Path]:
    """An outside junk file and an outside SQLite file (the targets of planted links)."""
    outside.mkdir()
    junk = outside / "junk.bin"
    junk.write_bytes(b"outside the cache directory\n" * 300)
    db = outside / "other.db"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE precious (x)")
        con.execute("INSERT INTO precious VALUES ('keep me')")
    con.close()
    return junk, db


def _link(root: Path, name: str, target: Path) -> None:
    tmp = root / f".{name}.planted"
    tmp.symlink_to(target)
    os.replace(tmp, root / name)  # atomically over the live file (the live connection keeps its inode)


def _row_fault(rng: random.Random, root: Path, kind: str) -> Path | None:
    """Apply a row fault; return the value file it orphaned (a key rewritten no longer names it), if any."""
    if not (root / "cache.db").is_file() or (root / "cache.db").is_symlink():
        return None
    orphaned = None
    con = sqlite3.connect(root / "cache.db", timeout=30)
    try:
        con.text_factory = bytes
        rows = con.execute("SELECT rowid, key, doc FROM kv_entries").fetchall()
        if kind == "junk-row-not-utf8":
            con.execute("INSERT OR REPLACE INTO kv_entries VALUES (CAST(? AS TEXT), CAST(? AS TEXT), ?, ?)",
                        (b'v1|fp-a|"\xff' + rng.randbytes(4).hex().encode() + b'"|h', b"\xfe", 4096, -1))
        elif rows:
            rowid, old, _ = rng.choice(rows)
            if kind == "key-not-utf8":
                try:
                    digest = value_digest(old.decode())
                    orphaned = root / "v" / digest[:2] / f"{digest}.bakv"
                except (UnicodeDecodeError, AttributeError):
                    pass
                con.execute("UPDATE kv_entries SET key = CAST(? AS TEXT) WHERE rowid = ?",
                            (b"v1|fp-a|\"\xc3\x28" + rng.randbytes(4).hex().encode() + b"\"|h", rowid))
            elif kind == "doc-junk":
                con.execute("UPDATE kv_entries SET doc = ? WHERE rowid = ?", (rng.randbytes(6).hex(), rowid))
            elif kind == "doc-other":
                con.execute("UPDATE kv_entries SET doc = ? WHERE rowid = ?", (f'"{rng.choice(DOC_IDS)}"', rowid))
            elif kind == "doc-not-utf8":
                con.execute("UPDATE kv_entries SET doc = CAST(? AS TEXT) WHERE rowid = ?", (b'"\xff"', rowid))
            elif kind == "doc-number":
                con.execute("UPDATE kv_entries SET doc = ? WHERE rowid = ?", (rng.randrange(100), rowid))
        con.commit()
    except sqlite3.DatabaseError:
        orphaned = None  # the database was damaged by an earlier fault (moved aside at the next reopen)
    finally:
        con.close()
    return orphaned


def _poke_schema(root: Path) -> None:
    db = root / "cache.db"
    if not db.is_file() or db.is_symlink():
        return
    data = bytearray(db.read_bytes())
    at = data.find(b"CREATE INDEX")
    if at >= 0:
        data[at + 9] = 0xCC
        with open(db, "r+b") as f:  # in place: a live connection keeps reading the same file
            f.write(data)


def _rows_by_doc(root: Path) -> tuple[set[str], dict[str, int]]:
    """(docs named by the index's keys, digest -> size of rows with a decodable key) of the directory's index."""
    db = root / "cache.db"
    if not db.is_file() or db.is_symlink():
        return set(), {}
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        con.text_factory = bytes
        rows = con.execute("SELECT key, size FROM kv_entries").fetchall()
    except sqlite3.DatabaseError:
        return set(), {}
    finally:
        con.close()
    docs, sizes = set(), {}
    for raw, size in rows:
        try:
            skey = raw.decode()
        except (UnicodeDecodeError, AttributeError):
            continue
        parsed = CacheKey.from_str(skey)
        if parsed is not None:
            docs.add(parsed.doc_id)
        sizes[value_digest(skey)] = size
    return docs, sizes


def _value_names(root: Path) -> set[str]:
    return {p.name[:-5] for p in (root / "v").rglob("*.bakv") if p.is_file() and not p.is_symlink()} \
        if (root / "v").exists() else set()


def _outside_state(outside: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(outside.iterdir())}


def test_tier_fuzz_under_issue_27_faults(tmp_path: Path) -> None:
    rng = random.Random(TIER_SEED)
    root = tmp_path / "kv"
    junk, other_db = plant_outside(tmp_path / "outside")
    outside_before = _outside_state(tmp_path / "outside")
    tier = DiskTier(root, BUDGET)
    written: dict[str, int] = {}  # flat key -> seed of the value last written successfully under it
    kinds: Counter[str] = Counter()
    checked = {"hits": 0, "puts": 0, "failed_puts": 0, "delete_doc": 0}
    orphaned: set[Path] = set()  # files the fuzzer itself unindexed (a rewritten key): outside the index's count
    for step in range(TIER_STEPS):
        kind = rng.choice(TIER_FAULTS)
        kinds[kind] += 1
        if kind in LINK_FAULTS:
            name = {"db": "cache.db", "journal": "cache.db-journal", "wal": "cache.db-wal"}[kind.split("-")[0]]
            _link(root, name, junk if kind.endswith("junk") else other_db)
        elif kind in ROW_FAULTS:
            lost = _row_fault(rng, root, kind)
            if lost is not None:
                orphaned.add(lost)
        elif kind == "schema-not-utf8":
            _poke_schema(root)
        k = key(doc=rng.choice(DOC_IDS), fp=rng.choice(["fp-a", "fp-b"]))
        seed = step
        entry = make_kv(seed, n_tokens=rng.choice([64, 256, 512]))
        if kind in WRITE_FAULTS:
            before = _value_names(root)
            with failing_index(tier, WRITE_FAULTS[kind]):
                ok = tier.put(k, entry)
            _, indexed = _rows_by_doc(root)
            assert (_value_names(root) - before) <= set(indexed), (step, kind)  # no new file without its row
            if ok:  # (the fault's statement was never reached, e.g. no eviction was needed)
                written[k.as_str()] = seed
            else:
                checked["failed_puts"] += 1
                written.pop(k.as_str(), None)
        else:
            if tier.put(k, entry):
                written[k.as_str()] = seed
            checked["puts"] += 1
        unindexed = sum(p.stat().st_size for p in orphaned if p.is_file() and not p.is_symlink())
        assert tier.volume() <= BUDGET + unindexed, (step, kind)  # exact after every put, failed ones included
        probe = key(doc=rng.choice(DOC_IDS), fp=rng.choice(["fp-a", "fp-b"]))
        got = tier.get(probe)
        if got is not None:
            want = written[probe.as_str()]
            assert kv_bitwise_equal(got, make_kv(want, n_tokens=got.keys.shape[2])), (step, kind)
            checked["hits"] += 1
        if rng.random() < 0.2:
            doc = rng.choice(DOC_IDS)
            tier.delete_doc(doc)
            checked["delete_doc"] += 1
            assert doc not in _rows_by_doc(root)[0] or tier.read_only, (step, kind)
        if rng.random() < 0.02:
            tier.clear()
        len(tier), tier.contains(probe), tier.stats()
        assert _outside_state(tmp_path / "outside") == outside_before, (step, kind)
        if step % 25 == 24:  # reopen: sweep, damaged-index recovery, link refusal at open
            tier.close()
            tier = DiskTier(root, BUDGET)
            assert tier.volume() <= BUDGET and not [p for p in orphaned if p.exists()]  # the sweep took them
            orphaned.clear()
    tier.close()
    print("tier fuzz faults:", dict(sorted(kinds.items())), checked)  # the table in docs/reliability.md
    assert set(kinds) == set(TIER_FAULTS) and checked["hits"] > 50 and checked["failed_puts"] > 20
    tier = DiskTier(root, BUDGET)
    on_disk = {p.name[:-5]: p.stat().st_size for p in (root / "v").rglob("*.bakv") if p.is_file()}
    assert on_disk == _rows_by_doc(root)[1]  # no orphans, no rows without their file
    assert tier.volume() == sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) <= BUDGET
    assert not [p for p in root.rglob("*") if p.is_symlink()]
    tier.close()
    assert _outside_state(tmp_path / "outside") == outside_before
