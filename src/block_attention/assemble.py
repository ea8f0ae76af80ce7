"""Assembly: re-encode cached blocks to their prompt offsets and concatenate them into a transformers cache.

Input blocks are read, never written: concatenation copies into new storage and the rotation then runs in place
on that copy, one layer at a time (float32 temporaries of one layer only). Each layer gets the cache type the
model's attention needs: a full layer, or a sliding-window layer (keeping the last ``window - 1`` tokens) where
the model's mask applies a window; the model's own mask then covers the final block within and beyond the window.
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
    assert keys.shape[0] == len(rotary.layers), (keys.shape, len(rotary.layers))
    per_token = torch.cat([
        torch.full((b.n_tokens,), off, dtype=torch.long, device=device) for b, off in zip(blocks, offsets)
    ])  # [T] offset of each token's block
    rotate_layers_(keys, per_token, rotary)
    data = []
    for i, info in enumerate(rotary.layers):
        kv = (keys[i][None], values[i][None])  # [1, H_kv, T, D] each
        data.append(kv if info.window is None else (*kv, torch.tensor(info.window)))
    return DynamicCache(ddp_cache_data=data)


def rotate_layers_(keys: torch.Tensor, per_token: torch.Tensor, rotary: RotaryInfo) -> torch.Tensor:
    """Rotate ``keys [L, H_kv, T, D]`` in place, token ``t`` by ``per_token[t]`` positions (negative: back)."""
    if bool((per_token != 0).any()):
        tables: dict[tuple[float, ...], tuple[torch.Tensor, torch.Tensor]] = {}
        for layer, info in enumerate(rotary.layers):
            key = tuple(info.inv_freq.tolist())
            if key not in tables:  # one cos/sin table per distinct frequency set (Gemma3: local and global)
                tables[key] = rotation(per_token, info.inv_freq.to(per_token.device), rotary.interleaved)  # [T, R]
            rotate_keys_(keys[layer], *tables[key], rotary.interleaved)  # [H_kv, T, D]
    return keys
