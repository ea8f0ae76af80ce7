"""Scale-out as users run it: two `block-attention serve` processes share one real redis-server.

Replica B's first request for documents replica A encoded is all remote hits with A's answer; Redis killed
mid-run costs misses, not failures, and is used again after it restarts; foreign or corrupted values planted in
Redis are recomputed and the answer stays right.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from block_attention.testing.redis_server import RedisProcess, free_port, redis_server_path
from block_attention.store.remote import DEFAULT_PREFIX
from server_helpers import as_blocks, metric

SRC = Path(__file__).resolve().parents[2] / "src"


class Replica:
    def __init__(self, redis_url: str, log: Path) -> None:
        self.port = free_port()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "block_attention", "serve", "--model", "tiny-random", "--port", str(self.port),
             "--kv-remote", redis_url, "--no-disk-cache", "--log-level", "warning"],
            env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=60)

    def wait(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if self.client.get("/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.2)

    def ask(self, docs: list[dict[str, str]], question: str) -> dict[str, Any]:
        response = self.client.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": question}], "documents": docs, "max_tokens": 8})
        assert response.status_code == 200, response.text
        return response.json()

    def stop(self) -> None:
        self.client.close()
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisProcess, Replica, Replica]]:
    if redis_server_path() is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install -y redis-server; .ci/run installs it)")
    logs = tmp_path_factory.mktemp("replicas")
    with RedisProcess() as store:
        a, b = Replica(store.url, logs / "a.log"), Replica(store.url, logs / "b.log")
        try:
            a.wait()
            b.wait()
            yield store, a, b
        finally:
            a.stop()
            b.stop()


def docs(tag: str) -> list[dict[str, str]]:
    return [{"doc_id": f"{tag}-1", "text": f"Passage one of set {tag}: the lighthouse stood on Pharos."},
            {"doc_id": f"{tag}-2", "text": f"Passage two of set {tag}: block attention caches each passage."}]


def answer(reply: dict[str, Any]) -> str:
    return reply["choices"][0]["message"]["content"]


def test_replica_b_reuses_what_replica_a_encoded(cluster: tuple[RedisProcess, Replica, Replica],
                                                 reference: Any) -> None:
    _, a, b = cluster
    first = a.ask(docs("shared"), "Where?")
    assert first["block_attention"]["misses"] == 3 and first["block_attention"]["hits"] == 0
    second = b.ask(docs("shared"), "Where?")
    assert second["block_attention"]["hits_by_tier"] == {"remote": 3}  # two documents + the prompt prefix
    assert second["block_attention"]["misses"] == 0
    want = reference.generate(as_blocks(docs("shared")), "Where?", max_new_tokens=8)
    assert answer(first) == answer(second) == want.text
    assert b.ask(docs("shared"), "Where?")["block_attention"]["hits_by_tier"] == {"memory": 3}  # promoted
    scrape = b.client.get("/metrics").text
    assert metric(scrape, "block_attention_kv_hits_total", 'tier="remote"') == 3
    assert metric(scrape, "block_attention_kv_tier_bytes", 'tier="remote"') > 0


def test_redis_killed_mid_run_then_restarted(cluster: tuple[RedisProcess, Replica, Replica],
                                             reference: Any) -> None:
    store, a, b = cluster
    store.stop()
    down_a, down_b = a.ask(docs("down"), "Where?"), b.ask(docs("down"), "Where?")
    assert down_a["block_attention"]["misses"] == 2 and down_b["block_attention"]["misses"] == 2  # prefix cached
    want = reference.generate(as_blocks(docs("down")), "Where?", max_new_tokens=8).text
    assert answer(down_a) == answer(down_b) == want
    store.start()  # same port, empty
    time.sleep(2.2)  # the tier's retry back-off (2 s) after the failed calls
    again = a.ask(docs("back"), "Where?")
    assert again["block_attention"]["misses"] == 2
    reused = b.ask(docs("back"), "Where?")
    assert reused["block_attention"]["hits_by_tier"] == {"remote": 2, "memory": 1}  # the tier is used again
    assert answer(again) == answer(reused)
    assert a.log.read_text().count("serving without it") == 1  # one warning for the whole outage


def test_foreign_and_corrupted_values_are_recomputed(cluster: tuple[RedisProcess, Replica, Replica],
                                                     reference: Any) -> None:
    store, a, b = cluster
    first = a.ask(docs("planted"), "Where?")
    client = redis.Redis.from_url(store.url)
    keys = [k for k in client.scan_iter(match=DEFAULT_PREFIX + "v*") if b"planted" in k]
    assert len(keys) == 2
    value = client.get(keys[0])
    client.set(keys[0], value[:-8] + bytes(8))  # corrupted: checksum no longer matches
    client.set(keys[1], b"\x80\x04K\x01.")  # foreign: a pickle, never loaded
    second = b.ask(docs("planted"), "Where?")
    assert second["block_attention"]["misses"] == 2 and second["block_attention"]["hits_by_tier"] == {"memory": 1}
    want = reference.generate(as_blocks(docs("planted")), "Where?", max_new_tokens=8).text
    assert answer(first) == answer(second) == want
    assert "Dropping bad KV remote entry" in b.log.read_text()
