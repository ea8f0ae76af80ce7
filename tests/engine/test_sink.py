"""Shared attention-sink prefix (sink="prefix"): exact where it must be, cached under its own keys, never
mutating the store.

Oracles: a single passage behind the prefix is exactly full attention; with several passages, every passage's
KV equals an ordinary forward of (prefix + passage) with its keys rotated by (offset - P), computed here
independently of the engine.
"""

import pytest
import torch
from transformers import DynamicCache

from block_attention import Block, BlockAttentionEngine, EngineConfig, KVStore, PromptConfig, StoreConfig
from block_attention.core.errors import ConfigError
from block_attention.core.kv import BlockKV
from block_attention.engine.assemble import assemble_cache

QUESTION = "Where did the lighthouse stand?"


def test_single_passage_behind_sink_is_full_attention(tok, docs, llama):
    engine = BlockAttentionEngine(llama, tok, store=False)
    one = docs[:1]
    full = engine.prefill(one, QUESTION, mode="full", all_logits=True).logits
    sink = engine.prefill(one, QUESTION, all_logits=True, sink="prefix").logits
    plain = engine.prefill(one, QUESTION, all_logits=True).logits
    assert (sink - full).abs().max().item() <= 1e-4
    assert (plain - full).abs().max().item() > 1e-3
    gen = engine.generate(one, QUESTION, max_new_tokens=10, stop_on_eos=False, sink="prefix")
    assert gen.token_ids == engine.generate(one, QUESTION, mode="full", max_new_tokens=10, stop_on_eos=False).token_ids


def _forward_kv(model, ids):
    cache = DynamicCache()
    model.model(input_ids=torch.tensor([ids]), position_ids=torch.arange(len(ids))[None], past_key_values=cache,
                use_cache=True)
    keys = torch.stack([layer.keys[0] for layer in cache.layers])  # [L, H_kv, T, D]
    values = torch.stack([layer.values[0] for layer in cache.layers])  # [L, H_kv, T, D]
    return keys, values


def test_multi_passage_matches_independent_sink_encoding(tok, docs, llama):
    engine = BlockAttentionEngine(llama, tok, store=False)
    out = engine.prefill(docs, QUESTION, all_logits=True, sink="prefix")
    layout = out.layout
    prefix = list(layout.blocks[0].token_ids)
    p = len(prefix)
    kvs = [BlockKV(*_forward_kv(llama, prefix))]
    for span in layout.blocks[1:]:
        keys, values = _forward_kv(llama, prefix + list(span.token_ids))
        kvs.append(BlockKV(keys[:, :, p:].contiguous(), values[:, :, p:].contiguous()))
    cache = assemble_cache(kvs, [0] + [b.offset - p for b in layout.blocks[1:]], engine.rotary, "cpu")
    ids = list(layout.final_ids)
    ref = llama(input_ids=torch.tensor([ids]), position_ids=torch.arange(layout.context_len, layout.total_len)[None],
                past_key_values=cache, use_cache=True).logits[0]
    assert (out.logits - ref).abs().max().item() <= 1e-5
    plain = engine.prefill(docs, QUESTION, all_logits=True).logits
    full = engine.prefill(docs, QUESTION, mode="full", all_logits=True).logits
    assert (out.logits - plain).abs().max().item() > 1e-4 and (out.logits - full).abs().max().item() > 1e-4
    # with recovery of every token on top, the sink path is exactly full attention too
    k = max(len(b.token_ids) for b in layout.blocks)
    both = engine.prefill(docs, QUESTION, all_logits=True, sink="prefix", recompute_tokens=k).logits
    assert (both - full).abs().max().item() <= 1e-4


def test_sink_entries_have_their_own_keys_hit_and_stay_unmutated(tok, docs, llama):
    store = KVStore(StoreConfig(memory_bytes=1 << 26))
    engine = BlockAttentionEngine(llama, tok, EngineConfig(sink="prefix"), store=store)
    first = engine.prefill(docs, QUESTION, all_logits=True)
    assert first.stats.misses == len(docs) + 1
    second = engine.prefill(docs, QUESTION, all_logits=True)
    assert second.stats.hits == len(docs) + 1 and second.stats.misses == 0
    assert torch.equal(first.logits, second.logits)
    # Plain block mode on the same store must not pick up sink entries (and vice versa).
    plain = engine.prefill(docs, QUESTION, all_logits=True, sink="none")
    assert plain.stats.misses == len(docs)  # only the prefix block is shared
    fresh = BlockAttentionEngine(llama, tok, store=False).prefill(docs, QUESTION, all_logits=True)
    assert torch.equal(plain.logits, fresh.logits)
    snapshot = [(kv.keys.clone(), kv.values.clone()) for kv in (store.get(k) for k in store_keys(engine, docs))]
    engine.generate(docs, QUESTION, max_new_tokens=4, recompute_tokens=3)
    for (keys, values), kv in zip(snapshot, (store.get(k) for k in store_keys(engine, docs))):
        assert torch.equal(kv.keys, keys) and torch.equal(kv.values, values)


def store_keys(engine, docs):
    from block_attention.engine.sink import sink_cache_key

    layout = engine.layout(docs, QUESTION)
    sink = layout.blocks[0].token_ids
    return [sink_cache_key(engine.fingerprint, b.doc_id, b.token_ids, sink) for b in layout.blocks[1:]]


def test_no_prefix_block_means_plain_block_mode(tok, docs, llama):
    cfg = PromptConfig(instruction=None, use_chat_template=False, add_bos=False)
    engine = BlockAttentionEngine(llama, tok, EngineConfig(prompt=cfg), store=False)
    assert not engine.layout(docs, QUESTION).blocks[0].doc_id.startswith("prefix:")
    assert torch.equal(engine.prefill(docs, QUESTION, all_logits=True, sink="prefix").logits,
                       engine.prefill(docs, QUESTION, all_logits=True).logits)


def test_sink_validation(tok, llama):
    with pytest.raises(ConfigError, match="sink"):
        EngineConfig(sink="bos")
    engine = BlockAttentionEngine(llama, tok, store=False)
    with pytest.raises(ConfigError, match="sink"):
        engine.prefill([Block("some text")], QUESTION, sink="yes")
