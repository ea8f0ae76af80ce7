"""The engine: turns one request (cached blocks + a final block) into an answer, stage by stage.

Data flow: :mod:`.stages` (typed stage results) -> :mod:`.encode` (the one block encoder: each missing block
alone at positions ``0..n-1``, or behind the prompt prefix, whose span and keys :mod:`.sink` gives) ->
:mod:`.assemble` (re-rotate and concatenate; :mod:`.recovery` re-encodes each block's first tokens in context) ->
prefill of the final block (:mod:`.fused` does encode, assemble and prefill in one forward) -> :mod:`.decoding` /
:mod:`.generation` (the decode rules). :class:`BlockAttentionEngine` (:mod:`.engine`) chains them over a model, a
tokenizer and a KV store. Model internals are reached through :mod:`block_attention.hf` only; :mod:`.threads`
holds the per-model lock of the thread contract. Importing the package does no work.
"""

from __future__ import annotations

from block_attention.core.lazy import lazy_exports

_EXPORTS = {
    "BlockAttentionEngine": "engine",
    "Assembled": "stages", "BlockKVs": "stages", "Generation": "stages", "Lookup": "stages", "Prefilled": "stages",
    "PrefillOutput": "stages", "RequestPlan": "stages", "RequestStats": "stages", "TextStream": "stages",
    "WarmReport": "stages",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
