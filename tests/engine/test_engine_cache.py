"""Engine + KV store: hits equal misses, disk survives restarts bitwise, permutations reuse every block,
corruption is recomputed, changed documents or models miss, cached tensors are never mutated."""

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from block_attention import Block, BlockAttentionEngine, EngineConfig, PromptConfig, StoreConfig
from block_attention.testing import tiny_model
from block_attention.testing.oracle import reference_logits

QUESTION = "Where did the lighthouse stand?"


def _engine(model, tok, tmp_path=None, **prompt):
    store = StoreConfig(memory_bytes=64 << 20, disk_dir=str(tmp_path / "kv") if tmp_path else None)
    return BlockAttentionEngine(model, tok, EngineConfig(prompt=PromptConfig(**prompt)), store=store)


def _digest(kv) -> str:
    return hashlib.sha256(kv.keys.float().numpy().tobytes() + kv.values.float().numpy().tobytes()).hexdigest()


def test_hit_equals_miss_and_second_request_hits_every_block(tok, docs, llama):
    engine = _engine(llama, tok)
    cold = engine.generate(docs, QUESTION, max_new_tokens=12)
    warm = engine.generate(docs, QUESTION, max_new_tokens=12)
    n_blocks = len(docs) + 1  # + the prefix block
    assert (cold.stats.misses, cold.stats.hits) == (n_blocks, 0)
    assert (warm.stats.misses, warm.stats.memory_hits) == (0, n_blocks) and warm.stats.encoded_tokens == 0
    assert warm.token_ids == cold.token_ids
    a = engine.prefill(docs, QUESTION, all_logits=True).logits
    b = _engine(llama, tok).prefill(docs, QUESTION, all_logits=True).logits  # fresh store: all misses
    assert torch.equal(a, b)


def test_permuted_blocks_reuse_everything_and_match_oracle(tok, docs, llama):
    engine = _engine(llama, tok)
    engine.prefill(docs, QUESTION)
    for order in ([2, 0, 1], [1, 2, 0], [2, 1, 0]):
        shuffled = [docs[i] for i in order]
        out = engine.prefill(shuffled, QUESTION, all_logits=True)
        assert out.stats.misses == 0 and out.stats.hits == len(docs) + 1
        assert (out.logits - reference_logits(llama, out.layout)).abs().max().item() <= 1e-4


def test_cached_tensors_are_never_mutated(tok, docs, llama):
    engine = _engine(llama, tok)
    engine.prefill(docs, QUESTION)
    keys = [engine.cache_key(b.doc_id, b.token_ids) for b in engine.layout(docs, QUESTION).blocks]
    before = [(k, engine.store.get(k).keys.clone(), engine.store.get(k).values.clone()) for k in keys]
    engine.generate(list(reversed(docs)), QUESTION, max_new_tokens=10)
    for k, kk, vv in before:
        kv = engine.store.get(k)
        assert torch.equal(kv.keys, kk) and torch.equal(kv.values, vv)


def test_disk_tier_survives_restart_bitwise(tok, docs, llama, tmp_path):
    first = _engine(llama, tok, tmp_path)
    cold = first.generate(docs, QUESTION, max_new_tokens=10)
    keys = [first.cache_key(b.doc_id, b.token_ids) for b in first.layout(docs, QUESTION).blocks]
    memory = {k: first.store.get(k) for k in keys}
    first.store.close()
    second = _engine(tiny_model("llama", seed=0), tok, tmp_path)  # a new process would rebuild the same model
    assert second.fingerprint == first.fingerprint
    warm = second.generate(docs, QUESTION, max_new_tokens=10)
    assert warm.stats.disk_hits == len(keys) and warm.stats.misses == 0
    assert warm.token_ids == cold.token_ids
    for k in keys:  # promoted to memory, bitwise identical to the original encoding
        assert second.store.contains(k) == "memory"
        assert torch.equal(second.store.get(k).keys, memory[k].keys)
        assert torch.equal(second.store.get(k).values, memory[k].values)


