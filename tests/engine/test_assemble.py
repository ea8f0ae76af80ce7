"""Cache assembly: blocks land at their offsets with keys rotated by each block's offset, the inputs are never
written, and rotating a few layers at a time (bounded temporaries) gives the same cache as all layers at once."""

from __future__ import annotations

import torch

from block_attention.core.kv import BlockKV
from block_attention.engine import assemble
from block_attention.hf.rope import inspect_model
from block_attention.testing import tiny_model
from block_attention.testing.rope import shift_keys_reference


def _blocks(layers: int, heads: int, dim: int) -> list[BlockKV]:
    torch.manual_seed(0)
    return [BlockKV(torch.randn(layers, heads, n, dim), torch.randn(layers, heads, n, dim)) for n in (5, 9, 3)]


def test_layer_chunks_equal_one_pass_and_inputs_stay_unchanged(monkeypatch):
    model = tiny_model("llama", seed=0)
    rotary = inspect_model(model)
    layers = len(rotary.layers)
    blocks = _blocks(layers, rotary.kv_heads or 2, rotary.head_dim)
    before = [(b.keys.clone(), b.values.clone()) for b in blocks]
    offsets = [0, 5, 14]
    whole = assemble.assemble_cache(blocks, offsets, rotary, "cpu")
    one_layer = blocks[0].keys[0].numel() * 4
    monkeypatch.setattr(assemble, "ROTATION_CHUNK_BYTES", one_layer)  # one layer of the smallest block at a time
    chunked = assemble.assemble_cache(blocks, offsets, rotary, "cpu")
    for a, b in zip(whole.layers, chunked.layers):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
    for b, (k, v) in zip(blocks, before):
        assert torch.equal(b.keys, k) and torch.equal(b.values, v)
    for i, (block, offset) in enumerate(zip(blocks, offsets)):  # each block rotated by its own offset
        start = sum(x.n_tokens for x in blocks[:i])
        want = shift_keys_reference(block.keys, torch.full((block.n_tokens,), offset), rotary.inv_freq)  # [L,H,n,D]
        got = torch.stack([layer.keys[0, :, start:start + block.n_tokens] for layer in whole.layers])
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
        values = torch.stack([layer.values[0, :, start:start + block.n_tokens] for layer in whole.layers])
        assert torch.equal(values, block.values)
