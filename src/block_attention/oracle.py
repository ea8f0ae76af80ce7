"""Reference computations for correctness checks: one masked forward over the whole prompt.

The oracle of block attention is a single forward over the concatenated tokens with the block-structured 4D mask
(each block causal within itself, final block causal over everything) and global positions ``0..T-1``. The engine's
block path must match it; tests and the fine-tuning collator rely on this module.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .layout import PromptLayout, layout_mask


@torch.inference_mode()
def reference_logits(model: torch.nn.Module, layout: PromptLayout, extra_ids: Sequence[int] = ()) -> torch.Tensor:
    """Logits ``[F + len(extra_ids), V]`` of the final block (and any appended tokens) under the block mask."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    ids = layout.input_ids() + [int(t) for t in extra_ids]
    input_ids = torch.tensor([ids], device=device)  # [1, T]
    mask = layout_mask(layout, extra_global=len(extra_ids), dtype=dtype, device=device)  # [1, 1, T, T]
    positions = torch.arange(len(ids), device=device)[None]  # [1, T]
    logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions).logits[0]  # [T, V]
    return logits[layout.context_len:]


def reference_greedy(model: torch.nn.Module, layout: PromptLayout, max_new_tokens: int,
                     eos_ids: frozenset[int] = frozenset()) -> list[int]:
    """Greedy tokens by repeated full masked forwards (no cache): slow, simple, independent of the engine."""
    out: list[int] = []
    for _ in range(max_new_tokens):
        token = int(torch.argmax(reference_logits(model, layout, out)[-1]).item())
        if token in eos_ids:
            break
        out.append(token)
    return out
