"""Optional lossy compression of stored block KV for the lower tiers (disk, remote): int8 with fp16 scales.

Keys are quantized per channel (one scale per layer, head and dimension, over the block's tokens: RoPE'd keys have
outlier channels), values per token (one scale per layer, head and token, over the head dimension), symmetric,
round to nearest. Bytes per element fall from 2 (bf16/fp16) or 4 (fp32) to 1 plus the scales (``2/n`` and ``2/D``
bytes per element). Decoding returns the original dtype and shape. The memory tier never holds compressed KV, so
only entries read back from disk or Redis carry the quantization error (measured in docs/benchmarks.md).

Contract: :func:`check_codec` is the one check of a codec name (:data:`CODECS`); :func:`encode` maps a :class:`~block_attention.core.kv.BlockKV` to named CPU tensors, :func:`decode` inverts
it and raises :class:`~block_attention.core.errors.CorruptEntryError` when the tensors are not what ``encode`` writes.
"""

from __future__ import annotations

from typing import Literal

import torch

from block_attention.core.errors import ConfigError, CorruptEntryError
from block_attention.core.kv import BlockKV

Codec = Literal["none", "int8"]
CODECS = ("none", "int8")
_Q = 127.0


def is_codec(name: object) -> bool:
    """Whether ``name`` is one of :data:`CODECS`."""
    return isinstance(name, str) and name in CODECS


def check_codec(name: object, setting: str = "StoreConfig.kv_codec") -> Codec:
    """``name`` as a :data:`Codec`, or a :class:`ConfigError` naming ``setting`` and the valid names."""
    if not is_codec(name):
        raise ConfigError(f"{setting} must be {' or '.join(repr(c) for c in CODECS)}, got {name!r}; pass "
                          "kv_codec='int8' to halve disk and remote bytes (lossy), or 'none'.")
    return name  # type: ignore[return-value]


def names(codec: Codec) -> frozenset[str]:
    """The tensor names an entry written with ``codec`` holds."""
    if codec == "int8":
        return frozenset({"keys_q", "keys_scale", "values_q", "values_scale"})
    return frozenset({"keys", "values"})


def _quantize(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 of ``x`` with one fp16 scale per slice along ``dim`` (kept as a size-1 dim)."""
    x32 = x.to(torch.float32)
    scale = (x32.abs().amax(dim=dim, keepdim=True) / _Q).to(torch.float16)  # [..., 1, ...]
    safe = scale.to(torch.float32).clamp_min(torch.finfo(torch.float16).tiny)
    q = (x32 / safe).round_().clamp_(-_Q, _Q).to(torch.int8)
    return q, scale


def encode(kv: BlockKV, codec: Codec) -> dict[str, torch.Tensor]:
    """Named CPU tensors of ``kv`` for ``codec`` (``"none"``: the tensors themselves)."""
    keys = kv.keys.detach().to("cpu").contiguous()  # [L, H_kv, n, D]
    values = kv.values.detach().to("cpu").contiguous()  # [L, H_kv, n, D]
    if codec == "none":
        if keys.untyped_storage().data_ptr() == values.untyped_storage().data_ptr():
            values = values.clone()  # safetensors refuses tensors that share storage
        return {"keys": keys, "values": values}
    keys_q, keys_scale = _quantize(keys, dim=2)  # [L, H_kv, n, D] int8, [L, H_kv, 1, D] fp16 per channel
    values_q, values_scale = _quantize(values, dim=3)  # [L, H_kv, n, D] int8, [L, H_kv, n, 1] fp16 per token
    return {"keys_q": keys_q, "keys_scale": keys_scale, "values_q": values_q, "values_scale": values_scale}


def decode(tensors: dict[str, torch.Tensor], codec: Codec, dtype: torch.dtype, shape: list[int]) -> BlockKV:
    """The :class:`BlockKV` of ``tensors`` written by :func:`encode` with ``codec`` (original dtype and shape)."""
    if set(tensors) != names(codec):
        raise CorruptEntryError(f"entry holds tensors {sorted(tensors)}, expected {sorted(names(codec))}")
    if codec == "none":
        return BlockKV(tensors["keys"].contiguous(), tensors["values"].contiguous())
    layers, heads, n, dim = shape
    expected = {"keys_q": ([layers, heads, n, dim], torch.int8), "keys_scale": ([layers, heads, 1, dim], torch.float16),
                "values_q": ([layers, heads, n, dim], torch.int8),
                "values_scale": ([layers, heads, n, 1], torch.float16)}
    for name, (want_shape, want_dtype) in expected.items():
        t = tensors[name]
        if list(t.shape) != want_shape or t.dtype != want_dtype:
            raise CorruptEntryError(f"entry tensor {name} is {t.dtype} {list(t.shape)}, expected {want_dtype} "
                                    f"{want_shape}")
    keys = tensors["keys_q"].to(torch.float32) * tensors["keys_scale"].to(torch.float32)  # [L, H_kv, n, D]
    values = tensors["values_q"].to(torch.float32) * tensors["values_scale"].to(torch.float32)  # [L, H_kv, n, D]
    return BlockKV(keys.to(dtype).contiguous(), values.to(dtype).contiguous())
