"""Fused cold prefill: the missing blocks and the final block in one forward pass, with block-sparse attention.

The separate cold path runs the decoder twice (every missing block alone, batched; then the final block over the
assembled cache), so every weight is read twice. The fused path runs it once over ``[missing blocks][final
block]``, on top of a cache that already holds the cached blocks at their offsets:

* position ids are global (each token at its place in the prompt), exactly as in the masked oracle;
* during that forward the model's attention is swapped (:func:`fused_attention`) for :func:`block_sparse_attention`,
  which never builds a dense mask: a missing block's rows attend causally to that block only (one SDPA call per
  block), the final block's rows attend to every key with a bottom-right causal mask (one SDPA call);
* afterwards each missing block's KV is cut out of the cache and its keys are rotated back by ``-offset``
  (float32, cast once), which is the block encoded alone at ``0..n-1``: that copy is stored, the cache itself
  continues into decoding unchanged.

Exactness: the attention pattern is the block mask, the positions are the oracle's, so the logits equal the
masked forward up to float rounding (float32 tests <= 1e-4). Stored keys carry one extra rounding (rotate back)
compared with encoding alone; in bfloat16 that is one ulp.

The same attention function, with no missing blocks, runs the final block of every block-mode request on an
``sdpa`` model (``EngineConfig(final_attention="sparse")``, :meth:`BlockAttentionEngine._sparse_final`): one SDPA
call per layer with the key/value heads not expanded, where the model's own sdpa path would first repeat them.

Limits (checked while the forward runs; the engine then falls back to the separate path): soft-capped logits and
attention sinks are structural (the model's attention cannot take the fused mask: :func:`refuse_fused` records the
reason per model and the fused path is not tried again on it); a sliding window shorter than the prompt is a
property of one request (that request falls back). The cache layers are plain full layers (no sliding-window
trimming).

Threads: :func:`fused_attention` changes ``model.config`` for the duration of one forward; callers hold
:func:`~block_attention.engine.threads.model_lock` of the model around it (the engine does). The attention
function is registered with transformers once per process (idempotent).
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

IMPLEMENTATION = "block_attention_fused"


class FusedUnsupported(Exception):
    """Internal: the model's attention needs something the fused path does not do; use the separate path.

    ``structural``: the model can never take the fused path (not just this request)."""

    def __init__(self, reason: str, *, structural: bool = False) -> None:
        super().__init__(reason)
        self.structural = structural


_REFUSALS: "weakref.WeakKeyDictionary[torch.nn.Module, str]" = weakref.WeakKeyDictionary()


def refuse_fused(model: torch.nn.Module, reason: str) -> None:
    """Record that ``model``'s attention cannot take the fused path (shared by every engine on the model)."""
    _REFUSALS[model] = reason


def fused_refusal(model: torch.nn.Module) -> str | None:
    """Why ``model`` cannot take the fused path, or None when it may."""
    return _REFUSALS.get(model)


@dataclass(frozen=True)
class Segments:
    """Which query rows of the fused forward see which keys.

    ``blocks``: for each missing-block occurrence, ``(q_start, length)`` in the forward's input; its keys sit at
    ``past + q_start`` in the cache. ``final``: ``(q_start, length)`` of the final block, which sees every key.
    """

    past: int
    blocks: tuple[tuple[int, int], ...]
    final: tuple[int, int]


_ACTIVE: contextvars.ContextVar[Segments | None] = contextvars.ContextVar("block_attention_segments", default=None)


def block_sparse_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                           **kwargs: object) -> tuple[torch.Tensor, None]:
    """transformers attention function: query ``[1, H, q, D]``, key/value ``[1, H_kv, S, D]`` (cache included).

    Returns ``[1, q, H, D]`` as every transformers attention function does.
    """
    seg = _ACTIVE.get()
    if seg is None:
        raise FusedUnsupported("block_sparse_attention was called outside a fused prefill")
    if kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None or kwargs.get("sinks") is not None:
        raise FusedUnsupported("soft-capped attention or attention sinks", structural=True)
    window = kwargs.get("sliding_window")
    if window is not None and int(window) < key.shape[2]:  # type: ignore[call-overload]
        raise FusedUnsupported("a sliding window shorter than the prompt")
    if query.shape[0] != 1:
        raise FusedUnsupported("batched fused prefill")
    gqa = query.shape[1] != key.shape[1]
    out = torch.empty_like(query)  # [1, H, q, D]
    for start, length in seg.blocks:
        k0 = seg.past + start
        out[:, :, start:start + length] = F.scaled_dot_product_attention(
            query[:, :, start:start + length], key[:, :, k0:k0 + length], value[:, :, k0:k0 + length],
            is_causal=True, scale=scaling, enable_gqa=gqa)  # [1, H, n, D]
    start, length = seg.final
    total = key.shape[2]
    rows = torch.arange(total - length, total, device=query.device)[:, None]  # [F, 1] global key index of each row
    allowed = torch.arange(total, device=query.device)[None, :] <= rows  # [F, S] bottom-right causal
    out[:, :, start:start + length] = F.scaled_dot_product_attention(
        query[:, :, start:start + length], key, value, attn_mask=allowed, scale=scaling, enable_gqa=gqa)
    return out.transpose(1, 2).contiguous(), None  # [1, q, H, D]


_REGISTERED = threading.Event()
_REGISTER_LOCK = threading.Lock()


def _register() -> None:
    """Register :func:`block_sparse_attention` with transformers, once per process."""
    if _REGISTERED.is_set():
        return
    with _REGISTER_LOCK:
        if not _REGISTERED.is_set():
            from transformers import AttentionInterface

            AttentionInterface.register(IMPLEMENTATION, block_sparse_attention)
            _REGISTERED.set()


@contextlib.contextmanager
def fused_attention(model: torch.nn.Module, segments: Segments) -> Iterator[None]:
    """Within the block, ``model``'s attention layers run :func:`block_sparse_attention` over ``segments``.

    Not re-entrant: hold :func:`~block_attention.engine.threads.model_lock` of ``model`` around it.
    """
    _register()
    config = model.config
    previous = config._attn_implementation
    token = _ACTIVE.set(segments)
    config._attn_implementation = IMPLEMENTATION
    try:
        yield
    finally:
        config._attn_implementation = previous
        _ACTIVE.reset(token)


def segments_for(past: int, block_lengths: Sequence[int], final_len: int) -> Segments:
    """Segments of an input laid out as ``[block 0][block 1]...[final]`` after ``past`` cached tokens."""
    blocks, start = [], 0
    for n in block_lengths:
        blocks.append((start, n))
        start += n
    return Segments(past, tuple(blocks), (start, final_len))
