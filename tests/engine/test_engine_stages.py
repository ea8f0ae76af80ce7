"""The engine's public stages: chaining them by hand equals the one-call paths, and the trace adds up."""

from __future__ import annotations

import pytest
import torch

from block_attention import BlockAttentionEngine, GenerationConfig, StoreConfig
from block_attention.core.errors import ConfigError, StoreError
from block_attention.store import KVStore

QUESTION = "Where did the lighthouse stand?"


def test_stages_by_hand_equal_prefill_bitwise(tok, docs, llama):
    engine = BlockAttentionEngine(llama, tok)
    plan = engine.plan(docs, QUESTION, mode="block")
    assert len(plan.keys) == len(plan.layout.blocks) == len(docs) + 1
    lookup = engine.lookup(plan)
    assert len(lookup.missing) == len(docs) + 1 and not lookup.found
    blocks = engine.encode(plan, lookup)
    assert blocks.encoded_blocks == len(docs) + 1 and blocks.encoded_tokens == plan.layout.context_len
    assembled = engine.assemble(plan, blocks)
    assert assembled.cache.get_seq_length() == plan.layout.context_len
    by_hand = engine.prefill_final(plan, assembled, all_logits=True)
    assert by_hand.position == plan.layout.total_len
    one_call = BlockAttentionEngine(llama, tok, store=False).prefill(docs, QUESTION, all_logits=True)
    assert torch.equal(by_hand.logits, one_call.logits)
    again = engine.lookup(engine.plan(list(reversed(docs)), QUESTION))
    assert not again.missing and dict(again.hits_by_tier) == {"memory": len(docs) + 1}


def test_full_mode_plan_needs_no_cache_and_block_mode_does(tok, docs, llama):
    engine = BlockAttentionEngine(llama, tok, store=False)
    full = engine.prefill_final(engine.plan(docs, QUESTION, mode="full"), all_logits=True)
    ref = engine.prefill(docs, QUESTION, mode="full", all_logits=True)
    assert torch.equal(full.logits, ref.logits)
    with pytest.raises(ConfigError, match="assemble"):
        engine.prefill_final(engine.plan(docs, QUESTION, mode="block"))


def test_decode_stage_equals_generate(tok, docs, llama):
    engine = BlockAttentionEngine(llama, tok, store=False)
    plan = engine.plan(docs, QUESTION, max_new_tokens=12)
    prefilled, lookup, blocks, assembled = engine.run_prefill(plan)
    pieces = engine.decode(plan, prefilled, GenerationConfig(max_new_tokens=12, stop_on_eos=False),
                           {"lookup": lookup, "encoded": blocks, "assembled": assembled})
    text = ""
    while True:
        try:
            text += next(pieces)
        except StopIteration as stop:
            result = stop.value
            break
    want = engine.generate(docs, QUESTION, max_new_tokens=12, stop_on_eos=False)
    assert result.token_ids == want.token_ids and text == want.text == result.text
    assert result.stats.misses == len(docs) + 1 and result.stats.new_tokens == 12


def test_trace_misses_equal_store_misses_and_times_add_up(tok, docs, llama):
    engine = BlockAttentionEngine(llama, tok, store=StoreConfig(memory_bytes=64 << 20))
    stats = [engine.generate(d, QUESTION, max_new_tokens=3).stats for d in (docs, docs[:2], docs[1:])]
    store = engine.store.stats()
    assert store.misses == sum(s.misses for s in stats) == len(docs) + 1
    assert store.memory_hits == sum(s.memory_hits for s in stats)
    for s in stats:
        assert s.misses + s.hits == s.blocks
        assert s.lookup_s + s.encode_s + s.assemble_s + s.prefill_s <= s.ttft_s <= s.total_s
        assert s.as_dict()["hits"] == s.hits


def test_closing_a_stream_stops_generation(tok, docs, llama):
    engine = BlockAttentionEngine(llama, tok, store=False)
    stream = engine.stream(docs, QUESTION, max_new_tokens=200, stop_on_eos=False)
    pieces = iter(stream)
    next(pieces)
    stream.close()
    assert list(pieces) == [] and stream.result is None


def test_engine_closes_only_the_store_it_built(tok, llama, tmp_path):
    with BlockAttentionEngine(llama, tok, store=StoreConfig(disk_dir=tmp_path / "a")) as engine:
        built = engine.store
    with pytest.raises(StoreError, match="closed"):
        built.stats()
    given = KVStore(StoreConfig(disk_dir=tmp_path / "b"))
    with BlockAttentionEngine(llama, tok, store=given):
        pass
    assert given.stats().puts == 0  # still open: the caller owns it
    given.close()
    with pytest.raises(ConfigError, match="StoreConfig"):
        BlockAttentionEngine(llama, tok, store="memory")  # type: ignore[arg-type]
