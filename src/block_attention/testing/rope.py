"""A per-token RoPE shift, written independently of :func:`block_attention.hf.rope.rotate_block_into`: the oracle the
rotation tests compare the library's per-block rotation against."""

from __future__ import annotations

import torch


def shift_keys_reference(keys: torch.Tensor, offsets: torch.Tensor, inv_freq: torch.Tensor,
                         interleaved: bool = False) -> torch.Tensor:
    """``keys [..., T, D]`` with token ``t`` rotated by ``offsets[t]`` positions on the leading ``2 * len(inv_freq)``
    dims (a per-token cos/sin table, rotate-half or interleaved pairs, float32 math, one cast back); a new tensor."""
    freqs = offsets.to(torch.float32)[:, None] * inv_freq.to(torch.float32)[None, :]  # [T, R/2]
    emb = torch.repeat_interleave(freqs, 2, dim=-1) if interleaved else torch.cat((freqs, freqs), dim=-1)  # [T, R]
    cos, sin = emb.cos(), emb.sin()
    out = keys.clone()
    width = cos.shape[-1]
    k = keys[..., :width].to(torch.float32)  # [..., T, R]
    if interleaved:
        pairs = k.unflatten(-1, (-1, 2))  # [..., T, R/2, 2]
        rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)  # [..., T, R]
    else:
        half = width // 2
        rotated = torch.cat((-k[..., half:], k[..., :half]), dim=-1)  # rotate_half(k)
    out[..., :width] = k * cos + rotated * sin
    return out
