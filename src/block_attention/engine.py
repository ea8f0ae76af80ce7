"""The block-attention engine: one request = cached blocks + a final block, answered by a causal LM.

Block mode: every block's KV comes from the store or is encoded alone at positions ``0..n-1`` (all missing
blocks of a request batched together), keys are re-rotated to the block's offset, the blocks are concatenated
into a fresh cache, and only the final block is prefilled, attending to everything. Full mode: the same tokens
in one ordinary prefill. Both then decode with the same loop (greedy or sampled, stop strings, streaming).

Guarantees: stored KV is never mutated by a request; a cache failure costs a recompute, never a wrong answer;
a model whose block path cannot be exact (no RoPE, ...) still serves full mode; block mode (and ``warm``) raise
:class:`UnsupportedModelError` naming why.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache

from .assemble import assemble_cache
from .blocks import Block, as_blocks, check_unique_ids
from .config import EngineConfig, GenerationConfig, Mode, check_mode
from .encode import encode_blocks
from .errors import ConfigError, ContextTooLongError, UnsupportedModelError
from .fingerprint import model_fingerprint
from .generation import TextTracker, TokenSelector
from .kv import BlockKV
from .layout import PromptLayout
from .prompt import Message, PromptBuilder, PromptConfig, recorded_prompt_config
from .rope import RotaryInfo, inspect_model
from .store import CacheKey, KVStore, StoreConfig
from .store.keys import token_hash


@dataclass(frozen=True)
class RequestStats:
    """What one request cost and what the cache gave it. Times in seconds."""

    mode: str
    prompt_tokens: int
    context_tokens: int
    final_tokens: int
    blocks: int
    memory_hits: int = 0
    disk_hits: int = 0
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

    @property
    def hits(self) -> int:
        return self.memory_hits + self.disk_hits

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict
        return {**asdict(self), "hits": self.hits}


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
    """Iterator over generated text deltas; ``result`` holds the :class:`Generation` once exhausted."""

    _gen: Iterator[str]
    result: Generation | None = field(default=None)

    def __iter__(self) -> Iterator[str]:
        while True:
            try:
                yield next(self._gen)
            except StopIteration as stop:
                self.result = stop.value
                return


class BlockAttentionEngine:
    """Serve block-attention requests with a transformers causal LM.

    ``store``: a :class:`KVStore`, a :class:`StoreConfig` to build one, or ``None`` for the default in-memory
    store; pass ``store=False`` to disable caching (blocks are still encoded separately in block mode).
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, config: EngineConfig | None = None,
                 store: KVStore | StoreConfig | None | bool = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = config or EngineConfig()
        try:
            self.rotary: RotaryInfo | None = inspect_model(model)
            self.block_refusal: UnsupportedModelError | None = None
        except UnsupportedModelError as exc:  # full mode still works; block mode raises this at request time
            self.rotary, self.block_refusal = None, exc
        self.text_config = model.config.get_text_config(decoder=True)
        self.prompt_config = self.config.prompt or recorded_prompt_config(model) or PromptConfig()
        self.builder = PromptBuilder(tokenizer, self.prompt_config)
        self.fingerprint, self.fingerprint_parts = model_fingerprint(model, tokenizer, self.rotary,
                                                                     self.prompt_config)
        if store is False:
            self.store: KVStore | None = None
        elif isinstance(store, KVStore):
            self.store = store
        else:
            self.store = KVStore(store if isinstance(store, StoreConfig) else StoreConfig())
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad if pad is not None else 0)
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        if eos is None:
            eos = tokenizer.eos_token_id
        self.eos_ids = frozenset([eos] if isinstance(eos, int) else (eos or []))

    # -- construction helpers --------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name_or_path: str, *, config: EngineConfig | None = None,
                        store: KVStore | StoreConfig | None | bool = None, dtype: Any = "auto",
                        device: str | None = None, attn_implementation: str | None = None,
                        **model_kwargs: Any) -> "BlockAttentionEngine":
        """Load a causal LM and its tokenizer (local path or hub id) and wrap them."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        kwargs = dict(model_kwargs)
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype, **kwargs)
        if device:
            model = model.to(device)
        return cls(model, tokenizer, config=config, store=store)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def max_positions(self) -> int:
        cfg = self.text_config  # ALiBi models (Bloom) declare no limit; GPT-2 and MPT name it differently
        limit = next((getattr(cfg, k) for k in ("max_position_embeddings", "n_positions", "max_seq_len")
                      if getattr(cfg, k, None)), None)
        return int(limit) if limit is not None else 2**31 - 1

    @property
    def kv_bytes_per_token(self) -> int:
        cfg = self.text_config
        kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        element = torch.finfo(next(self.model.parameters()).dtype).bits // 8
        head_dim = self.rotary.head_dim if self.rotary else getattr(cfg, "head_dim", None) or \
            cfg.hidden_size // cfg.num_attention_heads
        return 2 * cfg.num_hidden_layers * kv_heads * head_dim * element

    # -- layout ----------------------------------------------------------------------------------------------
    def layout(self, blocks: Sequence[Block | str], question: str, system: str | None = None,
               history: Sequence[Message] = ()) -> PromptLayout:
        blocks = as_blocks(blocks)
        check_unique_ids(blocks)
        return self.builder.layout(blocks, question, system, history)

    def _fit(self, blocks: list[Block], question: str, system: str | None, history: Sequence[Message],
             mode: Mode, max_new_tokens: int) -> tuple[PromptLayout, tuple[str, ...]]:
        limit, reason = self.max_positions, f"the model's context window is {self.max_positions} tokens"
        exact = self.rotary.exact_limit if self.rotary is not None else None
        if mode == "block" and exact is not None and exact < limit:
            limit, reason = exact, str(self.rotary.limit_reason)
        dropped: list[str] = []
        while True:
            layout = self.builder.layout(blocks, question, system, history)
            need = layout.total_len + max_new_tokens
            if need <= limit:
                return layout, tuple(dropped)
            if self.config.overflow == "error" or not blocks:
                raise ContextTooLongError(
                    f"The prompt needs {layout.total_len} tokens plus {max_new_tokens} new tokens ({need}), but "
                    f"{reason} ({limit}). Retrieve fewer or shorter passages, lower max_new_tokens, or set "
                    "EngineConfig(overflow='drop_lowest') to drop the lowest-ranked blocks."
                )
            victim = _lowest_ranked(blocks)
            dropped.append(blocks[victim].key)
            blocks = blocks[:victim] + blocks[victim + 1:]

    # -- block KV --------------------------------------------------------------------------------------------
    def cache_key(self, doc_id: str, token_ids: Sequence[int]) -> CacheKey:
        return CacheKey(self.fingerprint, doc_id, token_hash(token_ids))

    def _block_kvs(self, layout: PromptLayout, stats: dict[str, Any]) -> list[BlockKV]:
        """KV of each block of ``layout`` (from the store or freshly encoded, then stored)."""
        t0 = time.perf_counter()
        keys = [self.cache_key(b.doc_id, b.token_ids) for b in layout.blocks]
        found: dict[CacheKey, BlockKV] = {}
        missing: dict[CacheKey, tuple[int, ...]] = {}
        for key, span in zip(keys, layout.blocks):
            if key in found or key in missing:
                continue
            kv = None
            if self.store is not None:
                tier = self.store.contains(key)
                kv = self.store.get(key, device=self.device) if tier else None
                if kv is not None:
                    stats["memory_hits" if tier == "memory" else "disk_hits"] += 1
            if kv is None:
                missing[key] = span.token_ids
            else:
                found[key] = kv
        stats["misses"] = len(missing)
        t1 = time.perf_counter()
        stats["lookup_s"] = t1 - t0
        if missing:
            encoded = encode_blocks(self.model, list(missing.values()), pad_id=self.pad_id,
                                    max_batch_tokens=self.config.max_batch_tokens)
            for key, kv in zip(missing, encoded):
                found[key] = kv
                if self.store is not None:
                    self.store.put(key, kv)
            stats["encoded_tokens"] = sum(len(ids) for ids in missing.values())
        stats["encode_s"] = time.perf_counter() - t1
        return [found[k] for k in keys]

    def warm(self, blocks: Sequence[Block | str], system: str | None = None, show_progress: bool = False,
             batch_blocks: int = 64) -> WarmReport:
        """Precompute and store the KV of ``blocks`` (and of the prompt prefix) so the first query is warm."""
        if self.store is None:
            raise ConfigError("warm() needs a KV store; construct the engine with store=None or a StoreConfig.")
        if self.block_refusal is not None:
            raise UnsupportedModelError(str(self.block_refusal))
        blocks = as_blocks(blocks)
        check_unique_ids(blocks)
        spans = {}
        for start in range(0, max(len(blocks), 1), batch_blocks):
            layout = self.builder.layout(blocks[start:start + batch_blocks], "?", system)
            spans.update({self.cache_key(b.doc_id, b.token_ids): b.token_ids for b in layout.blocks})
        todo = {k: ids for k, ids in spans.items() if not self.store.contains(k)}
        items = list(todo.items())
        chunks = range(0, len(items), batch_blocks)
        if show_progress:
            from tqdm.auto import tqdm
            chunks = tqdm(chunks, desc="encoding blocks", unit="batch")
        nbytes = 0
        for start in chunks:
            part = items[start:start + batch_blocks]
            encoded = encode_blocks(self.model, [ids for _, ids in part], pad_id=self.pad_id,
                                    max_batch_tokens=self.config.max_batch_tokens)
            for (key, _), kv in zip(part, encoded):
                self.store.put(key, kv)
                nbytes += kv.nbytes
        return WarmReport(len(spans), len(spans) - len(todo), len(todo), sum(len(i) for i in todo.values()), nbytes)

    def estimate_kv_bytes(self, n_tokens: int) -> int:
        return n_tokens * self.kv_bytes_per_token

    # -- prefill ---------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def _prefill(self, blocks: Sequence[Block | str], question: str, system: str | None,
                 history: Sequence[Message], mode: Mode | None, max_new_tokens: int,
                 all_logits: bool) -> tuple[torch.Tensor, DynamicCache, PromptLayout, dict[str, Any]]:
        start = time.perf_counter()
        mode = check_mode(mode or self.config.mode)
        if mode == "block" and self.block_refusal is not None:
            raise UnsupportedModelError(str(self.block_refusal))
        blocks = as_blocks(blocks)
        check_unique_ids(blocks)
        layout, dropped = self._fit(blocks, question, system, history, mode, max_new_tokens)
        stats: dict[str, Any] = dict(mode=mode, prompt_tokens=layout.total_len, context_tokens=layout.context_len,
                                     final_tokens=len(layout.final_ids), blocks=len(layout.blocks),
                                     memory_hits=0, disk_hits=0, misses=0, dropped=dropped, _start=start)
        device = self.device
        keep = 0 if all_logits else 1
        if mode == "block" and layout.blocks:
            kvs = self._block_kvs(layout, stats)
            t0 = time.perf_counter()
            assert self.rotary is not None
            cache = assemble_cache(kvs, [b.offset for b in layout.blocks], self.rotary, device)
            stats["assemble_s"] = time.perf_counter() - t0
            ids, first = list(layout.final_ids), layout.context_len
        else:
            cache, ids, first = DynamicCache(), layout.input_ids(), 0
        t0 = time.perf_counter()
        input_ids = torch.tensor([ids], dtype=torch.long, device=device)  # [1, q]
        positions = torch.arange(first, first + len(ids), device=device)[None]  # [1, q]
        out = self.model(input_ids=input_ids, position_ids=positions, past_key_values=cache, use_cache=True,
                         logits_to_keep=keep)
        logits = out.logits[0]  # [q or 1, V]
        if all_logits and mode == "full":
            logits = logits[layout.context_len:]  # [F, V] final-block rows only
        stats["prefill_s"] = time.perf_counter() - t0
        return logits, out.past_key_values, layout, stats

    def prefill(self, blocks: Sequence[Block | str], question: str, *, system: str | None = None,
                history: Sequence[Message] = (), mode: Mode | None = None,
                all_logits: bool = False) -> PrefillOutput:
        """Build the cache and run the final block; returns its logits (for scoring, oracles, custom decoding)."""
        logits, cache, layout, stats = self._prefill(blocks, question, system, history, mode, 0, all_logits)
        stats["ttft_s"] = stats["total_s"] = time.perf_counter() - stats.pop("_start")
        return PrefillOutput(logits, cache, layout, RequestStats(**stats))

    # -- generation ------------------------------------------------------------------------------------------
    def _run(self, blocks: Sequence[Block | str], question: str, system: str | None,
             history: Sequence[Message], mode: Mode | None,
             generation: GenerationConfig) -> Iterator[str]:
        logits, cache, layout, stats = self._prefill(blocks, question, system, history, mode,
                                                     generation.max_new_tokens, False)
        start = stats.pop("_start")
        select = TokenSelector(generation, self.device)
        tracker = TextTracker(self.tokenizer, generation.stop)
        position = layout.total_len
        finish = "length"
        for step in range(generation.max_new_tokens):
            token = select(logits[-1])
            if step == 0:
                stats["ttft_s"] = time.perf_counter() - start
            if generation.stop_on_eos and token in self.eos_ids:
                finish = "eos"
                break
            tracker.push(token)
            if tracker.stopped:
                finish = "stop"
                break
            piece = tracker.delta()
            if piece:
                yield piece
            if step + 1 == generation.max_new_tokens:
                break
            with torch.inference_mode():
                out = self.model(input_ids=torch.tensor([[token]], device=self.device),
                                 position_ids=torch.tensor([[position]], device=self.device),
                                 past_key_values=cache, use_cache=True, logits_to_keep=1)
            cache, logits, position = out.past_key_values, out.logits[0], position + 1
        rest = tracker.delta(final=True)
        if rest:
            yield rest
        stats["new_tokens"] = len(tracker.token_ids)
        stats["total_s"] = time.perf_counter() - start
        return Generation(tracker.text, tuple(tracker.token_ids), finish, RequestStats(**stats))

    def generate(self, blocks: Sequence[Block | str], question: str, *, system: str | None = None,
                 history: Sequence[Message] = (), mode: Mode | None = None,
                 generation: GenerationConfig | None = None, **overrides: Any) -> Generation:
        """Answer ``question`` over ``blocks``. ``overrides`` are GenerationConfig fields (e.g. max_new_tokens)."""
        stream = self.stream(blocks, question, system=system, history=history, mode=mode,
                             generation=generation, **overrides)
        for _ in stream:
            pass
        assert stream.result is not None
        return stream.result

    def stream(self, blocks: Sequence[Block | str], question: str, *, system: str | None = None,
               history: Sequence[Message] = (), mode: Mode | None = None,
               generation: GenerationConfig | None = None, **overrides: Any) -> TextStream:
        """Like :meth:`generate` but yields text pieces as they are decoded; ``.result`` is set at the end."""
        generation = _with_overrides(generation or GenerationConfig(), overrides)
        return TextStream(self._run(blocks, question, system, history, mode, generation))


def _with_overrides(generation: GenerationConfig, overrides: dict[str, Any]) -> GenerationConfig:
    if not overrides:
        return generation
    from dataclasses import fields, replace
    known = {f.name for f in fields(GenerationConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"Unknown generation options {unknown}; valid ones are {sorted(known)}.")
    return replace(generation, **overrides)


def _lowest_ranked(blocks: Sequence[Block]) -> int:
    """Index of the block to drop first: the lowest score, or the last block when scores are missing."""
    if all(b.score is not None for b in blocks):
        return min(range(len(blocks)), key=lambda i: (blocks[i].score, -i))
    return len(blocks) - 1