def test_disk_hit_in_another_process_is_bitwise_identical(tok, docs, llama, tmp_path):
    engine = _engine(llama, tok, tmp_path)
    engine.prefill(docs, QUESTION)
    keys = [engine.cache_key(b.doc_id, b.token_ids) for b in engine.layout(docs, QUESTION).blocks]
    want = {k.as_str(): _digest(engine.store.get(k)) for k in keys}
    engine.store.close()
    script = textwrap.dedent(f"""
        import hashlib, json
        from block_attention import BlockAttentionEngine, EngineConfig, PromptConfig, StoreConfig
        from block_attention.testing import tiny_model, tiny_tokenizer
        from block_attention.testing.plugin import docs as docs_fixture
        from test_engine_cache import _digest
        docs = docs_fixture.__wrapped__()
        e = BlockAttentionEngine(tiny_model("llama", seed=0), tiny_tokenizer(), EngineConfig(prompt=PromptConfig()),
                                 store=StoreConfig(memory_bytes=64 << 20, disk_dir={str(tmp_path / "kv")!r}))
        out = e.prefill(docs, {QUESTION!r})
        keys = [e.cache_key(b.doc_id, b.token_ids) for b in e.layout(docs, {QUESTION!r}).blocks]
        print(json.dumps({{"disk_hits": out.stats.disk_hits, "misses": out.stats.misses,
                          "digests": {{k.as_str(): _digest(e.store.get(k)) for k in keys}}}}))
    """)
    import block_attention  # the subprocess must import the code under test (a worktree, not the installed one)

    src = Path(block_attention.__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), str(src)])}
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["misses"] == 0 and got["disk_hits"] == len(keys)
    assert got["digests"] == want


def _damage(tmp_path, how):
    """Damage every disk entry's value file in place (the index row keeps the file's new size)."""
    root = tmp_path / "kv"
    files = [p for p in root.rglob("*.bakv")]
    con = sqlite3.connect(root / "cache.db")
    for p in files:
        data = bytearray(p.read_bytes())
        new = bytes(data[: len(data) // 2]) if how == "truncate" else _flip(data)
        p.write_bytes(new)
        con.execute("UPDATE kv_entries SET size = ? WHERE size = ?", (len(new), len(data)))
    con.commit()
    con.close()
    return len(files)


def _flip(data: bytearray) -> bytes:
    for i in range(len(data) // 3, len(data), max(1, len(data) // 7)):
        data[i] ^= 0xFF
    return bytes(data)


def test_corrupted_disk_entries_are_recomputed(tok, docs, llama, tmp_path, caplog):
    for how in ("truncate", "flip"):
        path = tmp_path / how
        first = _engine(llama, tok, path)
        first.prefill(docs, QUESTION)
        first.store.close()
        assert _damage(path, how) == len(docs) + 1
        second = _engine(llama, tok, path)
        out = second.prefill(docs, QUESTION, all_logits=True)
        assert out.stats.disk_hits == 0 and out.stats.misses == len(docs) + 1
        assert second.store.stats().corrupt_dropped == len(docs) + 1
        assert (out.logits - reference_logits(llama, out.layout)).abs().max().item() <= 1e-4
        again = second.prefill(docs, QUESTION)  # recomputed entries were stored again
        assert again.stats.misses == 0
        second.store.close()
    assert any("corrupt" in r.getMessage().lower() for r in caplog.records)


def test_changed_document_or_model_misses(tok, docs, llama):
    engine = _engine(llama, tok)
    engine.prefill(docs, QUESTION)
    edited = [Block(docs[0].text + " It fell in 1323.", docs[0].doc_id, title=docs[0].title), *docs[1:]]
    out = engine.prefill(edited, QUESTION)
    assert out.stats.misses == 1 and out.stats.hits == len(docs)
    shared = engine.store
    for other in (tiny_model("llama", seed=5),  # different weights
                  tiny_model("llama", seed=0, rope_parameters={"rope_type": "default", "rope_theta": 500.0})):
        e2 = BlockAttentionEngine(other, tok, store=shared)
        assert e2.fingerprint != engine.fingerprint
        assert e2.prefill(docs, QUESTION).stats.hits == 0
    marked = BlockAttentionEngine(llama, tok, EngineConfig(prompt=PromptConfig(block_marker="[Block-Attention]")),
                                  store=shared)
    assert marked.fingerprint != engine.fingerprint


def test_warm_then_first_query_is_all_hits(tok, docs, llama):
    engine = _engine(llama, tok)
    report = engine.warm(docs, show_progress=False)
    assert report.encoded == len(docs) + 1 and report.kv_bytes > 0
    assert report.kv_bytes == engine.estimate_kv_bytes(report.encoded_tokens)
    assert engine.warm(docs).encoded == 0
    out = engine.prefill(docs, QUESTION)
    assert out.stats.misses == 0 and out.stats.hits == len(docs) + 1


def test_delete_doc_drops_its_kv(tok, docs, llama):
    engine = _engine(llama, tok)
    engine.prefill(docs, QUESTION)
    assert engine.store.delete_doc("fox") == 1
    out = engine.prefill(docs, QUESTION)
    assert out.stats.misses == 1
