"""The block-attention engine: one request = cached blocks + a final block, answered by a causal LM.

The work is split into public stages, each a method with a typed result (:mod:`block_attention.engine.stages`):

* :meth:`~BlockAttentionEngine.plan` renders and tokenizes the request and fits it to the context window;
* :meth:`~BlockAttentionEngine.lookup` asks the KV store for every block (one call per block; it says which tier
  hit);
* :meth:`~BlockAttentionEngine.encode` encodes the missing blocks alone at positions ``0..n-1`` (batched) and
  stores them;
* :meth:`~BlockAttentionEngine.assemble` re-rotates every block's keys to its offset and concatenates them into a
  fresh cache;
* :meth:`~BlockAttentionEngine.prefill_final` runs the final block over that cache (block mode; one SDPA call
  per layer, :meth:`_sparse_final`) or every token (full mode); :meth:`~BlockAttentionEngine.run_prefill` skips it
  for an exact repeat of a layout, reusing the final block's KV and logits (:mod:`block_attention.engine.repeats`);
* :meth:`~BlockAttentionEngine.decode` generates (greedy or sampled, stop strings, streaming; the rules live in
  :class:`~block_attention.engine.decoding.DecodeState`, shared with the batch scheduler of
  :mod:`block_attention.serving.batching`).

:meth:`prefill`, :meth:`generate` and :meth:`stream` chain them. Guarantees: stored KV is never mutated by a
request; a cache failure costs a recompute, never a wrong answer; a model whose block path cannot be exact (no
RoPE, ...) still serves full mode, while block mode (and ``warm``) raise :class:`UnsupportedModelError` naming why.

Thread contract: an engine may be called from several threads at once (the framework integrations and the server
do). Every forward pass on the model (encoding, recovery, prefill, fused prefill, decode steps) holds the model's
one re-entrant lock (:func:`~block_attention.engine.threads.model_lock`, shared by every engine and scheduler on the
same model object), so the fused prefill's temporary change of ``model.config._attn_implementation`` is never seen
by another forward and is always restored. Planning, store lookups and tokenization run concurrently. The fused
path is switched off for a model only for a structural reason (its attention cannot take the fused mask), recorded
per model (:func:`~block_attention.engine.fused.fused_refusal`); any other failure of a fused request falls back to
the separate path for that request only. The KV store is thread-safe on its own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from block_attention.core.blocks import Block, as_blocks, check_unique_ids
from block_attention.core.config import (EngineConfig, GenerationConfig, Mode, Sink, check_mode, check_recompute_tokens,
                                         check_sink)
from block_attention.core.errors import ConfigError, ContextTooLongError, UnsupportedModelError
from block_attention.core.kv import BlockKV, KVGeometry
from block_attention.core.layout import PromptLayout
from block_attention.core.prompt import Message, PromptBuilder, PromptConfig, pad_token_id, recorded_prompt_config
from block_attention.core.quality import is_block_finetuned, model_name, quality_warning
from block_attention.hf.cache import (DynamicCache, cache_state, extend_cache, layer_lengths, new_cache,
                                      restore_cache, stack_layers)
from block_attention.hf.compat import cache_kwargs, output_cache
from block_attention.hf.fingerprint import WeightsWatch, model_fingerprint
from block_attention.hf.loading import load_pretrained
from block_attention.hf.rope import RotaryInfo, inspect_model
from block_attention.store import CacheKey, KVStore, StoreConfig
from block_attention.store.keys import token_hash
from .assemble import assemble_cache, move_keys
from .decoding import DecodeState, decode_step
from .encode import encode_blocks
from .fused import FusedUnsupported, fused_attention, fused_refusal, refuse_fused, segments_for
from .recovery import recompute_block_starts_, recomputed_token_count
from .repeats import FinalBlock, RepeatCache
from .sink import sink_cache_key, sink_span
from .stages import (Assembled, BlockKVs, Generation, Lookup, Prefilled, PrefillOutput, RequestPlan, RequestStats,
                     TextStream, WarmReport)
from .threads import model_lock

logger = logging.getLogger("block_attention")

__all__ = ["BlockAttentionEngine", "Generation", "PrefillOutput", "RequestStats", "TextStream", "WarmReport"]


def open_store(store: KVStore | StoreConfig | None | bool) -> KVStore | None:
    """The engine's KV store from its ``store`` argument: a store as given, a config to build one, ``None`` for
    the default in-memory store, ``False`` for none."""
    if store is False:
        return None
    if isinstance(store, KVStore):
        return store
    if store is None or isinstance(store, StoreConfig):
        return KVStore(store or StoreConfig())
    raise ConfigError(f"store must be a KVStore, a StoreConfig, None or False, got {type(store).__name__}; pass "
                      "StoreConfig(...) to build one.")


class BlockAttentionEngine:
    """Serve block-attention requests with a transformers causal LM.

    ``store``: a :class:`KVStore`, a :class:`StoreConfig` to build one, or ``None`` for the default in-memory
    store; pass ``store=False`` to disable caching (blocks are still encoded separately in block mode). The engine
    owns a store it built and closes it in :meth:`close` (also as a context manager).
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, config: EngineConfig | None = None,
                 store: KVStore | StoreConfig | None | bool = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = config or EngineConfig()
        try:
            with model_lock(model):  # the probe runs forwards
                self.rotary: RotaryInfo | None = inspect_model(model)
            self.block_refusal: UnsupportedModelError | None = None
        except UnsupportedModelError as exc:  # full mode still works; block mode raises this at request time
            self.rotary, self.block_refusal = None, exc
        self.text_config = model.config.get_text_config(decoder=True)
        self.prompt_config = self.config.prompt or recorded_prompt_config(model) or PromptConfig()
        self.builder = PromptBuilder(tokenizer, self.prompt_config)
        self.fingerprint, self.fingerprint_parts = model_fingerprint(model, tokenizer, self.rotary,
                                                                     self.prompt_config)
        self._weights_watch = WeightsWatch(model)
        self._owns_store = not isinstance(store, KVStore)
        self.store: KVStore | None = open_store(store)
        self.pad_id = pad_token_id(tokenizer)
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        if eos is None:
            eos = tokenizer.eos_token_id
        self.eos_ids = frozenset([eos] if isinstance(eos, int) else (eos or []))
        self._quality_warned = False
        self.repeats = RepeatCache(self.config.repeat_cache_bytes)  # exact repeats skip the final block
        self.lock = model_lock(model)  # held around every forward pass on the model (thread contract above)

    @property
    def block_finetuned(self) -> bool:
        """Whether the model was block-fine-tuned (recorded prompt config or a known checkpoint)."""
        return is_block_finetuned(self.model)

    @classmethod
    def from_pretrained(cls, name_or_path: str, *, config: EngineConfig | None = None,
                        store: KVStore | StoreConfig | None | bool = None, dtype: Any = "auto",
                        device: str | None = None, attn_implementation: str | None = None,
                        **model_kwargs: Any) -> "BlockAttentionEngine":
        """Load a causal LM and its tokenizer (local path or hub id) and wrap them (via hf.loading.load_pretrained).

        ``model_kwargs`` are extra keyword arguments of ``AutoModelForCausalLM.from_pretrained``."""
        kwargs = dict(model_kwargs)
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        model, tokenizer = load_pretrained(name_or_path, dtype=dtype, device=device, model_kwargs=kwargs)
        return cls(model, tokenizer, config=config, store=store)

    # -- lifecycle -------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Flush and close the KV store if the engine built it (a store passed in is the caller's to close)."""
        if self.store is not None and self._owns_store:
            self.store.close()

    def __enter__(self) -> "BlockAttentionEngine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- model facts -----------------------------------------------------------------------------------------
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
        geometry = self.kv_geometry
        element = torch.finfo(geometry.dtype).bits // 8
        return 2 * geometry.layers * geometry.kv_heads * geometry.head_dim * element

    @property
    def kv_geometry(self) -> KVGeometry:
        """Layers, KV heads, head_dim and dtype of every block KV this model computes."""
        cfg = self.text_config
        kv_heads = (self.rotary.kv_heads if self.rotary else 0) or getattr(cfg, "num_key_value_heads", None) \
            or cfg.num_attention_heads  # measured first: GPT-NeoX ignores a configured num_key_value_heads
        head_dim = self.rotary.head_dim if self.rotary else getattr(cfg, "head_dim", None) or \
            cfg.hidden_size // cfg.num_attention_heads
        return KVGeometry(int(cfg.num_hidden_layers), int(kv_heads), int(head_dim),
                          next(self.model.parameters()).dtype)

    def estimate_kv_bytes(self, n_tokens: int) -> int:
        return n_tokens * self.kv_bytes_per_token

    def refresh_fingerprint(self, force: bool = False) -> bool:
        """Recompute the fingerprint if the weights or adapters changed since the last check (or when ``force``);
        return whether it changed. Runs before every request (a cheap check: see :class:`WeightsWatch`)."""
        if not (self._weights_watch.changed() or force):
            return False
        old = self.fingerprint
        self.fingerprint, self.fingerprint_parts = model_fingerprint(self.model, self.tokenizer, self.rotary,
                                                                     self.prompt_config)
        if self.fingerprint != old:
            logger.info("Model weights or adapters changed: fingerprint %s -> %s (cached KV of the old weights is "
                        "no longer used).", old, self.fingerprint)
        return self.fingerprint != old

    def cache_key(self, doc_id: str, token_ids: Sequence[int]) -> CacheKey:
        return CacheKey(self.fingerprint, doc_id, token_hash(token_ids))

    # -- stage 1: plan ---------------------------------------------------------------------------------------
    def layout(self, blocks: Sequence[Block | str], question: str, system: str | None = None,
               history: Sequence[Message] = ()) -> PromptLayout:
        """The token layout of a request as given (no overflow handling)."""
        blocks = as_blocks(blocks)
        check_unique_ids(blocks)
        return self.builder.layout(blocks, question, system, history)

    def plan(self, blocks: Sequence[Block | str], question: str, *, system: str | None = None,
             history: Sequence[Message] = (), mode: Mode | None = None, max_new_tokens: int = 0,
             recompute_tokens: int | None = None, sink: Sink | None = None) -> RequestPlan:
        """Render and tokenize the request, fit it to the context window (dropping blocks when configured).

        ``recompute_tokens`` and ``sink`` override the engine's recovery options for this request (block mode)."""
        started = time.perf_counter()
        self.refresh_fingerprint()  # weights edited in place or an adapter switched since the last request
        mode = check_mode(mode or self.config.mode)
        if mode == "block" and self.block_refusal is not None:
            raise UnsupportedModelError(str(self.block_refusal))
        k = check_recompute_tokens(self.config.recompute_tokens if recompute_tokens is None else recompute_tokens)
        sink = check_sink(self.config.sink if sink is None else sink)
        blocks = as_blocks(blocks)
        check_unique_ids(blocks)
        limit, reason = self.max_positions, f"the model's context window is {self.max_positions} tokens"
        if mode == "block" and self.rotary is not None and self.rotary.exact_limit is not None \
                and self.rotary.exact_limit < limit:
            limit, reason = self.rotary.exact_limit, str(self.rotary.limit_reason)
        dropped: list[str] = []
        while True:
            layout = self.builder.layout(blocks, question, system, history)
            need = layout.total_len + max_new_tokens
            if need <= limit:
                break
            if self.config.overflow == "error" or not blocks:
                raise ContextTooLongError(
                    f"The prompt needs {layout.total_len} tokens plus {max_new_tokens} new tokens ({need}), but "
                    f"{reason} ({limit}). Retrieve fewer or shorter passages, lower max_new_tokens, or set "
                    "EngineConfig(overflow='drop_lowest') to drop the lowest-ranked blocks."
                )
            victim = _lowest_ranked(blocks)
            dropped.append(blocks[victim].key)
            blocks = blocks[:victim] + blocks[victim + 1:]
        sink_ids = sink_span(layout) if mode == "block" and sink == "prefix" else None
        keys = [self.cache_key(b.doc_id, b.token_ids) for b in layout.blocks]
        offsets = [b.offset for b in layout.blocks]
        if sink_ids is not None:  # every block after the prefix is encoded behind it: own keys, shifted offsets
            keys[1:] = [sink_cache_key(self.fingerprint, b.doc_id, b.token_ids, sink_ids) for b in layout.blocks[1:]]
            offsets[1:] = [b.offset - len(sink_ids) for b in layout.blocks[1:]]
        return RequestPlan(mode, layout, tuple(keys), tuple(dropped), started, tuple(offsets), sink_ids,
                           k if mode == "block" else 0)

    # -- stage 2: lookup -------------------------------------------------------------------------------------
    def lookup(self, plan: RequestPlan) -> Lookup:
        """Ask the store for each distinct block once; what it lacks is listed as missing."""
        t0 = time.perf_counter()
        found: dict[CacheKey, BlockKV] = {}
        missing: dict[CacheKey, tuple[int, ...]] = {}
        hits: dict[str, int] = {}
        geometry = self.kv_geometry  # every loaded block must fit it (a forged entry is dropped and recomputed)
        for key, span in zip(plan.keys, plan.layout.blocks):
            if key in found or key in missing:
                continue
            expect = (geometry, len(span.token_ids))
            hit = self.store.lookup(key, device=self.device, expect=expect) if self.store is not None else None
            if hit is None:
                missing[key] = span.token_ids
            else:
                found[key] = hit.kv
                hits[hit.tier] = hits.get(hit.tier, 0) + 1
        return Lookup(found, missing, hits, time.perf_counter() - t0)

    # -- stage 3: encode -------------------------------------------------------------------------------------
    def encode(self, plan: RequestPlan, lookup: Lookup, *, store: bool = True) -> BlockKVs:
        """Encode the missing blocks alone (batched), store them (unless ``store=False``), return every KV."""
        t0 = time.perf_counter()
        found = dict(lookup.found)
        behind = {k: ids for k, ids in lookup.missing.items() if plan.sink_ids is not None and k != plan.keys[0]}
        alone = {k: ids for k, ids in lookup.missing.items() if k not in behind}
        encoded: list[tuple[CacheKey, BlockKV]] = []
        with self.lock:
            if alone:
                encoded += zip(alone, encode_blocks(self.model, list(alone.values()), pad_id=self.pad_id,
                                                    max_batch_tokens=self.config.max_batch_tokens))
            if behind:
                assert plan.sink_ids is not None
                encoded += zip(behind, encode_blocks(self.model, list(behind.values()), pad_id=self.pad_id,
                                                     max_batch_tokens=self.config.max_batch_tokens,
                                                     sink_ids=plan.sink_ids))
        for key, kv in encoded:
            found[key] = kv
            if store and self.store is not None:
                self.store.put(key, kv)
        tokens = sum(len(ids) for ids in lookup.missing.values())
        return BlockKVs(tuple(found[k] for k in plan.keys), len(lookup.missing), tokens, time.perf_counter() - t0)

    # -- stage 4: assemble -----------------------------------------------------------------------------------
    def assemble(self, plan: RequestPlan, blocks: BlockKVs) -> Assembled:
        """A fresh cache holding every block re-rotated to its offset (the inputs are never written); with
        ``plan.recompute_tokens`` the first tokens of every block are then recomputed (:mod:`.recovery`)."""
        t0 = time.perf_counter()
        assert self.rotary is not None  # block mode was refused at plan() otherwise
        cache = assemble_cache(blocks.kvs, list(plan.offsets), self.rotary, self.device)
        t1 = time.perf_counter()
        if not plan.recompute_tokens:
            return Assembled(cache, t1 - t0)
        with torch.inference_mode(), self.lock:
            cache = recompute_block_starts_(self.model, cache, plan.layout, plan.recompute_tokens)
        return Assembled(cache, t1 - t0, recomputed_token_count(plan.layout, plan.recompute_tokens),
                         time.perf_counter() - t1)

    # -- stage 5: prefill ------------------------------------------------------------------------------------
    @torch.inference_mode()
    def prefill_final(self, plan: RequestPlan, assembled: Assembled | None = None, *,
                      all_logits: bool = False) -> Prefilled:
        """Run the final block over ``assembled`` (block mode), or every token over an empty cache (full mode,
        or a request without blocks). ``all_logits`` keeps one row per final-block token."""
        t0 = time.perf_counter()
        layout = plan.layout
        block = plan.mode == "block" and bool(layout.blocks)
        if block:
            if assembled is None:
                raise ConfigError("prefill_final needs the assembled cache of a block-mode request; call "
                                  "assemble() first, or plan the request with mode='full'.")
            cache, ids, first = assembled.cache, list(layout.final_ids), layout.context_len
        else:
            cache, ids, first = new_cache(growing=True), layout.input_ids(), 0
        device = self.device
        input_ids = torch.tensor([ids], dtype=torch.long, device=device)  # [1, q]
        positions = torch.arange(first, first + len(ids), device=device)[None]  # [1, q]
        kwargs = dict(input_ids=input_ids, position_ids=positions, **cache_kwargs(self.model, cache), use_cache=True,
                      logits_to_keep=0 if all_logits else 1)
        with self.lock:
            out = self._sparse_final(plan, cache, first, len(ids), kwargs) if block else None
            if out is None:
                out = self.model(**kwargs)
        logits = out.logits[0]  # [q or 1, V]
        if all_logits and first == 0:
            logits = logits[layout.context_len:]  # [F, V] final-block rows only
        return Prefilled(logits, output_cache(out), layout.total_len, time.perf_counter() - t0)

    def _sparse_final(self, plan: RequestPlan, cache: DynamicCache, past: int, final: int,
                      kwargs: dict[str, Any]) -> Any:
        """The final block's forward with :func:`~block_attention.engine.fused.block_sparse_attention` (one SDPA
        call per layer, key/value heads not expanded), or None when the model's own attention must run it; a forward
        refused part-way leaves ``cache`` as it was. The caller holds the model lock."""
        if self.config.final_attention != "sparse" or fused_refusal(self.model) is not None \
                or getattr(self.model.config, "_attn_implementation", None) != "sdpa":
            return None
        if self._window_cuts(plan):
            return None  # the model's own (windowed) attention runs it
        state = cache_state(cache)
        try:
            with fused_attention(self.model, segments_for(past, [], final)):
                return self.model(**kwargs)
        except FusedUnsupported as exc:
            restore_cache(cache, state)
            if exc.structural:
                refuse_fused(self.model, str(exc))
            return None

    @torch.inference_mode()
    def prefill_fused(self, plan: RequestPlan, lookup: Lookup, *, all_logits: bool = False
                      ) -> tuple[Prefilled, Lookup, BlockKVs, Assembled]:
        """Encode, assemble and prefill in one forward (:mod:`block_attention.engine.fused`): the cached blocks are
        assembled at their offsets, then the missing blocks and the final block run together at their global
        positions with block-sparse attention; each missing block's KV is cut out, rotated back to ``0..n-1``
        and stored. Raises :class:`~block_attention.engine.fused.FusedUnsupported` (nothing stored) when the model's
        attention needs the separate path."""
        t0 = time.perf_counter()
        layout, device = plan.layout, self.device
        spans = list(zip(plan.keys, layout.blocks))
        cached = [(lookup.found[k], s.offset) for k, s in spans if k in lookup.found]
        fresh = [(k, s) for k, s in spans if k not in lookup.found]  # every occurrence, in prompt order
        assert self.rotary is not None  # block mode was refused at plan() otherwise
        cache = assemble_cache([kv for kv, _ in cached], [o for _, o in cached], self.rotary, device) if cached \
            else new_cache()
        past = sum(kv.n_tokens for kv, _ in cached)
        t1 = time.perf_counter()
        ids = [t for _, s in fresh for t in s.token_ids] + list(layout.final_ids)
        positions = torch.cat([torch.arange(s.offset, s.end) for _, s in fresh]
                              + [torch.arange(layout.context_len, layout.total_len)])  # [q] global positions
        final = len(layout.final_ids)
        segments = segments_for(past, [len(s.token_ids) for _, s in fresh], final)
        with self.lock, fused_attention(self.model, segments):
            out = self.model(input_ids=torch.tensor([ids], dtype=torch.long, device=device),
                             position_ids=positions.to(device)[None], **cache_kwargs(self.model, cache),
                             use_cache=True, logits_to_keep=final if all_logits else 1)
        logits, cache = out.logits[0], output_cache(out)  # [F or 1, V]
        t2 = time.perf_counter()
        stored: dict[CacheKey, BlockKV] = {}
        start = past
        for key, span in fresh:
            n = len(span.token_ids)
            if key not in stored:
                stored[key] = self._cut_block(cache, start, n, span.offset)
                if self.store is not None:
                    self.store.put(key, stored[key])
            start += n
        encoded = BlockKVs((), len(stored), sum(kv.n_tokens for kv in stored.values()), time.perf_counter() - t2)
        prefilled = Prefilled(logits, cache, layout.total_len, t2 - t1)
        return prefilled, lookup, encoded, Assembled(cache, t1 - t0)

    def _cut_block(self, cache: DynamicCache, start: int, n: int, offset: int) -> BlockKV:
        """Fresh copy of cache tokens ``start..start+n`` with keys rotated back from ``offset`` to ``0..n-1``."""
        keys, values = stack_layers(cache, start, start + n)  # [L, 1, H_kv, n, D] copies
        keys, values = keys[:, 0], values[:, 0]  # [L, H_kv, n, D]
        assert self.rotary is not None
        return BlockKV(move_keys(keys, keys, -offset, self.rotary), values)

    def run_prefill(self, plan: RequestPlan, *, all_logits: bool = False
                    ) -> tuple[Prefilled, Lookup | None, BlockKVs | None, Assembled | None]:
        """Every stage up to the first token for ``plan``: lookup, encode, assemble (block mode), prefill.

        A block-mode request seen before (same blocks, offsets, final block and recovery options; every block still
        in the store) reuses the final block's KV and logits instead of running it (:mod:`.repeats`); with
        ``all_logits`` the final block always runs."""
        if not (plan.mode == "block" and plan.layout.blocks):
            return self.prefill_final(plan, all_logits=all_logits), None, None, None
        self._warn_quality_once(plan)
        lookup = self.lookup(plan)
        repeat = self._repeat_key(plan) if not all_logits and self.repeats.max_bytes else None
        if repeat is not None and not lookup.missing:
            kept = self.repeats.get(repeat)
            if kept is not None:
                blocks = self.encode(plan, lookup)  # nothing is missing: gathers the found KV in prompt order
                assembled = self.assemble(plan, blocks)
                t0 = time.perf_counter()
                extend_cache(assembled.cache, kept.keys, kept.values)
                prefilled = Prefilled(kept.logits.clone(), assembled.cache, plan.layout.total_len,
                                      time.perf_counter() - t0, reused=True)  # a copy: the caller may write it
                return prefilled, lookup, blocks, assembled
        result = self._prefill_blocks(plan, lookup, all_logits)
        if repeat is not None:
            self._keep_final(repeat, plan, result[0])
        return result

    def _window_cuts(self, plan: RequestPlan) -> bool:
        """Whether a sliding window of the model is shorter than ``plan``'s prompt: block-sparse attention (fused
        cold prefill, sparse final attention) would refuse it part-way through the forward, so it is not tried."""
        assert self.rotary is not None  # block mode was refused at plan() otherwise
        return any(info.window is not None and info.window < plan.layout.total_len for info in self.rotary.layers)

    def _prefill_blocks(self, plan: RequestPlan, lookup: Lookup, all_logits: bool
                        ) -> tuple[Prefilled, Lookup, BlockKVs, Assembled]:
        if lookup.missing and self.config.cold_prefill == "fused" and fused_refusal(self.model) is None \
                and plan.sink_ids is None and not plan.recompute_tokens and not self._window_cuts(plan):
            try:
                return self.prefill_fused(plan, lookup, all_logits=all_logits)
            except FusedUnsupported as exc:
                if exc.structural:  # the model's attention cannot take the fused mask: never again on it
                    refuse_fused(self.model, str(exc))
                    logger.info("Fused cold prefill does not fit this model (%s); using the separate path.", exc)
                else:
                    logger.info("Fused cold prefill does not fit this request (%s); using the separate path "
                                "for it.", exc)
            except Exception:  # noqa: BLE001  (this request only; the separate path raises a real error again)
                logger.warning("Fused cold prefill failed; using the separate path for this request.",
                               exc_info=True)
        blocks = self.encode(plan, lookup)
        assembled = self.assemble(plan, blocks)
        return self.prefill_final(plan, assembled, all_logits=all_logits), lookup, blocks, assembled

    def _repeat_key(self, plan: RequestPlan) -> tuple[Any, ...]:
        """Everything the final block's KV and logits depend on (the block keys carry the model fingerprint)."""
        return (self.fingerprint, plan.keys, plan.offsets, plan.layout.final_ids, plan.recompute_tokens,
                plan.sink_ids)

    def _keep_final(self, key: tuple[Any, ...], plan: RequestPlan, prefilled: Prefilled) -> None:
        """Keep a copy of the final block's KV and last logits of ``plan`` for an exact repeat."""
        final = len(plan.layout.final_ids)
        if not final or min(layer_lengths(prefilled.cache)) < final:
            return  # a sliding-window layer already dropped part of the final block: nothing exact to keep
        keys, values = stack_layers(prefilled.cache, -final)  # [L, 1, H_kv, F, D] copies
        self.repeats.put(key, FinalBlock(keys, values, prefilled.logits[-1:].clone()))  # logits [1, V]

    def _warn_quality_once(self, plan: RequestPlan) -> None:
        """One warning per engine when plain block mode serves a model that was not block-fine-tuned."""
        if self._quality_warned or plan.recompute_tokens or plan.sink_ids is not None or self.block_finetuned:
            return
        self._quality_warned = True
        logger.warning(quality_warning(model_name(self.model)))

    def prefill(self, blocks: Sequence[Block | str], question: str, *, system: str | None = None,
                history: Sequence[Message] = (), mode: Mode | None = None, all_logits: bool = False,
                recompute_tokens: int | None = None, sink: Sink | None = None) -> PrefillOutput:
        """Build the cache and run the final block; returns its logits (for scoring, oracles, custom decoding).
        ``recompute_tokens``/``sink`` override the EngineConfig fields for this request (block mode only)."""
        plan = self.plan(blocks, question, system=system, history=history, mode=mode,
                         recompute_tokens=recompute_tokens, sink=sink)
        prefilled, lookup, kvs, assembled = self.run_prefill(plan, all_logits=all_logits)
        elapsed = time.perf_counter() - plan.started
        stats = RequestStats.of(plan, lookup, kvs, assembled, prefilled, ttft_s=elapsed, total_s=elapsed)
        return PrefillOutput(prefilled.logits, prefilled.cache, plan.layout, stats)

    # -- stage 6: decode -------------------------------------------------------------------------------------
    def decode(self, plan: RequestPlan, prefilled: Prefilled, generation: GenerationConfig,
               trace: dict[str, Any] | None = None) -> Iterator[str]:
        """Yield text pieces decoded from ``prefilled``; the generator's return value is the :class:`Generation`.

        ``trace`` is the keyword arguments of :meth:`RequestStats.of` (stage results) used for the final stats.
        """
        state = DecodeState(self, plan, prefilled, generation, trace)
        logits = prefilled.logits[-1]  # [V]
        while not state.finished:
            piece = state.push(logits)
            if piece:
                yield piece
            if state.next_input is not None:
                logits = decode_step(self.model, state, self.device)  # [V]
        rest = state.flush()
        if rest:
            yield rest
        return state.result()

    # -- whole requests --------------------------------------------------------------------------------------
    def generate(self, blocks: Sequence[Block | str], question: str, *, system: str | None = None,
                 history: Sequence[Message] = (), mode: Mode | None = None,
                 generation: GenerationConfig | None = None, recompute_tokens: int | None = None,
                 sink: Sink | None = None, **overrides: Any) -> Generation:
        """Answer ``question`` over ``blocks``. ``overrides`` are GenerationConfig fields (e.g. max_new_tokens);
        ``recompute_tokens``/``sink`` override the engine's recovery options for this request."""
        stream = self.stream(blocks, question, system=system, history=history, mode=mode, generation=generation,
                             recompute_tokens=recompute_tokens, sink=sink, **overrides)
        for _ in stream:
            pass
        assert stream.result is not None
        return stream.result

    def stream(self, blocks: Sequence[Block | str], question: str, *, system: str | None = None,
               history: Sequence[Message] = (), mode: Mode | None = None,
               generation: GenerationConfig | None = None, recompute_tokens: int | None = None,
               sink: Sink | None = None, **overrides: Any) -> TextStream:
        """Like :meth:`generate` but yields text pieces as they are decoded; ``.result`` is set at the end."""
        plan, generation = self.plan_request(blocks, question, system=system, history=history, mode=mode,
                                             generation=generation, recompute_tokens=recompute_tokens, sink=sink,
                                             **overrides)
        return TextStream(self._answer(plan, generation))

    def plan_request(self, blocks: Sequence[Block | str], question: str, *, system: str | None = None,
                     history: Sequence[Message] = (), mode: Mode | None = None,
                     generation: GenerationConfig | None = None, recompute_tokens: int | None = None,
                     sink: Sink | None = None, **overrides: Any) -> tuple[RequestPlan, GenerationConfig]:
        """The plan and generation settings of a request, as :meth:`stream` makes them (``overrides`` are
        GenerationConfig fields): what a scheduler needs to run the request later (see
        :mod:`block_attention.serving.batching`). Raises what :meth:`plan` raises."""
        generation = _with_overrides(generation or GenerationConfig(), overrides)
        plan = self.plan(blocks, question, system=system, history=history, mode=mode,
                         max_new_tokens=generation.max_new_tokens, recompute_tokens=recompute_tokens, sink=sink)
        return plan, generation

    def _answer(self, plan: RequestPlan, generation: GenerationConfig) -> Iterator[str]:
        prefilled, lookup, kvs, assembled = self.run_prefill(plan)
        trace = {"lookup": lookup, "encoded": kvs, "assembled": assembled}
        return (yield from self.decode(plan, prefilled, generation, trace))

    # -- warming ---------------------------------------------------------------------------------------------
    def warm(self, blocks: Sequence[Block | str], system: str | None = None, show_progress: bool = False,
             batch_blocks: int = 64) -> WarmReport:
        """Precompute and store the KV of ``blocks`` (and of the prompt prefix) so the first query is warm."""
        if self.store is None:
            raise ConfigError("warm() needs a KV store; construct the engine with store=None or a StoreConfig.")
        if self.block_refusal is not None:
            raise UnsupportedModelError(str(self.block_refusal))
        blocks = as_blocks(blocks)
        check_unique_ids(blocks)
        self.refresh_fingerprint()
        spans = {}
        for start in range(0, max(len(blocks), 1), batch_blocks):
            layout = self.builder.layout(blocks[start:start + batch_blocks], "?", system)
            spans.update({self.cache_key(b.doc_id, b.token_ids): b.token_ids for b in layout.blocks})
        todo = {k: ids for k, ids in spans.items() if self.store.contains(k) is None}
        items = list(todo.items())
        chunks = range(0, len(items), batch_blocks)
        if show_progress:
            from tqdm.auto import tqdm
            chunks = tqdm(chunks, desc="encoding blocks", unit="batch")
        nbytes = 0
        for start in chunks:
            part = items[start:start + batch_blocks]
            with self.lock:
                encoded = encode_blocks(self.model, [ids for _, ids in part], pad_id=self.pad_id,
                                        max_batch_tokens=self.config.max_batch_tokens)
            for (key, _), kv in zip(part, encoded):
                self.store.put(key, kv)
                nbytes += kv.nbytes
        self.store.flush()
        return WarmReport(len(spans), len(spans) - len(todo), len(todo), sum(len(i) for i in todo.values()), nbytes)


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
