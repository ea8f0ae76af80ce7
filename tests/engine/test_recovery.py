"""Recovery (recompute the first k tokens of every block) against exact oracles.

k = 0 is bitwise block mode; k >= every block's length is a chunked full prefill, equal to full mode (float32
<= 1e-4, identical greedy tokens); an intermediate k differs from both; stored KV is never mutated; the quality
warning is logged once, only for models that were not block-fine-tuned.
"""

import logging

import pytest
import torch

from block_attention import Block, BlockAttentionEngine, EngineConfig, KVStore, StoreConfig
from block_attention.core.errors import ConfigError
from block_attention.core.quality import KNOWN_BLOCK_FINETUNED, is_block_finetuned, is_known_checkpoint
from block_attention.engine.assemble import assemble_cache
from block_attention.engine.encode import encode_blocks
from block_attention.engine.recovery import recovered_cache, recomputed_token_count
from block_attention.testing import tiny_model

QUESTION = "Where did the lighthouse stand?"


def _longest(engine, docs):
    return max(len(b.token_ids) for b in engine.layout(docs, QUESTION).blocks)


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_k0_is_bitwise_block_mode(family, tok, docs):
    model = tiny_model(family, seed=3)
    engine = BlockAttentionEngine(model, tok, store=False)
    plain = engine.prefill(docs, QUESTION, all_logits=True)
    k0 = engine.prefill(docs, QUESTION, all_logits=True, recompute_tokens=0)
    assert torch.equal(plain.logits, k0.logits)
    for a, b in zip(plain.cache.layers, k0.cache.layers):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
    assert k0.stats.recomputed_tokens == 0


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_full_length_k_equals_full_mode(family, tok, docs):
    model = tiny_model(family, seed=4)
    engine = BlockAttentionEngine(model, tok, store=False)
    k = _longest(engine, docs)
    full = engine.prefill(docs, QUESTION, mode="full", all_logits=True)
    rec = engine.prefill(docs, QUESTION, all_logits=True, recompute_tokens=k)
    block = engine.prefill(docs, QUESTION, all_logits=True)
    assert (rec.logits - full.logits).abs().max().item() <= 1e-4
    assert (block.logits - full.logits).abs().max().item() > 1e-3  # the oracle is not trivially met
    layout = rec.layout
    assert rec.stats.recomputed_tokens == layout.context_len - len(layout.blocks[0].token_ids)
    full_gen = engine.generate(docs, QUESTION, mode="full", max_new_tokens=12, stop_on_eos=False)
    rec_gen = engine.generate(docs, QUESTION, max_new_tokens=12, stop_on_eos=False, recompute_tokens=k)
    assert rec_gen.token_ids == full_gen.token_ids
    # The engine-level default applies the same recovery.
    configured = BlockAttentionEngine(model, tok, EngineConfig(recompute_tokens=k), store=False)
    assert torch.equal(configured.prefill(docs, QUESTION, all_logits=True).logits, rec.logits)


def test_partial_k_lies_between_and_counts_tokens(tok, docs):
    model = tiny_model("llama", seed=5)
    engine = BlockAttentionEngine(model, tok, store=False)
    full = engine.prefill(docs, QUESTION, mode="full", all_logits=True).logits
    block = engine.prefill(docs, QUESTION, all_logits=True).logits
    out = engine.prefill(docs, QUESTION, all_logits=True, recompute_tokens=2)
    assert (out.logits - block).abs().max().item() > 1e-5
    assert (out.logits - full).abs().max().item() > 1e-5
    doc_blocks = [b for b in out.layout.blocks if b.offset > 0]
    assert out.stats.recomputed_tokens == 2 * len(doc_blocks) == recomputed_token_count(out.layout, 2)


def test_recovered_cache_matches_recompute_of_one_prefix(tok, docs, llama):
    """Independent check of the splice: the recomputed KV of block b equals a plain forward of (recovered
    context before b) + (b's first k tokens)."""
    engine = BlockAttentionEngine(llama, tok, store=False)
    layout = engine.layout(docs, QUESTION)
    kvs = encode_blocks(llama, [b.token_ids for b in layout.blocks], pad_id=engine.pad_id)
    k = 3
    cache = recovered_cache(llama, layout, kvs, engine.rotary, k)
    last = layout.blocks[-1]
    # full-length recovery of everything before the last block == ordinary prefill of those tokens
    full_before = recovered_cache(llama, layout, kvs, engine.rotary, 10**6)
    from transformers import DynamicCache
    ids = layout.input_ids()[:last.offset]
    prefix = DynamicCache()
    llama.model(input_ids=torch.tensor([ids]), position_ids=torch.arange(len(ids))[None], past_key_values=prefix,
                use_cache=True)
    for mine, ref in zip(full_before.layers, prefix.layers):
        assert (mine.keys[:, :, :last.offset] - ref.keys).abs().max().item() <= 1e-5
    # untouched tokens keep their assembled KV bitwise
    plain = assemble_cache(kvs, [b.offset for b in layout.blocks], engine.rotary, "cpu")
    for mine, ref in zip(cache.layers, plain.layers):
        assert torch.equal(mine.keys[:, :, last.offset + k:], ref.keys[:, :, last.offset + k:])
        assert torch.equal(mine.values[:, :, :layout.blocks[1].offset], ref.values[:, :, :layout.blocks[1].offset])
        assert not torch.equal(mine.keys[:, :, last.offset:last.offset + k], ref.keys[:, :, last.offset:last.offset + k])


