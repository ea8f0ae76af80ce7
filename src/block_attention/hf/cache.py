"""transformers' KV cache, behind small typed functions: the only module that touches the cache's internals.

A ``DynamicCache`` keeps one layer object per decoder layer (``cache.layers``), each holding ``keys`` and
``values`` of shape ``[B, H_kv, T, D]``; its layer classes and constructor arguments (``ddp_cache_data``) changed
between releases. Everything else in the library builds, reads and writes caches through the functions here, so a
release that changes them is bridged in this file alone (tests/hf/test_cache_boundary.py keeps it that way).

Full-attention layers of the caches built here are :class:`GrowingLayer`\ s: they append in place into room they
allocated, so a decode step writes its one token instead of copying every layer's whole KV (what
``DynamicLayer.update`` does by concatenation).

Contract: functions that return tensors return the cache's own storage (views, no copy) unless they say "copy";
writing into those tensors writes the cache. :func:`cache_from` copies (the public constructor concatenates every
layer onto empty storage); :func:`cache_over` adopts the given tensors instead. Importing this module does no work
beyond importing transformers' cache classes.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

__all__ = ["GROWTH_TOKENS", "CacheState", "DynamicCache", "GrowingLayer", "cache_device", "cache_from", "cache_over",
           "cache_state", "empty_cache", "extend_cache", "is_plain_cache", "layer_lengths", "layer_tensors",
           "layer_views", "new_cache", "restore_cache", "stack_layers"]

KV = tuple[torch.Tensor, torch.Tensor]
CacheState = tuple[int, list[dict[str, object]]]  # (layer count, each layer's attributes): see cache_state


GROWTH_TOKENS = 256  # room a growing layer allocates past what it holds (amortizes the copy over 256 tokens)


class GrowingLayer(DynamicLayer):
    """A full-attention cache layer that appends in place.

    Its ``keys``/``values`` (``[B, H_kv, n, D]``) are the head of storage the layer allocated itself with room for
    :data:`GROWTH_TOKENS` more tokens; an update writes the new tokens into that room and returns the longer head
    (a view: the stride over the token axis is the room's). When the room is used up, or when anything replaced
    ``keys``/``values`` (a crop, a reorder, :func:`restore_cache`, :func:`cache_over`), the next update allocates
    new room and copies once. Storage the layer did not allocate is never written, and inference tensors are
    written only in inference mode (else the layer copies). New states that require grad are concatenated as
    ``DynamicLayer`` does (autograd records it)."""

    _room: "KV | None" = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object,
               **kwargs: object) -> KV:
        if key_states.requires_grad or value_states.requires_grad:  # trained through: autograd's concatenation
            self._room = None
            return super().update(key_states, value_states, *args, **kwargs)
        with torch.no_grad():  # a cache is data: the room and its views are written outside autograd
            return self._append(key_states, value_states)

    def _append(self, key_states: torch.Tensor, value_states: torch.Tensor) -> KV:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        keys, values = self.keys, self.values
        held = int(keys.shape[-2]) if keys.numel() else 0
        new = int(key_states.shape[-2])
        if not self._can_append(held, new):
            batch, heads = key_states.shape[:2]
            size = held + new + GROWTH_TOKENS
            room_k = key_states.new_empty((batch, heads, size, key_states.shape[-1]))  # [B, H_kv, n + room, D]
            room_v = value_states.new_empty((batch, heads, size, value_states.shape[-1]))
            if held:
                room_k[:, :, :held].copy_(keys)
                room_v[:, :, :held].copy_(values)
            self._room = (room_k, room_v)
        assert self._room is not None
        room_k, room_v = self._room
        room_k[:, :, held:held + new].copy_(key_states)
        room_v[:, :, held:held + new].copy_(value_states)
        self.keys, self.values = room_k[:, :, :held + new], room_v[:, :, :held + new]
        return self.keys, self.values

    def _can_append(self, held: int, new: int) -> bool:
        room = self._room
        if room is None or not held:
            return False
        room_k, room_v = room
        if held + new > room_k.shape[-2] or (room_k.is_inference() and not torch.is_inference_mode_enabled()):
            return False
        return all(t.data_ptr() == r.data_ptr() and t.stride() == r.stride() and t.shape[-2] == held
                   and t.shape[:2] == r.shape[:2] for t, r in ((self.keys, room_k), (self.values, room_v)))


def _growing(cache: DynamicCache) -> DynamicCache:
    """``cache`` with its plain full-attention layers replaced by :class:`GrowingLayer`\ s holding the same
    tensors (no copy)."""
    for index, layer in enumerate(cache.layers):
        if type(layer) is DynamicLayer:
            grown = GrowingLayer()
            vars(grown).update(vars(layer))
            cache.layers[index] = grown
    return cache


def new_cache(growing: bool = False) -> DynamicCache:
    """An empty cache for a forward pass to fill; ``growing``: its full-attention layers are :class:`GrowingLayer`
    (a cache that decoding will extend), where the release creates layers on demand."""
    cache = DynamicCache()
    if growing and getattr(cache, "layer_class_to_replicate", None) is DynamicLayer:
        cache.layer_class_to_replicate = GrowingLayer
    return cache


def cache_from(pairs: list[KV]) -> DynamicCache:
    """A cache holding a copy of per-layer ``(keys, values)`` (each ``[B, H_kv, T, D]``; views are fine)."""
    return _growing(DynamicCache(ddp_cache_data=pairs))


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
    if not isinstance(cache, DynamicCache) or not layers or any(type(layer) not in (DynamicLayer, GrowingLayer)
                                                                for layer in layers):
        return False
    keys = [getattr(layer, "keys", None) for layer in layers]
    if any(k is None or k.ndim != 4 for k in keys):
        return False
    shapes = {(k.shape[0], k.shape[-2]) for k in keys}
    return len(shapes) == 1 and next(iter(shapes))[0] == 1


def cache_over(layers: list[tuple[torch.Tensor, torch.Tensor, int | None]], held: int | None = None
               ) -> DynamicCache:
    """A ``DynamicCache`` over per-layer ``(keys, values, window)`` (``[1, H_kv, T, D]`` each; ``window`` None for a
    full-attention layer). Full-attention layers hold the given tensors themselves (the cache never writes into
    them: its updates go to room of its own); sliding-window layers keep their own copy of the last ``window - 1``
    tokens, as the model's cache would.

    ``held``: the tensors are storage made for this cache alone (nobody else reads or writes it), of which the
    first ``held`` tokens are filled; full-attention layers hold those and append into the rest in place."""
    if held is not None:
        cache = cache_over([(k[:, :, :held], v[:, :, :held], w) for k, v, w in layers])
        for layer, (keys, values, window) in zip(cache.layers, layers):
            if window is None and type(layer) is GrowingLayer:
                layer._room = (keys, values)  # the held tokens are its head, so updates append in place
        return cache
    data = [(k[:, :, :0], v[:, :, :0]) if w is None else (k, v, torch.tensor(w)) for k, v, w in layers]
    cache = DynamicCache(ddp_cache_data=data)  # full layers start empty: nothing is copied
    for layer, (keys, values, window) in zip(cache.layers, layers):
        if window is None:
            layer.keys, layer.values = keys, values
            if layer.get_seq_length() != keys.shape[-2]:  # a release whose layers keep other length state:
                return _growing(DynamicCache(ddp_cache_data=[(k, v) if w is None else (k, v, torch.tensor(w))
                                                             for k, v, w in layers]))  # the public, copying way
    return _growing(cache)


def empty_cache(cache: DynamicCache) -> None:
    """Drop every layer's tensors from ``cache`` in place (other holders of the same cache object then keep no KV
    alive); the cache reads as empty afterwards."""
    for layer in cache.layers:
        layer.keys = layer.values = None
        vars(layer).pop("_room", None)  # a growing layer's storage goes too
        layer.is_initialized = False


def layer_lengths(cache: DynamicCache) -> list[int]:
    """How many tokens each layer holds (a sliding-window layer holds at most ``window - 1``)."""
    return [int(keys.shape[-2]) for keys, _ in layer_tensors(cache)]


def extend_cache(cache: DynamicCache, keys: torch.Tensor, values: torch.Tensor) -> None:
    """Append ``keys``/``values`` ``[L, B, H_kv, n, D]`` to every layer of ``cache`` through the cache's own
    ``update`` (a sliding-window layer trims and counts as it does in a forward pass); the appended tensors are
    copied into the layers' storage (a growing layer's room, or a sliding layer's new tensors)."""
    assert keys.shape[0] == values.shape[0] == len(cache.layers), (keys.shape, len(cache.layers))
    for index in range(keys.shape[0]):
        cache.update(keys[index], values[index], index)


def cache_state(cache: DynamicCache) -> CacheState:
    """A snapshot of ``cache`` that :func:`restore_cache` can return it to after a forward pass failed part-way.

    Cheap (no tensor is copied): a layer's ``update`` either replaces its tensors with new ones (concatenation) or,
    a :class:`GrowingLayer`, writes only past the tokens it holds; either way the snapshot's tensors keep their
    contents, and a restored growing layer appends again right after them."""
    return len(cache.layers), [dict(vars(layer)) for layer in cache.layers]


def restore_cache(cache: DynamicCache, state: CacheState) -> None:
    """Put ``cache`` back to ``state`` (layers appended since are dropped)."""
    count, layers = state
    del cache.layers[count:]
    for layer, saved in zip(cache.layers, layers):
        vars(layer).clear()
        vars(layer).update(saved)
