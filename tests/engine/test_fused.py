"""Fused cold prefill: missing blocks + final block in one forward with block-sparse attention equals the oracle,
with or without cached blocks in front, and what it stores is each block encoded alone."""

from __future__ import annotations

import pytest

from block_attention import Block, BlockAttentionEngine, EngineConfig, StoreConfig
from block_attention.testing import FAMILIES, tiny_model
from block_attention.testing.oracle import reference_greedy, reference_logits

QUESTION = "Where did the lighthouse stand?"


def _engine(model, tok, prefill="fused", **store):
    return BlockAttentionEngine(model, tok, EngineConfig(cold_prefill=prefill),
                                store=StoreConfig(memory_bytes=64 << 20, **store))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("family", FAMILIES)
def test_fused_cold_path_matches_masked_oracle(family, attn, tok, docs):
    model = tiny_model(family, seed=3, attn_implementation=attn)
    engine = _engine(model, tok)
    out = engine.prefill(docs, QUESTION, all_logits=True)
    assert out.stats.misses == len(docs) + 1
    ref = reference_logits(model, out.layout)
    assert (out.logits - ref).abs().max().item() <= 1e-4
    assert model.config._attn_implementation == attn  # restored after the fused forward
    gen = _engine(model, tok).generate(docs, QUESTION, max_new_tokens=12)
    assert list(gen.token_ids) == reference_greedy(model, out.layout, 12, engine.eos_ids)


def test_partial_hits_fuse_only_the_missing_blocks(tok, docs, llama):
    engine = _engine(llama, tok)
    engine.prefill(docs[:2], QUESTION)  # prefix + two passages cached
    more = [*docs, Block("A fourth passage about the keepers of the Bell Rock light.", "bell")]
    order = [more[3], more[0], more[2], more[1]]  # cached and missing interleaved
    out = engine.prefill(order, QUESTION, all_logits=True)
    assert (out.stats.hits, out.stats.misses) == (3, 2)
    assert (out.logits - reference_logits(llama, out.layout)).abs().max().item() <= 1e-4
    warm = engine.prefill(list(reversed(order)), QUESTION, all_logits=True)
    assert warm.stats.misses == 0
    assert (warm.logits - reference_logits(llama, warm.layout)).abs().max().item() <= 1e-4


def test_stored_blocks_equal_blocks_encoded_alone(tok, docs, llama):
    fused = _engine(llama, tok)
    separate = _engine(llama, tok, prefill="separate")
    fused.generate(docs, QUESTION, max_new_tokens=2)
    separate.generate(docs, QUESTION, max_new_tokens=2)
    plan = fused.plan(docs, QUESTION)
    for key in plan.keys:
        a, b = fused.store.get(key), separate.store.get(key)
        assert a is not None and b is not None and a.keys.shape == b.keys.shape
        assert (a.keys - b.keys).abs().max().item() <= 1e-5 and (a.values - b.values).abs().max().item() <= 1e-5


def test_fused_equals_separate_generation_and_hits_afterwards(tok, docs, llama):
    fused = _engine(llama, tok).generate(docs, QUESTION, max_new_tokens=16, stop_on_eos=False)
    separate = _engine(llama, tok, prefill="separate").generate(docs, QUESTION, max_new_tokens=16,
                                                                 stop_on_eos=False)
    assert fused.token_ids == separate.token_ids and fused.text == separate.text


def test_unsupported_attention_falls_back_to_the_separate_path(tok, docs):
    model = tiny_model("mistral", seed=4, sliding_window=8)  # window shorter than the prompt
    engine = _engine(model, tok)
    short = [Block("Pharos.", "p"), Block("Fox.", "f")]
    out = engine.prefill(short, "Where?", all_logits=True)
    assert out.stats.misses == 3
    assert (out.logits - reference_logits(model, out.layout)).abs().max().item() <= 1e-4
