"""Assembly: re-encode cached blocks to their prompt offsets and concatenate them into a transformers cache.

Input blocks are read, never written: concatenation copies into new storage and the rotation then runs in place
on that copy, one layer at a time (float32 temporaries of one layer only).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import DynamicCache

from .kv import BlockKV
from .rope import RotaryInfo, rotate_keys_, rotation


def assemble_cache(blocks: Sequence[BlockKV], offsets: Sequence[int], rotary: RotaryInfo,
                   device: torch.device | str) -> DynamicCache:
    """A ``DynamicCache`` holding ``blocks`` placed at global ``offsets`` (keys rotated by each block's offset)."""
    assert blocks and len(blocks) == len(offsets)
    keys = torch.cat([b.keys.to(device) for b in blocks], dim=2)  # [L, H_kv, T, D] new storage
    values = torch.cat([b.values.to(device) for b in blocks], dim=2)  # [L, H_kv, T, D] new storage
    per_token = torch.cat([
        torch.full((b.n_tokens,), off, dtype=torch.long, device=device) for b, off in zip(blocks, offsets)
    ])  # [T] offset of each token's block
    rotate_layers_(keys, per_token, rotary)
    return DynamicCache(ddp_cache_data=[(keys[i][None], values[i][None]) for i in range(keys.shape[0])])


def rotate_layers_(keys: torch.Tensor, per_token: torch.Tensor, rotary: RotaryInfo) -> torch.Tensor:
    """Rotate ``keys [L, H_kv, T, D]`` in place, token ``t`` by ``per_token[t]`` positions (negative: back)."""
    if bool((per_token != 0).any()):
        cos, sin = rotation(per_token, rotary.inv_freq.to(per_token.device))  # [T, D] float32
        for layer in range(keys.shape[0]):
            rotate_keys_(keys[layer], cos, sin)  # [H_kv, T, D]
    return keys
