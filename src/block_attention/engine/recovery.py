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
* Only the fresh cache that assembly built is written; the store's :class:`~block_attention.core.kv.BlockKV` tensors
  are never touched (assembly already copied them).

Two strategies compute the same thing:

* ``one_pass`` (default for ``sdpa``/``eager`` attention, which honour a 4D mask): all recomputed tokens of all
  blocks in ONE decoder forward (no LM head) over the assembled cache, with a mask that lets each recomputed token
  see the cached tokens before it that are *not* recomputed, and the recomputed tokens before it (their fresh KV).
  Layer by layer this is exactly what the sequential order computes, at the cost of one forward of ``sum_b k_b``
  tokens, whatever the number of blocks.
* ``sequential`` (any attention implementation, e.g. flash-attention, which ignores custom masks): block by block,
  one forward of ``k_b`` tokens over the prefix ``[0, o_b)`` with the plain causal mask.

Either way the model works on a throw-away ``DynamicCache`` whose first update concatenates into new storage; the
assembled cache is written only at the recomputed positions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import DynamicCache

from block_attention.core.config import check_recompute_tokens
from block_attention.core.errors import ConfigError
from block_attention.core.kv import BlockKV
from block_attention.core.layout import PromptLayout, additive_mask
from block_attention.hf.cache import cache_device, cache_from, layer_tensors, layer_views
from block_attention.hf.compat import cache_kwargs
from block_attention.hf.rope import RotaryInfo
from block_attention.hf.unwrap import base_model
from .assemble import assemble_cache


def recomputed_token_count(layout: PromptLayout, k: int) -> int:
    """How many context tokens recovery with ``k`` recomputes for ``layout`` (blocks at offset 0 are skipped)."""
    return sum(min(k, len(b.token_ids)) for b in layout.blocks if b.offset > 0)


MASKED_ATTENTION = frozenset({"sdpa", "eager"})  # implementations that apply a custom 4D mask


@torch.inference_mode()
def recompute_block_starts_(model: torch.nn.Module, cache: DynamicCache, layout: PromptLayout, k: int,
                            strategy: str = "auto") -> DynamicCache:
    """Recompute, in place, the first ``k`` tokens of every block of ``layout`` in ``cache`` and return ``cache``.

    ``cache`` must be the freshly assembled cache of ``layout``'s blocks (length ``layout.context_len``, batch 1),
    never storage shared with the KV store. ``strategy``: ``"auto"`` (one pass when the model's attention honours
    4D masks, else sequential), ``"one_pass"`` or ``"sequential"``.
    """
    k = check_recompute_tokens(k)
    if strategy not in ("auto", "one_pass", "sequential"):
        raise ConfigError(f"strategy must be 'auto', 'one_pass' or 'sequential', got {strategy!r}.")
    # nothing precedes a block at offset 0: its cached KV is already what full attention computes
    spans = [(b.offset, min(k, len(b.token_ids)), b.token_ids) for b in layout.blocks if b.offset > 0]
    spans = [s for s in spans if s[1] > 0]
    if not spans:
        return cache
    assert cache.get_seq_length() == layout.context_len, (cache.get_seq_length(), layout.context_len)
    if strategy == "auto":
        impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
        strategy = "one_pass" if impl in MASKED_ATTENTION else "sequential"
    if strategy == "one_pass":
        return _one_pass_(model, cache, spans)
    return _sequential_(model, cache, spans)


def _one_pass_(model: torch.nn.Module, cache: DynamicCache,
               spans: Sequence[tuple[int, int, Sequence[int]]]) -> DynamicCache:
    base = base_model(model)
    first_keys = layer_tensors(cache)[0][0]  # [1, H_kv, T, D]
    device = first_keys.device
    dtype = next(model.parameters()).dtype
    t = int(first_keys.shape[2])
    positions = torch.cat([torch.arange(o, o + n, device=device) for o, n, _ in spans])  # [M], increasing
    ids = torch.tensor([[int(tok) for _, n, toks in spans for tok in toks[:n]]], dtype=torch.long, device=device)
    m = int(positions.numel())
    recomputed = torch.zeros(t, dtype=torch.bool, device=device)  # [T]
    recomputed[positions] = True
    columns = torch.arange(t, device=device)  # [T]
    see_cached = (columns[None, :] < positions[:, None]) & ~recomputed[None, :]  # [M, T] stale KV hidden
    see_fresh = torch.ones(m, m, dtype=torch.bool, device=device).tril_()  # [M, M] earlier recomputed tokens
    mask = additive_mask(torch.cat([see_cached, see_fresh], dim=1), dtype)  # [1, 1, M, T + M]
    work = cache_from(layer_tensors(cache))  # copies [1, H, T, D]
    base(input_ids=ids, position_ids=positions[None], attention_mask=mask, **cache_kwargs(base, work),
         use_cache=True)
    for (keys, values), (fresh_keys, fresh_values) in zip(layer_tensors(cache), layer_views(work, t)):
        keys.index_copy_(2, positions, fresh_keys)  # [1, H_kv, M, D] -> recomputed positions
        values.index_copy_(2, positions, fresh_values)
    del work
    return cache


def _sequential_(model: torch.nn.Module, cache: DynamicCache,
                 spans: Sequence[tuple[int, int, Sequence[int]]]) -> DynamicCache:
    base = base_model(model)
    device = cache_device(cache)
    for o, n, token_ids in spans:
        prefix = cache_from(layer_views(cache, 0, o))  # a copy of [1, H_kv, o, D] per layer
        ids = torch.tensor([list(token_ids[:n])], dtype=torch.long, device=device)  # [1, n]
        positions = torch.arange(o, o + n, device=device)[None]  # [1, n]
        base(input_ids=ids, position_ids=positions, **cache_kwargs(base, prefix), use_cache=True)
        for (keys, values), (fresh_keys, fresh_values) in zip(layer_views(cache, o, o + n),
                                                              layer_views(prefix, o, o + n)):
            keys.copy_(fresh_keys)  # [1, H_kv, n, D]
            values.copy_(fresh_values)  # [1, H_kv, n, D]
        del prefix
    return cache


def recovered_cache(model: torch.nn.Module, layout: PromptLayout, kvs: Sequence[BlockKV], rotary: RotaryInfo,
                    k: int, device: torch.device | str | None = None, strategy: str = "auto") -> DynamicCache:
    """Assemble ``kvs`` (one per block of ``layout``, read only) at their offsets, then recover the first ``k``
    tokens of every block. ``k = 0`` is exactly :func:`~block_attention.engine.assemble.assemble_cache`."""
    if len(kvs) != len(layout.blocks):
        raise ConfigError(f"recovered_cache needs one BlockKV per block: got {len(kvs)} for {len(layout.blocks)} blocks.")
    device = device if device is not None else next(model.parameters()).device
    cache = assemble_cache(kvs, [b.offset for b in layout.blocks], rotary, device)
    return recompute_block_starts_(model, cache, layout, k, strategy)
