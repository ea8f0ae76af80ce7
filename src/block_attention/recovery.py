"""Training-free quality recovery for block mode: recompute the first *k* tokens of every block (EPIC-style).

A model that was not block-fine-tuned has never seen a passage whose first tokens attend to nothing before them;
those first tokens (attention sinks) carry most of the mismatch. Recovery processes the assembled blocks in
prompt order: the first ``min(k, n)`` tokens of a block at offset ``o`` are run again through the decoder at
positions ``o..o+k-1``, attending to all KV before ``o`` (already assembled and recovered) and causally to
themselves; their fresh KV is spliced into the assembled cache. The block's other tokens keep their cached,
re-rotated KV. A block at offset 0 (the prompt prefix) is already exact and is skipped.

Contract:

* ``k = 0`` returns the assembled cache untouched (bitwise block mode).
* ``k >= `` every block's length is a chunked full prefill: equal to full mode up to float rounding.
* Only the fresh cache that assembly built is written; the store's :class:`~block_attention.kv.BlockKV` tensors
  are never touched (assembly already copied them).

Cost: one decoder forward of ``min(k, n_b)`` tokens per block ``b`` (no LM head) over a cache prefix of length
``o_b``, blocks in order. The prefix is handed to the model as a throw-away ``DynamicCache`` whose first update
concatenates into new storage, so the assembled cache is read, then written only at the recomputed positions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import DynamicCache

from .assemble import assemble_cache
from .errors import ConfigError
from .kv import BlockKV
from .layout import PromptLayout
from .rope import RotaryInfo, _base_model


def check_recompute_tokens(k: int) -> int:
    """Validate a recompute count (a non-negative int) and return it."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ConfigError(f"recompute_tokens must be an int >= 0 (0 = plain block mode), got {k!r}.")
    return k


def recomputed_token_count(layout: PromptLayout, k: int) -> int:
    """How many context tokens recovery with ``k`` recomputes for ``layout`` (blocks at offset 0 are skipped)."""
    return sum(min(k, len(b.token_ids)) for b in layout.blocks if b.offset > 0)


@torch.inference_mode()
def recompute_block_starts_(model: torch.nn.Module, cache: DynamicCache, layout: PromptLayout, k: int) -> DynamicCache:
    """Recompute, in place, the first ``k`` tokens of every block of ``layout`` in ``cache`` and return ``cache``.

    ``cache`` must be the freshly assembled cache of ``layout``'s blocks (length ``layout.context_len``, batch 1),
    never storage shared with the KV store.
    """
    k = check_recompute_tokens(k)
    if k == 0 or not layout.blocks:
        return cache
    assert cache.get_seq_length() == layout.context_len, (cache.get_seq_length(), layout.context_len)
    base = _base_model(model)
    device = cache.layers[0].keys.device
    for span in layout.blocks:
        n = min(k, len(span.token_ids))
        o = span.offset
        if o == 0 or n == 0:
            continue  # nothing precedes the first block: its cached KV is already what full attention computes
        prefix = DynamicCache(ddp_cache_data=[
            (layer.keys[:, :, :o], layer.values[:, :, :o]) for layer in cache.layers  # [1, H_kv, o, D] views
        ])
        ids = torch.tensor([span.token_ids[:n]], dtype=torch.long, device=device)  # [1, n]
        positions = torch.arange(o, o + n, device=device)[None]  # [1, n]
        base(input_ids=ids, position_ids=positions, past_key_values=prefix, use_cache=True)
        for layer, fresh in zip(cache.layers, prefix.layers):
            layer.keys[:, :, o:o + n].copy_(fresh.keys[:, :, o:o + n])  # [1, H_kv, n, D]
            layer.values[:, :, o:o + n].copy_(fresh.values[:, :, o:o + n])  # [1, H_kv, n, D]
        del prefix
    return cache


def recovered_cache(model: torch.nn.Module, layout: PromptLayout, kvs: Sequence[BlockKV], rotary: RotaryInfo,
                    k: int, device: torch.device | str | None = None) -> DynamicCache:
    """Assemble ``kvs`` (one per block of ``layout``, read only) at their offsets, then recover the first ``k``
    tokens of every block. ``k = 0`` is exactly :func:`~block_attention.assemble.assemble_cache`."""
    if len(kvs) != len(layout.blocks):
        raise ConfigError(f"recovered_cache needs one BlockKV per block: got {len(kvs)} for {len(layout.blocks)} blocks.")
    device = device if device is not None else next(model.parameters()).device
    cache = assemble_cache(kvs, [b.offset for b in layout.blocks], rotary, device)
    return recompute_block_starts_(model, cache, layout, k)
