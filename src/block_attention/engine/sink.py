"""Shared attention-sink prefix (APE-style): every cached block is encoded *after* the prompt's prefix block.

A model trained with full attention puts a large share of attention on the first tokens of its context (the
attention sink, usually BOS). Encoded alone, every passage starts its own context and its first tokens play that
role. With ``sink="prefix"`` each passage is instead encoded behind the request's prefix block (BOS, block marker,
instruction, chat header: the same tokens that open the prompt), at positions ``P..P+n-1`` where ``P`` is the
prefix length; only the passage's own KV is kept and cached. At assembly its keys are re-rotated by ``o - P`` to
offset ``o``. The prefix KV appears once, at the start of the prompt, exactly where every passage saw it.

Contract:

* Keys: the cached KV of a passage depends on the sink tokens, so its :class:`~block_attention.store.CacheKey`
  content hash covers both (``<passage token hash>+sink<sink token hash>``): entries with and without a sink, or
  behind different prefixes, never collide.
* The first passage (at offset ``P``) gets exactly its full-attention KV; later passages see the prefix at a
  shorter distance than in the real prompt (the approximation APE makes). Requests whose layout has no prefix block
  are served as plain block mode.
* Stored tensors are never written; assembly copies them (as for plain blocks).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from block_attention.core.errors import ConfigError
from block_attention.core.kv import BlockKV
from block_attention.core.layout import PromptLayout
from block_attention.hf.cache import cache_from, layer_tensors, new_cache, stack_layers
from block_attention.hf.compat import cache_kwargs
from block_attention.hf.unwrap import base_model
from block_attention.store import CacheKey
from block_attention.store.keys import token_hash
from .encode import plan_batches

Sink = Literal["none", "prefix"]
SINKS = ("none", "prefix")
PREFIX_ID = "prefix:"  # doc ids of prefix blocks (see prompt.PromptBuilder.layout)


def check_sink(sink: str) -> Sink:
    if sink not in SINKS:
        raise ConfigError(f"sink must be 'none' or 'prefix' (encode every block behind the prompt prefix), got {sink!r}.")
    return sink  # type: ignore[return-value]


def sink_span(layout: PromptLayout) -> tuple[int, ...] | None:
    """The sink tokens of ``layout`` (its prefix block), or None when the layout has no prefix block."""
    if layout.blocks and layout.blocks[0].offset == 0 and layout.blocks[0].doc_id.startswith(PREFIX_ID) \
            and len(layout.blocks) > 1:
        return layout.blocks[0].token_ids
    return None


def sink_cache_key(fingerprint: str, doc_id: str, token_ids: Sequence[int], sink_ids: Sequence[int]) -> CacheKey:
    return CacheKey(fingerprint, doc_id, token_hash(token_ids) + "+sink" + token_hash(sink_ids))


@torch.inference_mode()
def encode_behind_sink(model: torch.nn.Module, sink_ids: Sequence[int], token_lists: Sequence[Sequence[int]], *,
                       pad_id: int, max_batch_tokens: int = 16384) -> list[BlockKV]:
    """KV of each token list encoded right after ``sink_ids`` (positions ``P..P+n-1``), sink KV dropped.

    The sink is encoded once; each right-padded batch of blocks attends to it through a per-batch cache copy
    (causal attention never reaches the padding, so no mask is needed)."""
    base = base_model(model)
    device = next(model.parameters()).device
    p = len(sink_ids)
    sink_cache = new_cache()
    base(input_ids=torch.tensor([list(sink_ids)], device=device), position_ids=torch.arange(p, device=device)[None],
         **cache_kwargs(base, sink_cache), use_cache=True)
    lengths = [len(t) for t in token_lists]
    assert all(n > 0 for n in lengths), "empty block reached the encoder"
    out: list[BlockKV | None] = [None] * len(token_lists)
    for batch in plan_batches(lengths, max(1, max_batch_tokens)):
        width, b = lengths[batch[0]], len(batch)
        ids = torch.full((b, width), pad_id, dtype=torch.long)  # [B, n_max]
        for row, i in enumerate(batch):
            ids[row, : lengths[i]] = torch.tensor(list(token_lists[i]), dtype=torch.long)
        positions = torch.arange(p, p + width, dtype=torch.long).expand(b, width)  # [B, n_max]
        cache = cache_from([(k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1))  # [B, H_kv, P, D] views
                            for k, v in layer_tensors(sink_cache)])
        base(input_ids=ids.to(device), position_ids=positions.to(device), **cache_kwargs(base, cache),
             use_cache=True)
        keys, values = stack_layers(cache, p)  # [L, B, H_kv, n_max, D] each
        for row, i in enumerate(batch):
            n = lengths[i]
            out[i] = BlockKV(keys[:, row, :, :n].contiguous(), values[:, row, :, :n].contiguous())
        del cache, keys, values
    return [kv for kv in out if kv is not None]
