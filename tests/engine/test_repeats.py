"""Exact repeats (engine/repeats.py): a repeated block-mode request reuses the final block's KV and logits, and its
logits, cache and tokens are bitwise those of the request run in full; any change of layout, recovery options,
weights or store contents runs the final block again."""

from __future__ import annotations

import torch

from block_attention import Block, BlockAttentionEngine, EngineConfig, StoreConfig
from block_attention.engine.repeats import FinalBlock, RepeatCache
from block_attention.hf.cache import layer_tensors
from block_attention.testing import tiny_model
from block_attention.testing.oracle import reference_greedy

QUESTION = "Where did the lighthouse stand?"


def _engine(model, tok, **config):
    return BlockAttentionEngine(model, tok, EngineConfig(**config), store=StoreConfig(memory_bytes=64 << 20))


def _prefill(engine, blocks, question=QUESTION, **plan):
    prefilled, *_ = engine.run_prefill(engine.plan(blocks, question, **plan))
    return prefilled


def test_repeat_reuses_the_final_block_and_is_bitwise_the_full_run(tok, docs, llama):
    engine = _engine(llama, tok)
    first = engine.generate(docs, QUESTION, max_new_tokens=12, stop_on_eos=False)
    again = engine.generate(docs, QUESTION, max_new_tokens=12, stop_on_eos=False)
    assert not first.stats.final_reused and again.stats.final_reused
    assert again.token_ids == first.token_ids and again.text == first.text
    layout = engine.layout(docs, QUESTION)
    assert list(again.token_ids) == reference_greedy(llama, layout, 12)
    assert engine.repeats.hits == 1 and len(engine.repeats) == 1

    reused = _prefill(engine, docs)
    fresh = _prefill(_engine(llama, tok, repeat_cache_bytes=0), docs)
    assert reused.reused and not fresh.reused
    assert torch.equal(reused.logits, fresh.logits)
    for (k1, v1), (k2, v2) in zip(layer_tensors(reused.cache), layer_tensors(fresh.cache), strict=True):
        assert torch.equal(k1, k2) and torch.equal(v1, v2)


def test_returned_logits_are_a_copy(tok, docs, llama):
    engine = _engine(llama, tok)
    engine.generate(docs, QUESTION, max_new_tokens=1)
    _prefill(engine, docs).logits.fill_(0.0)  # a caller writing the logits it got
    again = _prefill(engine, docs)
    assert again.reused and torch.equal(again.logits, _prefill(_engine(llama, tok), docs).logits)


def test_sampled_repeat_draws_the_same_tokens_for_the_same_seed(tok, docs, llama):
    engine = _engine(llama, tok)
    kwargs = dict(max_new_tokens=10, do_sample=True, temperature=1.5, seed=7, stop_on_eos=False)
    first = engine.generate(docs, QUESTION, **kwargs)
    again = engine.generate(docs, QUESTION, **kwargs)
    assert again.stats.final_reused and again.token_ids == first.token_ids


def test_any_other_layout_or_option_runs_the_final_block(tok, docs, llama):
    engine = _engine(llama, tok)
    engine.generate(docs, QUESTION, max_new_tokens=1)
    variants = [
        dict(blocks=list(reversed(docs))),  # same passages, other offsets
        dict(question="Who kept the light?"),  # another final block
        dict(recompute_tokens=2),  # recovery changes the context KV
        dict(sink="prefix"),  # blocks encoded behind the prefix: other keys
        dict(system="Answer in one word."),  # another prefix block
    ]
    for variant in variants:
        blocks, question = variant.pop("blocks", docs), variant.pop("question", QUESTION)
        out = engine.generate(blocks, question, max_new_tokens=1, **variant)
        assert not out.stats.final_reused, variant
    for variant in ({"recompute_tokens": 2}, {"sink": "prefix"}):  # each of those is an exact repeat itself
        assert engine.generate(docs, QUESTION, max_new_tokens=1, **variant).stats.final_reused
    scored = engine.prefill(docs, QUESTION, all_logits=True)  # every final-block row is asked for: it runs
    assert not scored.stats.final_reused and scored.logits.shape[0] == len(scored.layout.final_ids)


def test_recovery_repeat_equals_its_full_run(tok, docs, llama):
    engine = _engine(llama, tok)
    first = engine.generate(docs, QUESTION, max_new_tokens=8, stop_on_eos=False, recompute_tokens=3)
    again = engine.generate(docs, QUESTION, max_new_tokens=8, stop_on_eos=False, recompute_tokens=3)
    assert again.stats.final_reused and again.stats.recomputed_tokens == first.stats.recomputed_tokens > 0
    assert again.token_ids == first.token_ids


def test_changed_weights_and_evicted_blocks_run_the_final_block(tok, docs):
    model = tiny_model("llama", seed=5)
    engine = _engine(model, tok)
    engine.generate(docs, QUESTION, max_new_tokens=1)
    engine.store.clear()  # the blocks are gone: recomputed, and the final block runs again
    assert not engine.generate(docs, QUESTION, max_new_tokens=1).stats.final_reused
    assert engine.generate(docs, QUESTION, max_new_tokens=1).stats.final_reused
    with torch.no_grad():
        next(model.parameters()).add_(0.01)  # weights edited in place: a new fingerprint
    edited = engine.generate(docs, QUESTION, max_new_tokens=6, stop_on_eos=False)
    assert not edited.stats.final_reused
    assert list(edited.token_ids) == reference_greedy(model, engine.layout(docs, QUESTION), 6)


def test_zero_budget_keeps_nothing(tok, docs, llama):
    engine = _engine(llama, tok, repeat_cache_bytes=0)
    engine.generate(docs, QUESTION, max_new_tokens=1)
    assert not engine.generate(docs, QUESTION, max_new_tokens=1).stats.final_reused and len(engine.repeats) == 0


def test_budget_evicts_the_least_recently_used():
    def entry(tokens: int) -> FinalBlock:
        return FinalBlock(torch.zeros(2, 1, 1, tokens, 4), torch.zeros(2, 1, 1, tokens, 4), torch.zeros(1, 8))

    size = entry(3).nbytes
    cache = RepeatCache(max_bytes=2 * size)
    assert cache.put("a", entry(3)) and cache.put("b", entry(3))
    assert cache.get("a") is not None  # "b" is now the least recently used
    assert cache.put("c", entry(3))
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
    assert (len(cache), cache.nbytes, cache.evictions) == (2, 2 * size, 1)
    assert not cache.put("big", entry(30)) and len(cache) == 2  # larger than the whole budget: not kept
    cache.put("a", entry(3))  # replacing an entry does not count it twice
    assert cache.nbytes == 2 * size
    cache.clear()
    assert (len(cache), cache.nbytes) == (0, 0)


def test_windowed_model_keeps_only_what_its_window_holds(tok):
    model = tiny_model("mistral", seed=4, sliding_window=8)  # the final block is longer than the window
    engine = _engine(model, tok)
    blocks = [Block("Pharos.", "p"), Block("Fox.", "f")]
    first = engine.generate(blocks, "Where?", max_new_tokens=4, stop_on_eos=False)
    again = engine.generate(blocks, "Where?", max_new_tokens=4, stop_on_eos=False)
    assert not again.stats.final_reused and again.token_ids == first.token_ids
