"""GrowingLayer (hf/cache.py): appends in place into room it allocated, never writes storage it did not allocate,
and decodes exactly as transformers' own DynamicLayer does."""

from __future__ import annotations

import torch
from transformers import DynamicCache

from block_attention.hf.compat import cache_kwargs, output_cache
from block_attention.hf.cache import (GROWTH_TOKENS, GrowingLayer, cache_over, cache_state, is_plain_cache,
                                      layer_tensors, new_cache, restore_cache)
from block_attention.testing import tiny_model


def _kv(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 2, n, 4, generator=g), torch.randn(1, 2, n, 4, generator=g)  # [1, H_kv, n, D]


def test_updates_append_in_place_and_never_write_given_tensors():
    keys, values = _kv(5, 0)
    given = keys.clone(), values.clone()
    cache = cache_over([(keys, values, None)])
    layer = cache.layers[0]
    assert type(layer) is GrowingLayer and is_plain_cache(cache)
    k1, v1 = _kv(3, 1)
    out_k, _ = cache.update(k1, v1, 0)  # the given tensors have no room: copied once into new room
    assert torch.equal(keys, given[0]) and torch.equal(values, given[1])
    assert torch.equal(out_k, torch.cat([keys, k1], dim=2))
    first_room = out_k.data_ptr()
    for step in range(GROWTH_TOKENS):
        k, v = _kv(1, 10 + step)
        out_k, out_v = cache.update(k, v, 0)
        assert out_k.data_ptr() == first_room  # written into the room: no copy of what the layer held
        assert torch.equal(out_k[:, :, -1:], k) and torch.equal(out_v[:, :, -1:], v)
    assert cache.get_seq_length() == 5 + 3 + GROWTH_TOKENS
    k, v = _kv(1, 99)
    grown, _ = cache.update(k, v, 0)  # the room is used up: new room, contents carried over
    assert grown.data_ptr() != first_room and torch.equal(grown[:, :, :8], torch.cat([keys, k1], dim=2))


def test_replaced_tensors_and_restored_state_are_respected():
    cache = cache_over([(*_kv(4, 0), None)])
    cache.update(*_kv(1, 1), 0)
    layer = cache.layers[0]
    state = cache_state(cache)
    before = layer.keys.clone()
    cache.update(*_kv(2, 2), 0)  # written in place past the snapshot's length
    restore_cache(cache, state)
    assert torch.equal(layer.keys, before) and cache.get_seq_length() == 5
    k, v = _kv(1, 3)
    out_k, _ = cache.update(k, v, 0)
    assert torch.equal(out_k, torch.cat([before, k], dim=2))

    outside = torch.zeros(1, 2, 6, 4)
    layer.keys, layer.values = outside[:, :, :3], outside[:, :, :3].clone()  # replaced by someone else's storage
    cache.update(*_kv(1, 4), 0)
    assert torch.equal(outside, torch.zeros(1, 2, 6, 4))  # its spare columns were not written


def test_inference_room_is_copied_outside_inference_mode():
    cache = cache_over([(*_kv(3, 0), None)])
    with torch.inference_mode():
        inside, _ = cache.update(*_kv(1, 1), 0)
    assert inside.is_inference()
    outside, _ = cache.update(*_kv(1, 2), 0)  # no error: a fresh (normal) room
    assert not outside.is_inference() and cache.get_seq_length() == 5


def test_decoding_equals_transformers_dynamic_cache():
    model = tiny_model("llama", seed=0)
    ids = torch.tensor([list(range(5, 40))])  # [1, 35]

    def greedy(cache):
        tokens, logits_seen = [], []
        with torch.inference_mode():
            out = model(input_ids=ids, **cache_kwargs(model, cache), use_cache=True)
            for _ in range(12):
                logits = out.logits[0, -1]
                logits_seen.append(logits)
                token = int(logits.argmax())
                tokens.append(token)
                out = model(input_ids=torch.tensor([[token]]), **cache_kwargs(model, output_cache(out)),
                            use_cache=True)
        return tokens, torch.stack(logits_seen), output_cache(out)

    plain_tokens, plain_logits, plain_cache = greedy(DynamicCache())
    grown_tokens, grown_logits, grown_cache = greedy(new_cache(growing=True))
    assert all(type(layer) is GrowingLayer for layer in grown_cache.layers)
    assert grown_tokens == plain_tokens
    assert (grown_logits - plain_logits).abs().max().item() <= 1e-5
    for (k1, v1), (k2, v2) in zip(layer_tensors(grown_cache), layer_tensors(plain_cache), strict=True):
        assert torch.equal(k1, k2) and torch.equal(v1, v2)


def test_held_storage_is_appended_in_place_and_emptying_frees_it():
    from block_attention.hf.cache import empty_cache

    room_k, room_v = torch.zeros(1, 2, 10, 4), torch.zeros(1, 2, 10, 4)
    room_k[:, :, :6], room_v[:, :, :6] = _kv(6, 0)
    cache = cache_over([(room_k, room_v, None)], held=6)
    assert cache.get_seq_length() == 6
    k, v = _kv(3, 1)
    out_k, out_v = cache.update(k, v, 0)
    assert out_k.data_ptr() == room_k.data_ptr() and torch.equal(room_k[:, :, 6:9], k)  # in place, no copy
    empty_cache(cache)
    assert cache.layers[0].keys is None and getattr(cache.layers[0], "_room", None) is None
