"""The KV states of one block, as computed at canonical positions ``0..n-1``.

``keys`` and ``values`` stack every layer: ``[layers, kv_heads, n_tokens, head_dim]``. Keys carry the RoPE
rotation of positions ``0..n-1`` (exactly what the model's attention wrote to its cache). A ``BlockKV`` handed
out by the store is shared: consumers must never write into it (assembly always copies into new storage).
:class:`KVGeometry` is what a block of ``n`` tokens must look like for one model; :meth:`KVGeometry.mismatch`
names the first difference (loaded entries are checked against it before use).
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


@dataclass(frozen=True)
class KVGeometry:
    """The shape and dtype every block KV of one model has: ``[layers, kv_heads, n_tokens, head_dim]``, ``dtype``."""

    layers: int
    kv_heads: int
    head_dim: int
    dtype: torch.dtype

    def shape(self, n_tokens: int) -> tuple[int, int, int, int]:
        return (self.layers, self.kv_heads, n_tokens, self.head_dim)

    def mismatch(self, kv: BlockKV, n_tokens: int) -> str | None:
        """Why ``kv`` cannot be the KV of an ``n_tokens`` block of this model, or None when it fits."""
        want = self.shape(n_tokens)
        for name, tensor in (("keys", kv.keys), ("values", kv.values)):
            if tuple(tensor.shape) != want:
                return f"{name} have shape {list(tensor.shape)}, the model needs {list(want)} for {n_tokens} tokens"
            if tensor.dtype != self.dtype:
                return f"{name} have dtype {tensor.dtype}, the model computes {self.dtype}"
        return None
