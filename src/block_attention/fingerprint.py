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

from .prompt import PromptConfig
from .rope import RotaryInfo
from .store.keys import fingerprint

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


def adapter_state(model: torch.nn.Module) -> list[list[Any]]:
    """Which adapters are active, merged or disabled in every adapter layer (PEFT's ``BaseTunerLayer`` API), with
    their scaling; ``[]`` for a model without adapters."""
    state: list[list[Any]] = []
    for name, module in model.named_modules():
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

    :meth:`changed` compares every weight tensor's identity, autograd version counter, storage pointer, dtype and
    device, plus :func:`adapter_state`, with the last snapshot, and takes a new snapshot.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self._model = model
        self._snapshot = self._take()

    def _take(self) -> tuple[Any, ...]:
        tensors = tuple((name, id(t), _version(t), t.data_ptr(), t.dtype, t.device)
                        for name, t in _weight_tensors(self._model))
        return tensors, repr(adapter_state(self._model))

    def changed(self) -> bool:
        snapshot = self._take()
        if snapshot == self._snapshot:
            return False
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
