"""Per-block KV encoding at canonical positions ``0..n-1``, many blocks per forward pass.

Blocks are grouped by length into right-padded batches under a padded-token budget. With right padding and
causal attention no real token ever attends to padding, so no attention mask is needed (the fast causal path of
every attention implementation applies) and each block's KV is exactly its KV encoded alone. Padding KV is
sliced off. Only the decoder stack runs: the LM head is skipped. The same loop encodes blocks behind a shared
prefix (the attention sink of :mod:`.sink`): the prefix's KV is computed once and each batch continues from it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from block_attention.core.kv import BlockKV
from block_attention.hf.cache import cache_from, layer_tensors, new_cache, stack_layers
from block_attention.hf.compat import cache_kwargs
from block_attention.hf.unwrap import base_model


MIN_FILL = 0.75  # a block shorter than this fraction of its batch's longest starts a new batch (less padding)


def plan_batches(lengths: Sequence[int], max_batch_tokens: int) -> list[list[int]]:
    """Group block indices (longest first) into batches whose ``size * longest`` stays within the budget and
    whose blocks are each at least ``MIN_FILL`` of the batch's longest."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = lengths[current[0]] if current else lengths[i]
        if current and ((len(current) + 1) * longest > max_batch_tokens or lengths[i] < MIN_FILL * longest):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


@torch.inference_mode()
def encode_blocks(model: torch.nn.Module, token_lists: Sequence[Sequence[int]], *, pad_id: int,
                  max_batch_tokens: int = 16384, sink_ids: Sequence[int] = ()) -> list[BlockKV]:
    """KV of each token list encoded alone at positions 0..n-1, in the order given (fresh tensors, model dtype).

    With ``sink_ids`` (a shared prefix, :mod:`.sink`) each list is encoded right after them instead, at positions
    ``P..P+n-1``: the prefix is encoded once and every batch attends to it through its own cache copy; only the
    lists' own KV is returned."""
    base = base_model(model)
    device = next(model.parameters()).device
    p = len(sink_ids)
    prefix = None
    if p:
        prefix = new_cache()
        base(input_ids=torch.tensor([list(sink_ids)], device=device),
             position_ids=torch.arange(p, device=device)[None], **cache_kwargs(base, prefix), use_cache=True)
    lengths = [len(t) for t in token_lists]
    assert all(n > 0 for n in lengths), "empty block reached the encoder"
    out: list[BlockKV | None] = [None] * len(token_lists)
    for batch in plan_batches(lengths, max(1, max_batch_tokens)):
        width, b = lengths[batch[0]], len(batch)
        ids = torch.full((b, width), pad_id, dtype=torch.long)  # [B, n_max]
        for row, i in enumerate(batch):
            ids[row, : lengths[i]] = torch.tensor(list(token_lists[i]), dtype=torch.long)
        positions = torch.arange(p, p + width, dtype=torch.long).expand(b, width)  # [B, n_max]
        cache = new_cache() if prefix is None else cache_from(
            [(k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1)) for k, v in layer_tensors(prefix)])  # [B, H_kv, P, D]
        base(input_ids=ids.to(device), position_ids=positions.to(device), **cache_kwargs(base, cache), use_cache=True)
        keys, values = stack_layers(cache, p)  # [L, B, H_kv, n_max, D] each, the prefix dropped
        for row, i in enumerate(batch):
            n = lengths[i]
            out[i] = BlockKV(keys[:, row, :, :n].contiguous(), values[:, row, :, :n].contiguous())
        del cache, keys, values
    return [kv for kv in out if kv is not None]
