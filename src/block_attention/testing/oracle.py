"""Reference computations for correctness checks: one masked forward over the whole prompt.

The oracle of block attention is a single forward over the concatenated tokens with global positions ``0..T-1``
and, on every attention layer, the block-structured mask (each block causal within itself, final block causal over
everything) AND the mask the model itself applies on that layer (its sliding window, if any). The model's own
per-layer masks are read from a plain forward over the same tokens, so the oracle applies exactly the model's
window rules without knowing them; the masked forward then replaces each attention layer's mask. The engine's
block path must match it; tests rely on this module.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from block_attention.core.layout import PromptLayout, additive_mask, block_causal_mask


def attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's attention modules (one per decoder layer, in order)."""
    mods = [m for m in model.modules() if type(m).__name__.endswith("Attention") and hasattr(m, "layer_idx")]
    assert mods, f"no attention modules found in {type(model).__name__}"
    return mods


@contextmanager
def _mask_hooks(model: torch.nn.Module, replace: dict[torch.nn.Module, torch.Tensor] | None,
                seen: dict[torch.nn.Module, torch.Tensor | None]) -> Iterator[None]:
    """Record (and, given ``replace``, substitute) the ``attention_mask`` each attention module is called with."""
    def hook(module, args, kwargs):
        assert "attention_mask" in kwargs, f"{type(module).__name__} got its mask positionally"
        seen[module] = kwargs["attention_mask"]
        if replace is not None:
            kwargs = {**kwargs, "attention_mask": replace[module]}
        return args, kwargs

    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in attention_modules(model)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _allowed(mask: torch.Tensor | None, total: int, device: torch.device) -> torch.Tensor:
    """A mask as the model passed it (None = causal fast path, boolean, or additive float) -> boolean ``[T, T]``."""
    if mask is None:
        return torch.ones(total, total, dtype=torch.bool, device=device).tril_()
    assert tuple(mask.shape[-2:]) == (total, total), mask.shape
    m = mask.reshape(-1, total, total)[0]  # [T, T]
    return m if m.dtype == torch.bool else m > torch.finfo(m.dtype).min / 2


@torch.inference_mode()
def model_masks(model: torch.nn.Module, input_ids: torch.Tensor) -> dict[torch.nn.Module, torch.Tensor]:
    """Boolean ``[T, T]`` mask the model applies on each attention module for a plain forward of ``input_ids``."""
    total = input_ids.shape[1]
    positions = torch.arange(total, device=input_ids.device)[None]  # [1, T]
    seen: dict[torch.nn.Module, torch.Tensor | None] = {}
    with _mask_hooks(model, None, seen):
        model(input_ids=input_ids, position_ids=positions, use_cache=False)
    return {m: _allowed(mask, total, input_ids.device) for m, mask in seen.items()}


@torch.inference_mode()
def reference_logits(model: torch.nn.Module, layout: PromptLayout, extra_ids: Sequence[int] = ()) -> torch.Tensor:
    """Logits ``[F + len(extra_ids), V]`` of the final block (and any appended tokens) under the block mask."""
    return _masked_logits(model, layout, extra_ids, None)


def _masked_logits(model: torch.nn.Module, layout: PromptLayout, extra_ids: Sequence[int],
                   own: dict[torch.nn.Module, torch.Tensor] | None) -> torch.Tensor:
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    ids = layout.input_ids() + [int(t) for t in extra_ids]
    total = len(ids)
    input_ids = torch.tensor([ids], device=device)  # [1, T]
    if own is None:
        own = model_masks(model, input_ids)
    blocks = block_causal_mask(layout.block_lengths, len(layout.final_ids) + len(extra_ids), device)  # [T, T]
    # A model's own mask of a longer sequence restricted to its first T rows/columns is the mask of length T.
    per_layer = {m: additive_mask(blocks & mask[:total, :total], dtype) for m, mask in own.items()}
    positions = torch.arange(total, device=device)[None]  # [1, T]
    seen: dict[torch.nn.Module, torch.Tensor | None] = {}
    with torch.inference_mode(), _mask_hooks(model, per_layer, seen):
        out = model(input_ids=input_ids, attention_mask=additive_mask(blocks, dtype), position_ids=positions,
                    use_cache=False)
    assert seen.keys() == per_layer.keys()
    return out.logits[0][layout.context_len:]  # [F + extra, V]


def reference_greedy(model: torch.nn.Module, layout: PromptLayout, max_new_tokens: int,
                     eos_ids: frozenset[int] = frozenset()) -> list[int]:
    """Greedy tokens by repeated full masked forwards (no cache): slow, simple, independent of the engine."""
    device = next(model.parameters()).device
    # The model's own masks depend on the length only (no padding): read them once at the longest length.
    longest = torch.tensor([layout.input_ids() + [0] * max_new_tokens], device=device)  # [1, T + N]
    own = model_masks(model, longest)
    out: list[int] = []
    for _ in range(max_new_tokens):
        token = int(torch.argmax(_masked_logits(model, layout, out, own)[-1]).item())
        if token in eos_ids:
            break
        out.append(token)
    return out
