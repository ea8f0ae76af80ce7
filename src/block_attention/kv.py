"""The KV states of one block, as computed at canonical positions ``0..n-1``.

``keys`` and ``values`` stack every layer: ``[layers, kv_heads, n_tokens, head_dim]``. Keys carry the RoPE
rotation of positions ``0..n-1`` (exactly what the model's attention wrote to its cache). A ``BlockKV`` handed
out by the store is shared: consumers must never write into it (assembly always copies into new storage).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BlockKV:
    keys: torch.Tensor  # [L, H_kv, n, D]
    values: torch.Tensor  # [L, H_kv, n, D]

    def __post_init__(self) -> None:
        assert self.keys.shape == self.values.shape, (self.keys.shape, self.values.shape)
        assert self.keys.dim() == 4, self.keys.shape
        assert self.keys.dtype == self.values.dtype

    @property
    def n_tokens(self) -> int:
        return int(self.keys.shape[2])

    @property
    def nbytes(self) -> int:
        return self.keys.numel() * self.keys.element_size() + self.values.numel() * self.values.element_size()

    def to(self, device: torch.device | str) -> "BlockKV":
        return BlockKV(self.keys.to(device), self.values.to(device))
