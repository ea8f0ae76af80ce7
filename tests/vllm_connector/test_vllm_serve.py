"""Two real ``vllm serve`` replicas with the connector sharing one private Redis, driven over HTTP by the client
helper: a block encoded on one replica is served on the other in another order; Redis going down turns requests
into misses that vLLM still answers.

* Replica A gets order 1 with ``encode="missing"``: a miss (every block reported missing, the answer is vLLM's own
  full attention), then the client encodes the missing blocks on A (their KV goes to A's memory and to Redis).
* Replica B (started after A stopped: one replica at a time on this 2-core machine), which never saw these
  passages, serves order 2 as a hit (every block from Redis), and its greedy tokens equal A serving order 2.
* Redis stopped: a request of new passages on B is a miss, answered; its encode requests still answer.
"""

from __future__ import annotations

import pytest

from block_attention import Block
from block_attention.testing.vllm_server import SERVED_NAME, VLLMServer
from block_attention.vllm_connector import client

from vllm_helpers import require_vllm, smollm2_folder, vllm_env

pytestmark = pytest.mark.slow

QUESTION = "Who designed the Orvell tower?"
DOCS = [
    Block("The Orvell tower was designed by the engineer Mira Tandt and opened in 1932.", "orvell", title="Orvell"),
    Block("Tandt also built three bridges over the river Esk before she retired to the coast.", "tandt",
          title="Mira Tandt"),
    Block("The river Esk floods every spring, covering the meadows south of the tower.", "esk"),
]
NEW = [Block("A fourth passage nobody encoded, about the Esk's spring floods.", "floods"),
       Block("A fifth passage about the Orvell tower's clock, installed in 1950.", "clock")]
SAMPLING = {"max_tokens": 6, "temperature": 0.0}


@pytest.fixture(scope="module")
def tokenizer_builder():
    from transformers import AutoTokenizer

    from block_attention import PromptBuilder

    folder = smollm2_folder()
    return folder, PromptBuilder(AutoTokenizer.from_pretrained(folder))


def test_replicas_share_blocks_through_redis(tokenizer_builder, redis_proc, tmp_path, monkeypatch):
    vllm_python = require_vllm()
    for key, value in vllm_env().items():
        monkeypatch.setenv(key, value)
    folder, builder = tokenizer_builder
    store = {"memory_bytes": 1 << 28, "remote_url": redis_proc.url}
    order1 = client.plan(builder, DOCS, QUESTION)
    order2 = client.plan(builder, DOCS[::-1], QUESTION)
    with VLLMServer(vllm_python, folder, store=store, log_path=tmp_path / "a.log") as a:
        first = client.complete(a.base_url, SERVED_NAME, order1, encode="missing", **SAMPLING)
        outcome = client.outcome(first)
        assert outcome["hit"] is False and set(outcome["missing"]) == {blk.doc_id for blk in order1.layout.blocks}
        assert first["choices"][0]["text"]
        on_a = client.complete(a.base_url, SERVED_NAME, order2, encode="never", **SAMPLING)
        assert client.outcome(on_a)["hit"] is True, a.log_tail()
    # one replica at a time keeps this CPU machine responsive; B's only source of these blocks is Redis
    with VLLMServer(vllm_python, folder, store=store, log_path=tmp_path / "b.log") as b:
        on_b = client.complete(b.base_url, SERVED_NAME, order2, encode="never", **SAMPLING)
        assert client.outcome(on_b) == {"hit": True, "loaded_tokens": order2.layout.context_len}, b.log_tail()
        assert on_b["choices"][0]["text"] == on_a["choices"][0]["text"]

        redis_proc.stop()
        down = client.plan(builder, [DOCS[0], *NEW], QUESTION)
        missed = client.complete(b.base_url, SERVED_NAME, down, encode="missing", **SAMPLING)
        assert client.outcome(missed)["hit"] is False
        assert missed["choices"][0]["text"]
        again = client.complete(b.base_url, SERVED_NAME, down, encode="never", **SAMPLING)  # B's scheduler: no tier
        assert client.outcome(again)["hit"] is False and again["choices"][0]["text"] == missed["choices"][0]["text"]
