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

The encoding itself is the one block encoder, :func:`~block_attention.engine.encode.encode_blocks` with
``sink_ids``; this module holds the option, the sink span of a layout and the cache keys.
"""

from __future__ import annotations

from collections.abc import Sequence

from block_attention.core.config import Sink, check_sink  # noqa: F401  (the engine's sink option, defined once)
from block_attention.core.layout import PromptLayout
from block_attention.core.prompt import PREFIX_ID
from block_attention.store import CacheKey
from block_attention.store.keys import token_hash


def sink_span(layout: PromptLayout) -> tuple[int, ...] | None:
    """The sink tokens of ``layout`` (its prefix block), or None when the layout has no prefix block."""
    if layout.blocks and layout.blocks[0].offset == 0 and layout.blocks[0].doc_id.startswith(PREFIX_ID) \
            and len(layout.blocks) > 1:
        return layout.blocks[0].token_ids
    return None


def sink_cache_key(fingerprint: str, doc_id: str, token_ids: Sequence[int], sink_ids: Sequence[int]) -> CacheKey:
    return CacheKey(fingerprint, doc_id, token_hash(token_ids) + "+sink" + token_hash(sink_ids))
