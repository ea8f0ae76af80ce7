"""vLLM v1 KV connector that gives vLLM block attention from this library's KV store.

Load it with ``--kv-transfer-config '{"kv_connector": "BlockAttentionConnector", "kv_role": "kv_both",
"kv_connector_module_path": "block_attention.vllm_connector.connector", "kv_connector_extra_config": {"store":
{...StoreConfig fields...}}}'`` (``docs/vllm.md``). Requests carry their block structure in
``kv_transfer_params["block_attention"]`` (:mod:`.protocol`, built by :mod:`.client`).

Contract:

* **encode** requests (prompt = one block): vLLM computes the block alone at positions ``0..n-1`` with its own
  batching and kernels; when its prefill is complete, the worker reads the block's KV out of the paged cache and
  puts it in the store under ``(fingerprint, doc id, hash of the prompt's own token ids)``. An encode request
  whose block the store already holds loads all but its last token (vLLM computes one) and stores nothing.
* **serve** requests: when the store holds every block (the scheduler asks ``contains``),
  ``get_num_new_matched_tokens`` reports the tokens up to the end of the last block as matched; the worker fetches
  each block (shape and dtype checked against the model), and writes its KV into the request's paged slots, keys
  re-rotated to the block's offset (:func:`.paged.placed_context`), through the attention backend's own cache
  writer. vLLM prefills only the final block. A missing block, a store fault, a missing or wrong ``cache_salt``, or
  a model the capability probe refuses: 0 tokens matched, vLLM computes the prompt itself. A block that fails on
  the worker (evicted since the check, corrupt, foreign) is reported through ``get_block_ids_with_load_errors``
  for every paged block of the load; with ``kv_load_failure_policy="recompute"`` (set it; the launcher does) vLLM
  then recomputes the request from the start of the load.
* ``request_finished`` returns ``{"block_attention": {...}}`` in the output's ``kv_transfer_params``: for serve
  requests ``hit`` and the ``missing`` doc ids, for encode requests ``stored`` (and ``cached`` when it was).
* The scheduler and the worker run in different processes (vLLM-CPU's multiprocess executor): they see the same
  entries only through the store's disk or Redis tier, so a store config without either is refused (every
  request computed by vLLM). The step's metadata carries keys and block ids, never tensors. Tensor/pipeline
  parallel engines are refused at start-up.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
    KVConnectorWorkerMetadata,
)

from block_attention.core.errors import BlockAttentionError, ConfigError, UnsupportedModelError
from block_attention.core.kv import BlockKV, KVGeometry
from block_attention.store import CacheKey, KVStore, StoreConfig
from block_attention.store.keys import token_hash
from block_attention.vllm_connector import paged, protocol
from block_attention.vllm_connector.fingerprint import engine_fingerprint
from block_attention.vllm_connector.rotary import Rotary, probe

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.forward_context import ForwardContext
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.kv_cache_interface import KVCacheConfig
    from vllm.v1.request import Request

logger = logging.getLogger("block_attention.vllm")
SALTS_KEPT = 100_000  # layouts whose vLLM prefix-cache blocks are known to hold block KV

_stores: dict[StoreConfig, KVStore] = {}
_stores_lock = threading.Lock()


def shared_store(config: StoreConfig) -> KVStore:
    """The process's one :class:`KVStore` for ``config`` (the scheduler- and worker-side connectors share it)."""
    with _stores_lock:
        store = _stores.get(config)
        if store is None:
            store = _stores[config] = KVStore(config)
        return store


@dataclass
class _Load:
    req_id: str
    block_ids: list[int]
    start: int
    end: int
    blocks: list[tuple[CacheKey, int, int]]  # (key, offset, n_tokens), tiling [0, end)


@dataclass
class _Save:
    key: CacheKey
    block_ids: list[int]
    n_tokens: int


@dataclass
class BlockAttentionMetadata(KVConnectorMetadata):
    loads: list[_Load] = field(default_factory=list)
    saves: list[_Save] = field(default_factory=list)


