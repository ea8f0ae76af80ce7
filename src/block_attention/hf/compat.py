"""Version differences of transformers that the library bridges, in one place.

transformers 5.2x renamed the forward argument ``past_key_values`` to ``cache`` (the old name warns on every call
and is removed in 5.40) and the output field likewise. :func:`cache_kwargs` names the cache the way the model's
``forward`` accepts it (inspected once per model class) and :func:`output_cache` reads it back from either field,
so the oldest supported release (5.0) and the newest both work without warnings. :func:`cache_over` builds a
``DynamicCache`` that adopts assembled tensors instead of copying them (the public constructor concatenates every
layer onto an empty tensor, a full copy of the context's KV).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
from transformers import DynamicCache


def _inner(model: torch.nn.Module) -> torch.nn.Module:
    get_base = getattr(model, "get_base_model", None)  # PEFT wrappers forward **kwargs to the model inside
    return get_base() if callable(get_base) else model


@functools.lru_cache(maxsize=None)
def _cache_argument(model_class: type) -> str:
    try:
        params = inspect.signature(model_class.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def cache_argument(model: torch.nn.Module) -> str:
    """``"cache"`` when ``model.forward`` takes that argument (newer transformers), else ``"past_key_values"``."""
    return _cache_argument(type(_inner(model)))


def cache_kwargs(model: torch.nn.Module, cache: Any) -> dict[str, Any]:
    """``{name: cache}`` for ``model(**cache_kwargs(model, cache), ...)``."""
    return {cache_argument(model): cache}


def output_cache(output: Any) -> Any:
    """The cache a forward call returned, from ``output.cache`` (newer) or ``output.past_key_values`` (older)."""
    keys = output.keys() if hasattr(output, "keys") else ()
    if "cache" in keys:
        return output["cache"]
    return output["past_key_values"] if "past_key_values" in keys else getattr(output, "past_key_values", None)


def cache_over(layers: list[tuple[torch.Tensor, torch.Tensor, int | None]]) -> DynamicCache:
    """A ``DynamicCache`` over per-layer ``(keys, values, window)`` (``[1, H_kv, T, D]`` each; ``window`` None for a
    full-attention layer). Full-attention layers hold the given tensors themselves (the cache never writes into
    them: its updates concatenate into new storage); sliding-window layers keep their own copy of the last
    ``window - 1`` tokens, as the model's cache would."""
    data = [(k[:, :, :0], v[:, :, :0]) if w is None else (k, v, torch.tensor(w)) for k, v, w in layers]
    cache = DynamicCache(ddp_cache_data=data)  # full layers start empty: nothing is copied
    for layer, (keys, values, window) in zip(cache.layers, layers):
        if window is None:
            layer.keys, layer.values = keys, values
            if layer.get_seq_length() != keys.shape[-2]:  # a release whose layers keep other length state:
                return DynamicCache(ddp_cache_data=[(k, v) if w is None else (k, v, torch.tensor(w))
                                                    for k, v, w in layers])  # the public, copying way
    return cache


def empty_cache(cache: DynamicCache) -> None:
    """Drop every layer's tensors from ``cache`` in place (other holders of the same cache object then keep no KV
    alive); the cache reads as empty afterwards."""
    for layer in cache.layers:
        layer.keys = layer.values = None
        layer.is_initialized = False
