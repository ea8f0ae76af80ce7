"""Assembly: re-encode cached blocks to their prompt offsets and concatenate them into a transformers cache.

Input blocks are read, never written: every block's keys are rotated straight into their slice of one new
``[L, H_kv, T + G, D]`` tensor (one read, one write) and the values are copied into another; both keep room for
``G`` = :data:`~block_attention.hf.cache.GROWTH_TOKENS` more tokens, so the final block and the first decode
steps append in place (:class:`~block_attention.hf.cache.GrowingLayer`) instead of copying the cache. The float32
temporaries of a rotation cover about 1 MB of one block's layers at a time, so they stay in the CPU's cache
(3K SmolLM2 tokens in bf16 on a 2-core AMX machine: 14 ms, against 24 ms with 32 MB chunks). All tokens of a block
move by the same offset, so one cos/sin pair per frequency serves the whole block. Each layer gets the cache type
the model's attention needs: a full layer, or a sliding-window layer (keeping the last ``window - 1`` tokens) where
the model's mask applies a window; the model's own mask then covers the final block within and beyond the window.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import DynamicCache

from block_attention.core.kv import BlockKV
from block_attention.hf.cache import GROWTH_TOKENS, cache_over
from block_attention.hf.rope import RotaryInfo, rotate_block_into

ROTATION_CHUNK_BYTES = 1 << 20  # float32 temporaries of a rotation stay under about twice this (one layer at least)


@torch.no_grad()  # caches hold plain tensors: nothing here is trained through
def assemble_cache(blocks: Sequence[BlockKV], offsets: Sequence[int], rotary: RotaryInfo,
                   device: torch.device | str) -> DynamicCache:
    """A ``DynamicCache`` holding ``blocks`` placed at global ``offsets`` (keys rotated by each block's offset)."""
    assert blocks and len(blocks) == len(offsets)
    layers, heads, _, dim = blocks[0].keys.shape
    assert layers == len(rotary.layers), (layers, len(rotary.layers))
    total = sum(b.n_tokens for b in blocks)
    room = total + GROWTH_TOKENS  # the final block and the first decode steps append in place
    keys = torch.empty((layers, heads, room, dim), dtype=blocks[0].keys.dtype, device=device)  # [L, H_kv, T+G, D]
    values = torch.empty((layers, heads, room, blocks[0].values.shape[-1]), dtype=blocks[0].values.dtype,
                         device=device)  # [L, H_kv, T+G, Dv]
    start = 0
    for block, offset in zip(blocks, offsets):
        end = start + block.n_tokens
        move_keys(keys[:, :, start:end], block.keys.to(device), offset, rotary)
        values[:, :, start:end].copy_(block.values)
        start = end
    return cache_over([(keys[i][None], values[i][None], info.window)  # [1, H_kv, T+G, D] each
                       for i, info in enumerate(rotary.layers)], held=total)


@torch.no_grad()
def move_keys(dest: torch.Tensor, src: torch.Tensor, delta: int, rotary: RotaryInfo) -> torch.Tensor:
    """Write the keys ``src [L, H_kv, n, D]`` of one block moved by ``delta`` positions (negative: back) into
    ``dest`` (same shape; may be ``src``). Layers sharing a frequency set are rotated together."""
    if delta == 0:
        return dest if dest.data_ptr() == src.data_ptr() else dest.copy_(src)
    per_layer = src[0].numel() * 4  # float32 bytes of one layer's keys of this block
    step = max(1, ROTATION_CHUNK_BYTES // max(per_layer, 1))  # layers rotated together
    for inv_freq, members in rotary.frequency_groups:
        if len(members) == len(rotary.layers):  # one frequency set: contiguous chunks of layers
            for first in range(0, len(members), step):
                rotate_block_into(dest[first:first + step], src[first:first + step], delta, inv_freq,
                                  rotary.interleaved)
        else:
            for layer in members:
                rotate_block_into(dest[layer], src[layer], delta, inv_freq, rotary.interleaved)
    return dest
