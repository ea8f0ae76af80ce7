"""Typed results of the engine's public stages, and the frozen per-request trace built from them.

A block-mode request runs ``plan -> lookup -> encode -> assemble -> prefill -> decode``; a full-mode request runs
``plan -> prefill -> decode``. Each stage returns one of the frozen values below, so a benchmark, an integration
or a server can run, time or replace any stage with public calls only. :class:`RequestStats` is the trace of one
request, assembled once from the stage results (no mutable bookkeeping travels between stages).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from transformers import DynamicCache

from block_attention.core.config import Mode
from block_attention.core.kv import BlockKV
from block_attention.core.layout import PromptLayout
from block_attention.store.keys import CacheKey
from block_attention.store.standard import HitsByTier

@dataclass(frozen=True)
class RequestPlan:
    """What a request will run: its mode, token layout (after overflow handling) and each block's cache key."""

    mode: Mode
    layout: PromptLayout
    keys: tuple[CacheKey, ...]  # one per layout block, in prompt order
    dropped: tuple[str, ...] = ()  # doc ids dropped to fit the context (overflow="drop_lowest")
    started: float = field(default_factory=time.perf_counter)  # perf_counter() when the request began
    offsets: tuple[int, ...] = ()  # rotation offset of each block at assembly (its offset, or offset - P behind a sink)
    sink_ids: tuple[int, ...] | None = None  # blocks are encoded behind these tokens (sink="prefix"), else alone
    recompute_tokens: int = 0  # recovery: recompute the first k tokens of every block after assembly


@dataclass(frozen=True)
class Lookup:
    """Which block KVs the store had (by key) and which must be encoded (key -> token ids)."""

    found: Mapping[CacheKey, BlockKV]
    missing: Mapping[CacheKey, tuple[int, ...]]
    hits_by_tier: Mapping[str, int] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass(frozen=True)
class BlockKVs:
    """Every block's KV in prompt order (cached or freshly encoded), and what encoding cost."""

    kvs: tuple[BlockKV, ...]
    encoded_blocks: int = 0
    encoded_tokens: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class Assembled:
    """The request's cache before the final block: blocks re-rotated to their offsets, in fresh storage."""

    cache: DynamicCache
    seconds: float = 0.0
    recomputed_tokens: int = 0  # context tokens recomputed by recovery
    recompute_seconds: float = 0.0


@dataclass(frozen=True)
class Prefilled:
    """Logits after the final block and the cache that continues from it (ready to decode at ``position``)."""

    logits: torch.Tensor  # [F, V] final-block rows (all_logits) or [1, V] (last token only)
    cache: DynamicCache
    position: int  # global position of the first generated token
    seconds: float = 0.0
    reused: bool = False  # an exact repeat: the final block's KV and logits came from the repeat cache


@dataclass(frozen=True)
class RequestStats(HitsByTier):
    """What one request cost and what the cache gave it. Times in seconds, measured from the plan's start."""

    mode: str
    prompt_tokens: int
    context_tokens: int
    final_tokens: int
    blocks: int
    hits_by_tier: Mapping[str, int] = field(default_factory=dict)
    misses: int = 0
    encoded_tokens: int = 0
    dropped: tuple[str, ...] = ()
    lookup_s: float = 0.0
    encode_s: float = 0.0
    assemble_s: float = 0.0
    prefill_s: float = 0.0
    ttft_s: float = 0.0
    total_s: float = 0.0
    new_tokens: int = 0
    recomputed_tokens: int = 0  # context tokens recomputed by recovery (recompute_tokens)
    recompute_s: float = 0.0
    final_reused: bool = False  # an exact repeat: the final block was not run (engine/repeats.py)

    @classmethod
    def of(cls, plan: RequestPlan, lookup: Lookup | None = None, encoded: BlockKVs | None = None,
           assembled: Assembled | None = None, prefilled: Prefilled | None = None, *, ttft_s: float = 0.0,
           total_s: float = 0.0, new_tokens: int = 0) -> "RequestStats":
        """The trace of a request from its stage results."""
        layout = plan.layout
        return cls(
            mode=plan.mode, prompt_tokens=layout.total_len, context_tokens=layout.context_len,
            final_tokens=len(layout.final_ids), blocks=len(layout.blocks),
            hits_by_tier=dict(lookup.hits_by_tier) if lookup else {},
            misses=len(lookup.missing) if lookup else 0,
            encoded_tokens=encoded.encoded_tokens if encoded else 0, dropped=plan.dropped,
            lookup_s=lookup.seconds if lookup else 0.0, encode_s=encoded.seconds if encoded else 0.0,
            assemble_s=assembled.seconds if assembled else 0.0, prefill_s=prefilled.seconds if prefilled else 0.0,
            ttft_s=ttft_s, total_s=total_s, new_tokens=new_tokens,
            recomputed_tokens=assembled.recomputed_tokens if assembled else 0,
            recompute_s=assembled.recompute_seconds if assembled else 0.0,
            final_reused=prefilled.reused if prefilled else False,
        )

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["hits_by_tier"] = dict(self.hits_by_tier)
        out["dropped"] = list(self.dropped)
        return {**out, "hits": self.hits, "memory_hits": self.memory_hits, "disk_hits": self.disk_hits,
                "remote_hits": self.remote_hits}


@dataclass(frozen=True)
class PrefillOutput:
    logits: torch.Tensor  # [F, V] final-block logits (all_logits) or [1, V] (last token only)
    cache: DynamicCache
    layout: PromptLayout
    stats: RequestStats


@dataclass(frozen=True)
class Generation:
    text: str
    token_ids: tuple[int, ...]
    finish_reason: str  # "eos" | "stop" | "length"
    stats: RequestStats


@dataclass(frozen=True)
class WarmReport:
    blocks: int
    already_cached: int
    encoded: int
    encoded_tokens: int
    kv_bytes: int


@dataclass
class TextStream:
    """Iterator over generated text deltas; ``result`` holds the :class:`Generation` once exhausted.

    ``close()`` stops generation early (e.g. when an HTTP client disconnects); ``result`` then stays ``None``.
    """

    _gen: Iterator[str]
    result: Generation | None = field(default=None)

    def __iter__(self) -> Iterator[str]:
        while True:
            try:
                yield next(self._gen)
            except StopIteration as stop:
                self.result = stop.value
                return

    def close(self) -> None:
        close = getattr(self._gen, "close", None)
        if close is not None:
            close()
