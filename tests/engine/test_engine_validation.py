"""Loaded KV is checked against the model (issue #15, class 3): checksum-valid but forged disk entries (token count
off by one, fewer layers, another head_dim, another number of KV heads, another dtype) and forged memory entries
are dropped from every tier and recomputed; answers equal an uncached engine's."""

from __future__ import annotations

import logging

import pytest
import torch

from block_attention import BlockAttentionEngine, EngineConfig, PromptConfig, StoreConfig
from block_attention.core.kv import BlockKV
from block_attention.store import serialize
from block_attention.store.disk import DiskTier
from block_attention.testing.oracle import reference_logits

QUESTION = "Where did the lighthouse stand?"


def _forge(kv: BlockKV, how: str) -> BlockKV:
    k, v = kv.keys, kv.values  # [L, H_kv, n, D]
    if how == "tokens-1":
        return BlockKV(k[:, :, :-1].clone(), v[:, :, :-1].clone())
    if how == "tokens+1":
        return BlockKV(torch.cat([k, k[:, :, -1:]], 2), torch.cat([v, v[:, :, -1:]], 2))
    if how == "fewer-layers":
        return BlockKV(k[:-1].clone(), v[:-1].clone())
    if how == "head-dim":
        return BlockKV(k[..., :-2].clone(), v[..., :-2].clone())
    if how == "kv-heads":
        return BlockKV(torch.cat([k, k], 1), torch.cat([v, v], 1))
    if how == "dtype":
        return BlockKV(k.to(torch.float16), v.to(torch.float16))
    raise AssertionError(how)


FORGERIES = ["tokens-1", "tokens+1", "fewer-layers", "head-dim", "kv-heads", "dtype"]


@pytest.mark.parametrize("how", FORGERIES)
def test_forged_disk_entries_are_dropped_and_recomputed(tok, docs, llama, tmp_path, how, caplog):
    store = StoreConfig(memory_bytes=0, disk_dir=str(tmp_path / "kv"))
    engine = BlockAttentionEngine(llama, tok, EngineConfig(prompt=PromptConfig()), store=store)
    want = engine.prefill(docs, QUESTION, all_logits=True).logits
    keys = [engine.cache_key(b.doc_id, b.token_ids) for b in engine.layout(docs, QUESTION).blocks]
    engine.close()
    tier = DiskTier(tmp_path / "kv", StoreConfig().disk_bytes)
    for k in keys:  # checksum-valid entries for the right keys, with the wrong geometry
        assert tier.put_bytes(k, serialize.dumps(k, _forge(tier.get(k), how)))
    tier.close()

    engine = BlockAttentionEngine(llama, tok, EngineConfig(prompt=PromptConfig()), store=store)
    with caplog.at_level(logging.WARNING, logger="block_attention.store"):
        out = engine.prefill(docs, QUESTION, all_logits=True)
    assert out.stats.misses == len(keys) and out.stats.hits == 0
    assert engine.store.stats().corrupt_dropped == len(keys)
    assert "does not fit the model" in caplog.text
    assert torch.equal(out.logits, want)
    assert (out.logits - reference_logits(llama, out.layout)).abs().max().item() <= 1e-4
    again = engine.prefill(docs, QUESTION, all_logits=True)  # recomputed entries replaced the forged ones
    assert again.stats.disk_hits == len(keys) and torch.equal(again.logits, want)
    engine.close()


def test_forged_memory_entry_is_dropped_from_every_tier(tok, docs, llama, tmp_path):
    store = StoreConfig(memory_bytes=64 << 20, disk_dir=str(tmp_path / "kv"))
    engine = BlockAttentionEngine(llama, tok, EngineConfig(prompt=PromptConfig()), store=store)
    want = engine.prefill(docs, QUESTION, all_logits=True).logits
    k = engine.cache_key(docs[0].doc_id, engine.layout(docs, QUESTION).blocks[1].token_ids)
    engine.store.put(k, _forge(engine.store.get(k), "tokens-1"))  # memory and disk both forged
    out = engine.prefill(docs, QUESTION, all_logits=True)
    assert out.stats.misses == 1 and torch.equal(out.logits, want)
    assert engine.store.stats().rejected == 1
    engine.close()