def test_recovery_never_mutates_stored_kv(tok, docs, llama):
    store = KVStore(StoreConfig(memory_bytes=1 << 26))
    engine = BlockAttentionEngine(llama, tok, store=store)
    engine.prefill(docs, QUESTION)  # fills the store
    layout = engine.layout(docs, QUESTION)
    keys = [engine.cache_key(b.doc_id, b.token_ids) for b in layout.blocks]
    before = {key: store.get(key) for key in keys}
    snapshot = {key: (kv.keys.clone(), kv.values.clone()) for key, kv in before.items()}
    k = _longest(engine, docs)
    engine.prefill(docs, QUESTION, recompute_tokens=k)
    engine.generate(docs, QUESTION, max_new_tokens=4, recompute_tokens=2)
    for key in keys:
        kv = store.get(key)
        assert torch.equal(kv.keys, snapshot[key][0]) and torch.equal(kv.values, snapshot[key][1])
        assert torch.equal(before[key].keys, snapshot[key][0])


def test_recompute_tokens_validation(tok, llama):
    with pytest.raises(ConfigError, match="recompute_tokens"):
        EngineConfig(recompute_tokens=-1)
    engine = BlockAttentionEngine(llama, tok, store=False)
    with pytest.raises(ConfigError, match="recompute_tokens"):
        engine.prefill([Block("some text")], QUESTION, recompute_tokens=-2)


def test_quality_warning_once_for_non_finetuned(tok, docs, llama, caplog):
    engine = BlockAttentionEngine(llama, tok, store=False)
    assert not engine.block_finetuned
    with caplog.at_level(logging.WARNING, logger="block_attention"):
        engine.prefill(docs, QUESTION)
        engine.generate(docs, QUESTION, max_new_tokens=2)
        engine.prefill(docs, QUESTION, mode="full")
    warnings = [r for r in caplog.records if "not block-fine-tuned" in r.getMessage()]
    assert len(warnings) == 1
    msg = warnings[0].getMessage()
    assert "block_attention.finetune" in msg and "recompute_tokens" in msg and "mode='full'" in msg


def test_no_warning_for_full_mode_recovery_or_finetuned(tok, docs, caplog):
    model = tiny_model("llama", seed=0)
    with caplog.at_level(logging.WARNING, logger="block_attention"):
        BlockAttentionEngine(model, tok, EngineConfig(mode="full"), store=False).generate(docs, QUESTION, max_new_tokens=2)
        BlockAttentionEngine(model, tok, store=False).prefill(docs, QUESTION, recompute_tokens=4)
        model.config._name_or_path = "/models/hxia7/Llama-3.2-1B-Block-FT"
        engine = BlockAttentionEngine(model, tok, store=False)
        assert engine.block_finetuned
        engine.prefill(docs, QUESTION)
    assert not [r for r in caplog.records if "not block-fine-tuned" in r.getMessage()]


def test_block_finetuned_detection():
    class Cfg:
        _name_or_path = "Qwen/Qwen2.5-1.5B-Instruct"

    class M:
        config = Cfg()

    assert not is_block_finetuned(M())
    Cfg.block_attention = {"prompt_config": {"block_marker": "[Block-Attention]"}}
    assert is_block_finetuned(M())
    assert all(is_known_checkpoint(name) for name in KNOWN_BLOCK_FINETUNED)
    assert not is_known_checkpoint("someone/Tulu3-Block-FT-not")


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_one_pass_equals_sequential(attn, tok, docs):
    """The one-forward masked recovery computes what block-by-block recovery computes (and both reach full mode)."""
    model = tiny_model("qwen2", seed=6, attn_implementation=attn)
    engine = BlockAttentionEngine(model, tok, store=False)
    layout = engine.layout(docs, QUESTION)
    kvs = encode_blocks(model, [b.token_ids for b in layout.blocks], pad_id=engine.pad_id)
    longest = max(len(b.token_ids) for b in layout.blocks)
    for k in (3, longest):
        one = recovered_cache(model, layout, kvs, engine.rotary, k, strategy="one_pass")
        seq = recovered_cache(model, layout, kvs, engine.rotary, k, strategy="sequential")
        for a, b in zip(one.layers, seq.layers):
            assert (a.keys - b.keys).abs().max().item() <= 1e-5
            assert (a.values - b.values).abs().max().item() <= 1e-5
    ids = layout.input_ids()[:layout.context_len]
    from transformers import DynamicCache
    ref = DynamicCache()
    model.model(input_ids=torch.tensor([ids]), position_ids=torch.arange(len(ids))[None], past_key_values=ref,
                use_cache=True)
    for a, b in zip(one.layers, ref.layers):  # k = longest: the whole context as one ordinary forward
        assert (a.keys - b.keys).abs().max().item() <= 1e-4
    with pytest.raises(ConfigError, match="strategy"):
        recovered_cache(model, layout, kvs, engine.rotary, 2, strategy="fast")