@dataclass
class FailedLoads(KVConnectorWorkerMetadata):
    """Worker -> scheduler: requests whose blocks failed to load this step (recomputed by vLLM)."""

    req_ids: set[str] = field(default_factory=set)

    def aggregate(self, other: KVConnectorWorkerMetadata) -> KVConnectorWorkerMetadata:
        assert isinstance(other, FailedLoads)
        return FailedLoads(self.req_ids | other.req_ids)


@dataclass
class _Encode:
    key: CacheKey
    n_tokens: int
    block_ids: list[int] = field(default_factory=list)
    computed: int = 0


@dataclass
class _Plan:
    request: protocol.BlockRequest
    blocks: list[tuple[CacheKey, int, int]]
    end: int  # load up to this position (the end of the last block; one short of it for a stored encode request)


class BlockAttentionConnector(KVConnectorBase_V1):
    """Serves block KV from the library's store to vLLM (see the module docstring)."""

    def __init__(self, vllm_config: "VllmConfig", role: KVConnectorRole, kv_cache_config: "KVCacheConfig") -> None:
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        extra = dict(self._kv_transfer_config.kv_connector_extra_config or {})
        store_config = StoreConfig(**extra.get("store", {}))
        if role == KVConnectorRole.SCHEDULER:  # it only asks `contains`: no memory tier of its own
            store_config = dataclasses.replace(store_config, memory_bytes=0)
        self._store = shared_store(store_config)
        self._block_size = int(vllm_config.cache_config.block_size)
        model = vllm_config.model_config
        self.disabled: str | None = None
        self.rotary: Rotary | None = None
        self.fingerprint = ""
        self._geometry = KVGeometry(int(model.hf_text_config.num_hidden_layers), int(model.get_total_num_kv_heads()),
                                    int(model.get_head_size()), model.dtype)
        try:
            if not (store_config.disk_enabled or store_config.remote_enabled):
                raise ConfigError("The block-attention connector needs a disk or Redis tier in its store config "
                                  "(scheduler and worker are separate processes); set kv_connector_extra_config "
                                  "{'store': {'disk_dir': ...}} or {'store': {'remote_url': 'redis://...'}}.")
            self._check_engine(vllm_config, kv_cache_config)
            self.rotary = probe(vllm_config)
            self.fingerprint = engine_fingerprint(vllm_config)
        except BlockAttentionError as exc:
            self.disabled = str(exc)
            logger.warning("Block attention is off for this engine (every request is computed by vLLM): %s", exc)
        else:
            logger.info("Block attention connector (%s) on, fingerprint %s, store %s.", role.name, self.fingerprint,
                        self._store.config)
        # scheduler side
        self._plans: dict[str, _Plan] = {}
        self._loads: dict[str, tuple[_Plan, int]] = {}
        self._encodes: dict[str, _Encode] = {}
        self._outcomes: dict[str, dict[str, Any]] = {}
        self._block_salts: OrderedDict[str, None] = OrderedDict()
        self._salt_of: dict[str, str] = {}
        if role == KVConnectorRole.SCHEDULER and self._kv_transfer_config.kv_load_failure_policy != "recompute":
            logger.warning("kv_load_failure_policy is %r: a block that fails to load on the worker fails its request; "
                           "set it to 'recompute' to compute such requests instead.",
                           self._kv_transfer_config.kv_load_failure_policy)
        # worker side
        self._layers: dict[str, int] = {}
        self._failed: set[int] = set()
        self._failed_reqs: set[str] = set()

    def _check_engine(self, vllm_config: "VllmConfig", kv_cache_config: "KVCacheConfig") -> None:
        parallel = vllm_config.parallel_config
        if parallel.tensor_parallel_size != 1 or parallel.pipeline_parallel_size != 1:
            raise UnsupportedModelError("Tensor/pipeline parallel engines are not supported by this connector yet "
                                        "(tested: one worker); run replicas with tensor_parallel_size=1.")
        model = vllm_config.model_config
        if model.use_mla or model.get_sliding_window() is not None:
            raise UnsupportedModelError("Multi-head latent attention and sliding-window models are not verified with "
                                        "this connector; use a full-attention RoPE model.")
        if str(vllm_config.cache_config.cache_dtype) != "auto":
            raise UnsupportedModelError(f"KV cache dtype {vllm_config.cache_config.cache_dtype!r} is not supported; "
                                        "use kv_cache_dtype='auto' (the model dtype).")
        if len(kv_cache_config.kv_cache_groups) != 1:
            raise UnsupportedModelError("Hybrid KV caches (several KV cache groups) are not supported by this "
                                        "connector; use a model with one attention type.")

    # ==============================================================================================================
    # scheduler side
    # ==============================================================================================================
    def _parse(self, request: "Request") -> protocol.BlockRequest | None:
        try:
            return protocol.parse(request.kv_transfer_params, len(request.prompt_token_ids or []))
        except BlockAttentionError as exc:
            logger.warning("Request %s: ignoring its block structure (%s)", request.request_id, exc)
            return None

    def _key(self, doc_id: str, token_ids: list[int]) -> CacheKey:
        return CacheKey(self.fingerprint, doc_id, token_hash(token_ids))

    def get_num_new_matched_tokens(self, request: "Request", num_computed_tokens: int) -> tuple[int | None, bool]:
        if self.disabled is not None:
            return 0, False
        breq = self._parse(request)
        if breq is None:
            return 0, False
        req_id, prompt = request.request_id, list(request.prompt_token_ids or [])
        if breq.role == "encode":
            return self._encode_match(req_id, breq, prompt, num_computed_tokens)
        salt = protocol.cache_salt(breq)
        if request.cache_salt != salt:
            self._outcomes[req_id] = {"hit": False, "reason": "cache_salt"}
            logger.warning("Request %s carries block structure without its cache_salt %r; computed by vLLM (build "
                           "requests with block_attention.vllm_connector.client).", req_id, salt)
            return 0, False
        context = breq.context_len
        if num_computed_tokens >= context:
            return 0, False  # vLLM's own prefix cache (same salt: same layout, block KV) covers every block
        if num_computed_tokens > 0 and salt not in self._block_salts:
            return 0, False  # cached blocks of this layout hold what vLLM computed on an earlier miss: keep to that
        plan = self._plans.get(req_id) or self._fetch(req_id, breq, prompt)
        if plan is None:
            return 0, False
        return context - num_computed_tokens, False

    def _encode_match(self, req_id: str, breq: protocol.BlockRequest, prompt: list[int],
                      num_computed_tokens: int) -> tuple[int, bool]:
        """An encode request computes its block, unless the store holds it: then all but its last token load."""
        key = self._key(breq.blocks[0].doc_id, prompt)
        try:
            held = self._store.contains(key) is not None
        except Exception:  # noqa: BLE001 - a store fault: encode it again
            held = False
        if not held:
            self._encodes.setdefault(req_id, _Encode(key, len(prompt)))
            return 0, False
        self._encodes.pop(req_id, None)
        self._outcomes[req_id] = {"stored": True, "cached": True}
        end = len(prompt) - 1  # vLLM computes at least one token
        if num_computed_tokens >= end:
            return 0, False
        self._plans[req_id] = _Plan(breq, [(key, 0, len(prompt))], end)
        return end - num_computed_tokens, False

    def _fetch(self, req_id: str, breq: protocol.BlockRequest, prompt: list[int]) -> _Plan | None:
        blocks, missing = [], []
        for ref, start, end in breq.spans():
            key = self._key(ref.doc_id, prompt[start:end])
            try:
                held = self._store.contains(key)
            except Exception as exc:  # noqa: BLE001 - a store fault of any kind is a miss, never a failed request
                logger.warning("Block store lookup failed (%s: %s); computing the request with vLLM.",
                               type(exc).__name__, exc)
                held = None
            if held is None:
                missing.append(ref.doc_id)
            else:
                blocks.append((key, start, end - start))
        if missing:
            self._outcomes[req_id] = {"hit": False, "missing": missing}
            return None
        plan = self._plans[req_id] = _Plan(breq, blocks, breq.context_len)
        return plan

    def update_state_after_alloc(self, request: "Request", blocks: "KVCacheBlocks", num_external_tokens: int) -> None:
        plan = self._plans.get(request.request_id)
        if num_external_tokens > 0 and plan is not None:
            self._loads[request.request_id] = (plan, plan.end - num_external_tokens)

    def build_connector_meta(self, scheduler_output: "SchedulerOutput") -> KVConnectorMetadata:
        meta = BlockAttentionMetadata()
        scheduled = scheduler_output.num_scheduled_tokens
        for new in scheduler_output.scheduled_new_reqs:
            block_ids = list(new.block_ids[0])
            if new.req_id in self._loads:
                plan, start = self._loads.pop(new.req_id)
                meta.loads.append(_Load(new.req_id, block_ids, start, plan.end, plan.blocks))
                self._plans.pop(new.req_id, None)
                if plan.request.role == "serve":
                    self._outcomes[new.req_id] = {"hit": True, "loaded_tokens": plan.end - start}
                    self._salt_of[new.req_id] = protocol.cache_salt(plan.request)
                    self._remember_salt(self._salt_of[new.req_id])
            if (enc := self._encodes.get(new.req_id)) is not None:
                enc.block_ids, enc.computed = block_ids, new.num_computed_tokens + scheduled.get(new.req_id, 0)
        cached = scheduler_output.scheduled_cached_reqs
        for i, req_id in enumerate(cached.req_ids):
            enc = self._encodes.get(req_id)
            if enc is None:
                continue
            new_ids = cached.new_block_ids[i]
            if new_ids is not None:
                resumed = req_id in cached.resumed_req_ids  # a resumed request lists all its blocks anew
                enc.block_ids = list(new_ids[0]) if resumed else enc.block_ids + list(new_ids[0])
            enc.computed = cached.num_computed_tokens[i] + scheduled.get(req_id, 0)
        for req_id, enc in list(self._encodes.items()):
            if enc.block_ids and enc.computed >= enc.n_tokens:
                meta.saves.append(_Save(enc.key, enc.block_ids, enc.n_tokens))
                self._outcomes[req_id] = {"stored": True}
                del self._encodes[req_id]
        return meta

    def update_connector_output(self, connector_output: Any) -> None:
        meta = getattr(connector_output, "kv_connector_worker_meta", None)
        if isinstance(meta, FailedLoads):
            for req_id in meta.req_ids:
                self._outcomes[req_id] = {"hit": False, "reason": "load_failed"}
                salt = self._salt_of.pop(req_id, None)
                if salt is not None:  # vLLM recomputes it with full attention into blocks under this salt
                    self._block_salts.pop(salt, None)

    def _remember_salt(self, salt: str) -> None:
        self._block_salts[salt] = None
        self._block_salts.move_to_end(salt)
        while len(self._block_salts) > SALTS_KEPT:
            self._block_salts.popitem(last=False)

    def request_finished(self, request: "Request", block_ids: list[int]) -> tuple[bool, dict[str, Any] | None]:
        req_id = request.request_id
        self._plans.pop(req_id, None)
        self._loads.pop(req_id, None)
        self._encodes.pop(req_id, None)
        self._salt_of.pop(req_id, None)
        outcome = self._outcomes.pop(req_id, None)
        return False, ({protocol.PARAM: outcome} if outcome is not None else None)

    # ==============================================================================================================
    # worker side
    # ==============================================================================================================
    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        from vllm.model_executor.models.utils import extract_layer_index

        self._layers = {name: extract_layer_index(name) for name in kv_caches}
        if self.disabled is None:
            self._check_layout(next(iter(kv_caches)))

    def _layer(self, name: str) -> Any:
        return self._vllm_config.compilation_config.static_forward_context[name]

    def _check_layout(self, name: str) -> None:
        """The backend's writer and :func:`paged.read_slots` must agree; checked on the reserved null block 0."""
        layer = self._layer(name)
        cache = layer.kv_cache
        heads, head = self._geometry.kv_heads, self._geometry.head_dim
        gen = torch.Generator().manual_seed(1)
        keys = torch.randn(self._block_size, heads, head, generator=gen).to(cache.dtype)  # [bs, H, D]
        values = torch.randn(self._block_size, heads, head, generator=gen).to(cache.dtype)  # [bs, H, D]
        slot_ids = paged.slots([0], self._block_size, 0, self._block_size)  # [bs]
        saved = cache[0].clone()
        try:
            layer.impl.do_kv_cache_update(layer, keys, values, cache, slot_ids)
            got_k, got_v = paged.read_slots(cache, slot_ids)  # [H, bs, D] each
        finally:
            cache[0].copy_(saved)
        if not (torch.equal(got_k, keys.transpose(0, 1)) and torch.equal(got_v, values.transpose(0, 1))):
            raise UnsupportedModelError(
                f"The attention backend {type(layer.impl).__name__} lays out its KV cache differently from what the "
                "block-attention connector reads; remove the connector from kv_transfer_config or use the CPU backend.")

    def _fetch_blocks(self, load: _Load) -> list[tuple[BlockKV, int]] | None:
        blocks = []
        for key, offset, n_tokens in load.blocks:
            if offset + n_tokens <= load.start:
                blocks.append((None, offset))  # already in vLLM's own prefix cache
                continue
            try:
                hit = self._store.lookup(key, "cpu", expect=(self._geometry, n_tokens))
            except Exception as exc:  # noqa: BLE001 - any store fault is a load failure, reported to the scheduler
                logger.warning("Block store read failed (%s: %s).", type(exc).__name__, exc)
                hit = None
            if hit is None:
                logger.warning("Block %r is gone from the store since the scheduler checked it; request %s is "
                               "reported as a failed load.", key.doc_id, load.req_id)
                return None
            blocks.append((hit.kv, offset))
        return [(kv, offset) for kv, offset in blocks if kv is not None]

    def get_block_ids_with_load_errors(self) -> set[int]:
        failed, self._failed = self._failed, set()
        return failed

    def build_connector_worker_meta(self) -> KVConnectorWorkerMetadata | None:
        if not self._failed_reqs:
            return None
        failed, self._failed_reqs = self._failed_reqs, set()
        return FailedLoads(failed)

    def start_load_kv(self, forward_context: "ForwardContext", **kwargs: Any) -> None:
        meta = self._get_connector_metadata()
        assert isinstance(meta, BlockAttentionMetadata)
        for load in meta.loads:
            blocks = self._fetch_blocks(load) if self.rotary is not None else None  # None: this side is off
            if blocks is None:
                first, last = load.start // self._block_size, -(-load.end // self._block_size)
                self._failed.update(load.block_ids[first:last])
                self._failed_reqs.add(load.req_id)
                continue
            placed = paged.placed_context(blocks, load.start, load.end, self.rotary.inv_freq,
                                          self.rotary.interleaved)  # [L, H, T, D]
            slot_ids = paged.slots(load.block_ids, self._block_size, load.start, load.end)  # [T]
            for name, index in self._layers.items():
                layer = self._layer(name)
                keys = placed.keys[index].transpose(0, 1).contiguous()  # [T, H, D]
                values = placed.values[index].transpose(0, 1).contiguous()  # [T, H, D]
                layer.impl.do_kv_cache_update(layer, keys, values, layer.kv_cache, slot_ids)

    def wait_for_layer_load(self, layer_name: str) -> None:
        return

    def save_kv_layer(self, layer_name: str, kv_layer: torch.Tensor, attn_metadata: Any, **kwargs: Any) -> None:
        return  # encoded blocks are read once their prefill is complete, in wait_for_save

    def wait_for_save(self) -> None:
        meta = self._get_connector_metadata()
        assert isinstance(meta, BlockAttentionMetadata)
        if self.disabled is not None:  # the layout check did not run: read nothing
            return
        for save in meta.saves:
            try:
                if self._store.contains(save.key):
                    continue
                slot_ids = paged.slots(save.block_ids, self._block_size, 0, save.n_tokens)  # [n]
                per_layer = sorted(self._layers.items(), key=lambda item: item[1])
                read = [paged.read_slots(self._layer(name).kv_cache, slot_ids) for name, _ in per_layer]
                keys = torch.stack([k for k, _ in read])  # [L, H, n, D]
                values = torch.stack([v for _, v in read])  # [L, H, n, D]
                self._store.put(save.key, BlockKV(keys, values))
            except Exception as exc:  # noqa: BLE001 - a failed save is a future miss, not a failed request
                logger.warning("Storing block %r failed (%s: %s); it will be encoded again.", save.key.doc_id,
                               type(exc).__name__, exc)
