"""The final block's sparse attention (EngineConfig.final_attention="sparse"): the same logits and tokens as the
model's own attention, used only where it can serve, and a refusal part-way through the forward leaves the cache
as it was."""

from __future__ import annotations

import contextlib

import pytest

from block_attention import Block, BlockAttentionEngine, EngineConfig, StoreConfig
from block_attention.core.errors import ConfigError
from block_attention.engine import engine as engine_module
from block_attention.engine import fused
from block_attention.testing import FAMILIES, tiny_model
from block_attention.testing.oracle import reference_greedy, reference_logits

QUESTION = "Where did the lighthouse stand?"


def _engine(model, tok, attention="sparse"):
    return BlockAttentionEngine(model, tok, EngineConfig(final_attention=attention, repeat_cache_bytes=0),
                                store=StoreConfig(memory_bytes=64 << 20))


@pytest.fixture
def sparse_calls(monkeypatch):
    """How many forwards ran under the sparse final attention."""
    calls = []
    real = engine_module.fused_attention

    @contextlib.contextmanager
    def counting(model, segments):
        calls.append(segments)
        with real(model, segments):
            yield

    monkeypatch.setattr(engine_module, "fused_attention", counting)
    return calls


@pytest.mark.parametrize("family", FAMILIES)
def test_sparse_final_block_equals_the_models_attention(family, tok, docs, sparse_calls):
    model = tiny_model(family, seed=2)
    sparse, plain = _engine(model, tok), _engine(model, tok, "model")
    for blocks in (docs, list(reversed(docs))):  # cold, then warm from the store
        a = sparse.prefill(blocks, QUESTION, all_logits=True)
        b = plain.prefill(blocks, QUESTION, all_logits=True)
        assert (a.logits - b.logits).abs().max().item() <= 1e-5
        assert (a.logits - reference_logits(model, a.layout)).abs().max().item() <= 1e-4
    assert len(sparse_calls) == 2 and all(s.blocks == () for s in sparse_calls)
    assert model.config._attn_implementation == "sdpa"  # restored after every sparse forward
    gen = sparse.generate(docs, QUESTION, max_new_tokens=10, stop_on_eos=False)
    assert list(gen.token_ids) == reference_greedy(model, sparse.layout(docs, QUESTION), 10)


def test_model_attention_and_eager_models_never_take_it(tok, docs, sparse_calls):
    _engine(tiny_model("llama", seed=2), tok, "model").prefill(docs, QUESTION)
    _engine(tiny_model("llama", seed=2, attn_implementation="eager"), tok).prefill(docs, QUESTION)
    assert sparse_calls == []


def test_window_shorter_than_the_prompt_runs_the_models_attention(tok, sparse_calls):
    model = tiny_model("mistral", seed=4, sliding_window=8)
    engine = _engine(model, tok)
    blocks = [Block("Pharos.", "p"), Block("Fox.", "f")]
    out = engine.prefill(blocks, "Where?", all_logits=True)
    assert sparse_calls == []
    assert (out.logits - reference_logits(model, out.layout)).abs().max().item() <= 1e-4


def test_refusal_part_way_restores_the_cache_and_is_remembered(tok, docs, monkeypatch):
    model = tiny_model("llama", seed=6)
    real = fused.block_sparse_attention
    seen = []

    def refuse_after_the_first_layer(module, query, key, value, attention_mask, **kwargs):
        seen.append(module.layer_idx)
        if module.layer_idx > 0:  # layer 0's cache was already extended by the final block
            raise fused.FusedUnsupported("a test refusal", structural=True)
        return real(module, query, key, value, attention_mask, **kwargs)

    from transformers import AttentionInterface

    fused._register()  # the real function first, so the engine does not register it over the test's
    AttentionInterface.register(fused.IMPLEMENTATION, refuse_after_the_first_layer)
    try:
        engine = _engine(model, tok)
        out = engine.prefill(docs, QUESTION, all_logits=True)
        assert seen == [0, 1] and fused.fused_refusal(model) == "a test refusal"
        assert out.cache.get_seq_length() == out.layout.total_len  # the final block appended once, not twice
        assert (out.logits - reference_logits(model, out.layout)).abs().max().item() <= 1e-4
        gen = engine.generate(docs, QUESTION, max_new_tokens=6, stop_on_eos=False)
        assert seen == [0, 1]  # refused for this model: not tried again
        assert list(gen.token_ids) == reference_greedy(model, out.layout, 6)
    finally:
        AttentionInterface.register(fused.IMPLEMENTATION, real)


def test_config_validates():
    with pytest.raises(ConfigError, match="final_attention"):
        EngineConfig(final_attention="flash")
    with pytest.raises(ConfigError, match="repeat_cache_bytes"):
        EngineConfig(repeat_cache_bytes=-1)
