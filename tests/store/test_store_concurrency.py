"""Four processes on one cache directory while writers are SIGKILLed again and again (issue #15): three engine
processes answer random requests (every answer compared with an uncached engine's), a fourth process forks
writers of large entries and kills each one after a random delay, often mid-write. Afterwards: no temporary or
orphan files, every index row backed by its file, the byte budget respected, and answers still correct.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

from block_attention.store.disk import DiskTier, value_digest

BUDGET = 1 << 20
SECONDS = 6.0

ENGINE_WORKER = """
    import json, random, sys, time
    import torch
    torch.set_num_threads(1)
    from block_attention import Block, BlockAttentionEngine, EngineConfig, PromptConfig, StoreConfig
    from block_attention.testing import tiny_model, tiny_tokenizer
    from block_attention.testing import SAMPLE_QUESTION as QUESTION, sample_blocks
    DOCS = sample_blocks()
    directory, seed, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    rng = random.Random(seed)
    model, tok = tiny_model("llama", seed=0), tiny_tokenizer()
    plain = BlockAttentionEngine(model, tok, EngineConfig(prompt=PromptConfig()), store=False)
    engine = BlockAttentionEngine(model, tok, EngineConfig(prompt=PromptConfig()),
                                  store=StoreConfig(memory_bytes=0, disk_dir=directory, disk_bytes=%d))
    want, requests, bad, hits = {}, 0, 0, 0
    print("ready", flush=True)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        order = tuple(rng.sample(range(len(DOCS)), rng.randint(1, 4)))
        blocks = [DOCS[i] for i in order]
        if order not in want:
            want[order] = plain.prefill(blocks, QUESTION, all_logits=True).logits
        out = engine.prefill(blocks, QUESTION, all_logits=True)
        requests += 1
        hits += out.stats.hits
        bad += int(not ((out.logits - want[order]).abs().max().item() <= 1e-4))
    engine.close()
    print(json.dumps({"requests": requests, "bad": bad, "hits": hits}), flush=True)
""" % BUDGET

KILLED_WRITERS = """
    import json, os, random, signal, sys, time
    from block_attention.store import serialize
    from block_attention.store.disk import DiskTier
    from block_attention.store.keys import CacheKey
    from block_attention.testing.kv import make_kv
    directory, seconds = sys.argv[1], float(sys.argv[2])
    rng = random.Random(7)
    blobs = [(CacheKey("writer", f"w{i}", "h"), make_kv(i, n_tokens=768)) for i in range(12)]  # ~384 KiB each
    blobs = [(k, serialize.dumps(k, kv)) for k, kv in blobs]
    kills = 0
    print("ready", flush=True)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pid = os.fork()
        if pid == 0:  # a writer: only store calls, no tensor work after fork
            tier = DiskTier(directory, %d)
            while True:
                k, data = blobs[rng.randrange(len(blobs))]
                tier.put_bytes(k, data)
        time.sleep(rng.uniform(0.05, 0.4))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        kills += 1
    print(json.dumps({"kills": kills}), flush=True)
""" % BUDGET


def test_four_processes_with_writers_killed_repeatedly(tmp_path: Path) -> None:
    directory = tmp_path / "kv"
    DiskTier(directory, BUDGET).close()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(ENGINE_WORKER), str(directory), str(seed),
                               str(SECONDS)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for seed in range(3)]
    procs.append(subprocess.Popen([sys.executable, "-c", textwrap.dedent(KILLED_WRITERS), str(directory),
                                   str(SECONDS)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env=env))
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-3000:]
        assert "Traceback" not in err
        results.append(json.loads(out.strip().splitlines()[-1]))
    engines, killer = results[:3], results[3]
    assert killer["kills"] >= 10
    assert all(r["requests"] > 0 and r["bad"] == 0 for r in engines), results
    assert sum(r["hits"] for r in engines) > 0, results

    tier = DiskTier(directory, BUDGET)  # reopening sweeps what the killed writers left
    files = {str(p.relative_to(directory)): p.stat().st_size for p in directory.rglob("*") if p.is_file()}
    assert not [f for f in files if f.endswith(".tmp")]
    with sqlite3.connect(directory / "cache.db") as con:
        rows = con.execute("SELECT key, size FROM kv_entries").fetchall()
    indexed = {os.path.join("v", value_digest(k)[:2], value_digest(k) + ".bakv"): size for k, size in rows}
    assert {f: s for f, s in files.items() if f.endswith(".bakv")} == indexed
    assert tier.volume() == sum(files.values()) <= BUDGET
    tier.close()

    from block_attention import BlockAttentionEngine, EngineConfig, PromptConfig, StoreConfig
    from block_attention.testing import tiny_model, tiny_tokenizer
    from block_attention.testing import SAMPLE_QUESTION as QUESTION, sample_blocks
    DOCS = sample_blocks()

    model, tok = tiny_model("llama", seed=0), tiny_tokenizer()
    want = BlockAttentionEngine(model, tok, EngineConfig(prompt=PromptConfig()), store=False).prefill(
        DOCS, QUESTION, all_logits=True).logits
    config = StoreConfig(memory_bytes=0, disk_dir=str(directory), disk_bytes=BUDGET)
    with BlockAttentionEngine(model, tok, EngineConfig(prompt=PromptConfig()), store=config) as engine:
        for _ in range(2):
            assert (engine.prefill(DOCS, QUESTION, all_logits=True).logits - want).abs().max().item() <= 1e-4
