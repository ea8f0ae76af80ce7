"""Test helpers for KV store code: deterministic block KV tensors, bitwise comparison and cache keys."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from block_attention.core.kv import BlockKV
from block_attention.store.keys import CacheKey


def make_kv(
    seed: int = 0,
    *,
    layers: int = 2,
    heads: int = 2,
    n_tokens: int = 8,
    head_dim: int = 16,
    dtype: torch.dtype = torch.float32,
) -> BlockKV:
    """Random (seeded) KV of one block; float32 default: 2*2*8*16*4 = 2048 bytes per tensor, 4096 per entry."""
    gen = torch.Generator().manual_seed(seed)
    shape = (layers, heads, n_tokens, head_dim)
    keys = torch.randn(shape, generator=gen).to(dtype)
    values = torch.randn(shape, generator=gen).to(dtype)
    return BlockKV(keys, values)


def bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Exact equality of dtype, shape and every bit (NaN-safe, bf16-safe)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    a, b = a.detach().cpu().contiguous(), b.detach().cpu().contiguous()
    return bytes(a.view(torch.uint8).numpy()) == bytes(b.view(torch.uint8).numpy())


def kv_bitwise_equal(a: BlockKV, b: BlockKV) -> bool:
    return bitwise_equal(a.keys, b.keys) and bitwise_equal(a.values, b.values)


def key(doc: str = "doc-0", fp: str = "fp-a", content: str = "hash-0") -> CacheKey:
    return CacheKey(fingerprint=fp, doc_id=doc, content_hash=content)


SPECIAL_FILES = ("symlink-outside", "symlink-devzero", "fifo", "directory")


def plant_special_file(path: Path, kind: str, victim: Path) -> None:
    """Replace the value file at ``path`` by a link to ``victim`` or ``/dev/zero``, a FIFO or a directory."""
    path.unlink()
    if kind == "symlink-outside":
        path.symlink_to(victim)
    elif kind == "symlink-devzero":
        path.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    else:
        raise ValueError(f"unknown special file kind {kind!r}; use one of {SPECIAL_FILES}")
