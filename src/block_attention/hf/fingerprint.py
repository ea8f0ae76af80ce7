"""Model fingerprint: everything besides a block's tokens that determines its KV.

Covers the model identity (name, revision), its config, a full hash of every weight (parameters and persistent
buffers, all bytes: any changed element changes it), the active adapter state (PEFT/LoRA: which adapters are
active, merged or disabled, and their scaling), the parameter dtype, the tokenizer (class, vocab digest, special
tokens), the rotary parameters and the doc-block template/marker. Two engines share cache entries only if all agree.

Weights can change after the engine was built (training in place, ``load_state_dict``, loading, switching or
merging an adapter, ``model.to(...)``). :class:`WeightsWatch` is the cheap re-check the engine runs before each
request: every weight tensor's identity, version counter, storage pointer, dtype and device, plus the adapter state.
When any of them moved, the engine recomputes the full fingerprint. Writes that bypass autograd's version
counter (through ``tensor.data``, ``.numpy()`` views or raw storage) are not seen: call
``engine.refresh_fingerprint(force=True)`` after such edits.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
import xxhash

from block_attention.core.prompt import PromptConfig
from block_attention.store.keys import fingerprint
from .rope import RotaryInfo

_CHUNK_BYTES = 64 << 20  # device tensors are hashed through host copies of at most this size


def _weight_tensors(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Every parameter and persistent buffer (what ``state_dict`` holds), by name, without copying."""
    return sorted(model.state_dict(keep_vars=True).items(), key=lambda item: item[0])


def weights_digest(model: torch.nn.Module) -> str:
    """Hash of every weight's name, shape, dtype and *all* of its bytes (xxh3-128: ~10 GB/s on one core)."""
    h = xxhash.xxh3_128()
    seen: dict[tuple[Any, ...], str] = {}
    for name, tensor in _weight_tensors(model):
        t = tensor.detach()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        view = (t.device, t.data_ptr(), tuple(t.shape), t.stride(), t.dtype)
        if t.device.type != "meta" and view in seen:  # a tied weight (e.g. lm_head = embeddings): hashed once
            h.update(f"alias of {seen[view]};".encode())
            continue
        seen[view] = name
        flat = t.reshape(-1)
        if flat.numel() == 0 or t.device.type == "meta":  # offloaded (meta) weights: name, shape and dtype only
            continue
        step = max(1, _CHUNK_BYTES // flat.element_size())
        for start in range(0, flat.numel(), step):
            part = flat[start:start + step].to("cpu").contiguous()  # [chunk] (no copy for CPU tensors)
            h.update(part.view(torch.uint8).numpy().data if part.dtype != torch.bool else part.numpy().tobytes())
    return h.hexdigest()


def adapter_state(model: torch.nn.Module, layers: list[torch.nn.Module] | None = None) -> list[list[Any]]:
    """Which adapters are active, merged or disabled in every adapter layer (PEFT's ``BaseTunerLayer`` API), with
    their scaling; ``[]`` for a model without adapters. ``layers``: only these modules (a known list of the
    model's adapter layers), named by position."""
    state: list[list[Any]] = []
    named = model.named_modules() if layers is None else ((str(i), m) for i, m in enumerate(layers))
    for name, module in named:
        if not hasattr(module, "merged_adapters") or not hasattr(module, "active_adapters"):
            continue
        scaling = getattr(module, "scaling", None)
        state.append([
            name,
            sorted(map(str, _as_list(module.active_adapters))),
            sorted(map(str, _as_list(module.merged_adapters))),
            bool(getattr(module, "disable_adapters", False)),
            sorted((str(k), float(v)) for k, v in scaling.items()) if isinstance(scaling, dict) else None,
        ])
    return state


def _as_list(value: Any) -> list[Any]:
    return [value] if isinstance(value, str) else list(value or [])


class WeightsWatch:
    """Cheap change detector for a model's weights and adapter state (no tensor data is read).

    :meth:`changed` compares, for every module of the model, the identity of its children, and the identity,
    autograd version counter, storage pointer, dtype and device of each of its parameters and persistent buffers
    (what ``state_dict`` holds; a dynamic RoPE's recomputed ``inv_freq`` is not a weight), plus
    :func:`adapter_state` of its adapter layers, with the last snapshot, and takes a new snapshot. The module list
    is walked again only when some module's children changed (a module replaced or an adapter injected), so a
    check costs a few hundred attribute reads (~0.2 ms for a 24-layer model), not a ``state_dict``.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self._model = model
        self._walk()
        self._snapshot = self._take()

    def _walk(self) -> None:
        self._modules = list(self._model.modules())
        self._adapters = [m for m in self._modules if hasattr(m, "merged_adapters") and hasattr(m, "active_adapters")]

    def _take(self) -> tuple[Any, ...]:
        children = tuple(tuple(map(id, m._modules.values())) for m in self._modules)
        tensors = tuple((id(t), _version(t), t.data_ptr(), t.dtype, t.device)
                        for m in self._modules for group in (m._parameters, m._buffers)
                        for name, t in group.items()
                        if t is not None and name not in m._non_persistent_buffers_set)  # what state_dict holds
        return children, tensors, repr(adapter_state(self._model, self._adapters)) if self._adapters else ""

    def changed(self) -> bool:
        snapshot = self._take()
        if snapshot == self._snapshot:
            return False
        if snapshot[0] != self._snapshot[0]:  # the module tree changed: walk it again
            self._walk()
            snapshot = self._take()
        self._snapshot = snapshot
        return True


def _version(tensor: torch.Tensor) -> int:
    try:
        return int(tensor._version)
    except RuntimeError:  # inference tensors have no version counter
        return -1


def tokenizer_digest(tokenizer: Any) -> dict[str, Any]:
    vocab = tokenizer.get_vocab()
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps(sorted(vocab.items())).encode())
    return {
        "class": type(tokenizer).__name__,
        "vocab": h.hexdigest(),
        "special": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
    }


def model_fingerprint(model: torch.nn.Module, tokenizer: Any, rotary: RotaryInfo | None,
                      prompt: PromptConfig) -> tuple[str, dict[str, Any]]:
    config = model.config
    config_json = config.to_json_string(use_diff=False)
    parts = {
        "name": getattr(config, "_name_or_path", ""),
        "revision": getattr(config, "_commit_hash", None),
        "config": hashlib.blake2b(config_json.encode(), digest_size=16).hexdigest(),
        "weights": weights_digest(model),
        "adapters": adapter_state(model),
        "dtype": str(next(model.parameters()).dtype),
        "tokenizer": tokenizer_digest(tokenizer),
        "rotary": rotary.describe() if rotary is not None else None,
        "prompt": prompt.describe(),
    }
    return fingerprint(parts), parts
