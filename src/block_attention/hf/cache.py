"""transformers' KV cache, behind small typed functions: the only module that touches the cache's internals.

A ``DynamicCache`` keeps one layer object per decoder layer (``cache.layers``), each holding ``keys`` and
``values`` of shape ``[B, H_kv, T, D]``; its layer classes and constructor arguments (``ddp_cache_data``) changed
between releases. Everything else in the library builds, reads and writes caches through the functions here, so a
release that changes them is bridged in this file alone (tests/hf/test_cache_boundary.py keeps it that way).

Contract: functions that return tensors return the cache's own storage (views, no copy) unless they say "copy";
writing into those tensors writes the cache. :func:`cache_from` copies (the public constructor concatenates every
layer onto empty storage); :func:`cache_over` adopts the given tensors instead. Importing this module does no work
beyond importing transformers' cache classes.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

__all__ = ["CacheState", "DynamicCache", "cache_device", "cache_from", "cache_over", "cache_state", "empty_cache",
           "extend_cache", "is_plain_cache", "layer_lengths", "layer_tensors", "layer_views", "new_cache",
           "restore_cache", "stack_layers"]

KV = tuple[torch.Tensor, torch.Tensor]
CacheState = tuple[int, list[dict[str, object]]]  # (layer count, each layer's attributes): see cache_state


def new_cache() -> DynamicCache:
    """An empty cache for a forward pass to fill."""
    return DynamicCache()


def cache_from(pairs: list[KV]) -> DynamicCache:
    """A cache holding a copy of per-layer ``(keys, values)`` (each ``[B, H_kv, T, D]``; views are fine)."""
    return DynamicCache(ddp_cache_data=pairs)


def layer_tensors(cache: DynamicCache) -> list[KV]:
    """Per-layer ``(keys, values)`` of ``cache``, each ``[B, H_kv, T, D]``: the cache's own tensors."""
    return [(layer.keys, layer.values) for layer in cache.layers]


def layer_views(cache: DynamicCache, lo: int, hi: int | None = None) -> list[KV]:
    """Per-layer ``(keys, values)`` of tokens ``lo..hi`` (``hi`` None: to the end), each ``[B, H_kv, hi - lo, D]``
    views of the cache's storage."""
    return [(keys[:, :, lo:hi], values[:, :, lo:hi]) for keys, values in layer_tensors(cache)]


def stack_layers(cache: DynamicCache, lo: int = 0, hi: int | None = None) -> KV:
    """Every layer's keys and values of tokens ``lo..hi`` stacked into two new tensors ``[L, B, H_kv, n, D]``
    (a copy: the cache can be freed afterwards)."""
    pairs = layer_views(cache, lo, hi)
    return torch.stack([k for k, _ in pairs]), torch.stack([v for _, v in pairs])


def cache_device(cache: DynamicCache) -> torch.device:
    """The device of the cache's tensors (those of its first layer)."""
    return cache.layers[0].keys.device


def is_plain_cache(cache: object) -> bool:
    """Whether ``cache`` is a one-row ``DynamicCache`` of plain (full-attention) layers, all of one length."""
    layers = getattr(cache, "layers", None)
    if not isinstance(cache, DynamicCache) or not layers or any(type(layer) is not DynamicLayer for layer in layers):
        return False
    keys = [getattr(layer, "keys", None) for layer in layers]
    if any(k is None or k.ndim != 4 for k in keys):
        return False
    shapes = {(k.shape[0], k.shape[-2]) for k in keys}
    return len(shapes) == 1 and next(iter(shapes))[0] == 1


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


def layer_lengths(cache: DynamicCache) -> list[int]:
    """How many tokens each layer holds (a sliding-window layer holds at most ``window - 1``)."""
    return [int(keys.shape[-2]) for keys, _ in layer_tensors(cache)]


def extend_cache(cache: DynamicCache, keys: torch.Tensor, values: torch.Tensor) -> None:
    """Append ``keys``/``values`` ``[L, B, H_kv, n, D]`` to every layer of ``cache`` through the cache's own
    ``update`` (a sliding-window layer trims and counts as it does in a forward pass); the appended tensors are
    copied into the layers' new storage."""
    assert keys.shape[0] == values.shape[0] == len(cache.layers), (keys.shape, len(cache.layers))
    for index in range(keys.shape[0]):
        cache.update(keys[index], values[index], index)


def cache_state(cache: DynamicCache) -> CacheState:
    """A snapshot of ``cache`` that :func:`restore_cache` can return it to after a forward pass failed part-way.

    Cheap (no tensor is copied): a layer's ``update`` replaces its tensors with new ones (concatenation), never
    writes into them, so the snapshot's references keep the old contents."""
    return len(cache.layers), [dict(vars(layer)) for layer in cache.layers]


def restore_cache(cache: DynamicCache, state: CacheState) -> None:
    """Put ``cache`` back to ``state`` (layers appended since are dropped)."""
    count, layers = state
    del cache.layers[count:]
    for layer, saved in zip(cache.layers, layers):
        vars(layer).clear()
        vars(layer).update(saved)
