"""int8 KV codec of the lower tiers: bounded error, about half the bytes, strict decoding, and what it costs the
model's logits when a request is served from a compressed disk tier."""

from __future__ import annotations

import pytest
import torch

from block_attention import BlockAttentionEngine, StoreConfig
from block_attention.core.errors import ConfigError, CorruptEntryError
from block_attention.store import codec, serialize
from block_attention.testing import tiny_model
from block_attention.testing.kv import key, make_kv

QUESTION = "Where did the lighthouse stand?"


def test_int8_round_trip_error_is_within_half_a_step():
    kv = make_kv(1, n_tokens=64, head_dim=32)
    out = serialize.loads(key(), serialize.dumps(key(), kv, "int8"))
    assert out.keys.dtype == kv.keys.dtype and out.keys.shape == kv.keys.shape
    key_step = kv.keys.abs().amax(dim=2, keepdim=True) / 127  # per channel
    value_step = kv.values.abs().amax(dim=3, keepdim=True) / 127  # per token
    assert ((out.keys - kv.keys).abs() <= key_step * 0.5 + 1e-3 * key_step + 1e-6).all()
    assert ((out.values - kv.values).abs() <= value_step * 0.5 + 1e-3 * value_step + 1e-6).all()
    assert not torch.equal(out.keys, kv.keys)  # it is lossy: the test would notice a silent "none"


@pytest.mark.parametrize(("dtype", "bound"), [(torch.bfloat16, 0.52), (torch.float32, 0.27)])
def test_int8_entries_are_about_half_of_bf16_and_a_quarter_of_fp32(dtype, bound):
    kv = make_kv(2, layers=4, heads=2, n_tokens=256, head_dim=64, dtype=dtype)
    exact = len(serialize.dumps(key(), kv))
    small = len(serialize.dumps(key(), kv, "int8"))
    assert small / exact <= bound


def test_decoding_refuses_tensors_it_did_not_write():
    kv = make_kv(3)
    tensors = codec.encode(kv, "int8")
    bad = dict(tensors, keys_scale=tensors["keys_scale"][:, :, :, :-1])
    with pytest.raises(CorruptEntryError, match="keys_scale"):
        codec.decode(bad, "int8", torch.float32, list(kv.keys.shape))
    with pytest.raises(CorruptEntryError, match="expected"):
        codec.decode({"keys": kv.keys}, "int8", torch.float32, list(kv.keys.shape))
    with pytest.raises(ConfigError, match="kv_codec"):
        StoreConfig(kv_codec="fp4")


def test_codec_names_are_checked_once_with_one_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    sentence = ("StoreConfig.kv_codec must be 'none' or 'int8', got 'fp4'; pass kv_codec='int8' to halve disk and "
                "remote bytes (lossy), or 'none'.")
    with pytest.raises(ConfigError) as caught:
        StoreConfig(kv_codec="fp4")
    assert str(caught.value) == sentence
    with pytest.raises(ConfigError) as caught:
        codec.check_codec("fp4")
    assert str(caught.value) == sentence
    assert [codec.check_codec(name) for name in codec.CODECS] == ["none", "int8"]
    assert not codec.is_codec(["none"]) and not codec.is_codec(None)
    monkeypatch.setattr(codec, "CODECS", ("none",))  # the config asks the codec module, not a copy of its list
    with pytest.raises(ConfigError, match="must be 'none', got 'int8'"):
        StoreConfig(kv_codec="int8")


def test_requests_served_from_an_int8_disk_tier_stay_close_to_exact(tok, docs, tmp_path):
    model = tiny_model("llama", seed=5)
    store = StoreConfig(memory_bytes=0, disk_dir=tmp_path / "kv", kv_codec="int8")
    with BlockAttentionEngine(model, tok, store=store) as writer:
        exact = writer.prefill(docs, QUESTION, all_logits=True)  # cold: computed KV, written compressed
    with BlockAttentionEngine(model, tok, store=store) as reader:
        warm = reader.prefill(docs, QUESTION, all_logits=True)
        assert warm.stats.disk_hits == len(docs) + 1
        greedy = reader.generate(docs, QUESTION, max_new_tokens=16, stop_on_eos=False)
    err = (warm.logits - exact.logits).abs().max().item()
    spread = exact.logits.std().item()
    assert 0 < err <= 0.02 * spread, (err, spread)  # measured: 0.0006 at a spread of 0.16 (docs/benchmarks.md)
    assert torch.equal(warm.logits.argmax(-1), exact.logits.argmax(-1))
    with BlockAttentionEngine(model, tok, store=False) as uncached:
        assert greedy.token_ids == uncached.generate(docs, QUESTION, max_new_tokens=16, stop_on_eos=False).token_ids


def test_an_exact_reader_never_serves_a_lossy_entry(tok, docs, tmp_path):
    """kv_codec='none' means exact: an int8 entry is a miss for it (not dropped, not counted corrupt), it recomputes
    and writes its exact entry in the same slot, which an int8 reader serves as well."""
    model = tiny_model("llama", seed=5)
    lossy = StoreConfig(memory_bytes=0, disk_dir=tmp_path / "kv", kv_codec="int8")
    exact = StoreConfig(memory_bytes=0, disk_dir=tmp_path / "kv", kv_codec="none")
    with BlockAttentionEngine(model, tok, store=False) as uncached:
        want = uncached.prefill(docs, QUESTION, all_logits=True).logits
    with BlockAttentionEngine(model, tok, store=lossy) as writer:
        writer.prefill(docs, QUESTION)  # every block stored as int8
    with BlockAttentionEngine(model, tok, store=exact) as reader:
        first = reader.prefill(docs, QUESTION, all_logits=True)
        assert first.stats.disk_hits == 0 and first.stats.misses == len(docs) + 1
        assert torch.equal(first.logits, want)  # exact, not within 5.8e-4
        assert reader.store.stats().corrupt_dropped == 0
        second = reader.prefill(docs, QUESTION, all_logits=True)  # its own exact entries now
        assert second.stats.disk_hits == len(docs) + 1 and torch.equal(second.logits, want)
    with BlockAttentionEngine(model, tok, store=lossy) as writer:  # an int8 reader serves exact entries
        again = writer.prefill(docs, QUESTION, all_logits=True)
        assert again.stats.disk_hits == len(docs) + 1 and torch.equal(again.logits, want)


def test_loads_refuses_a_lossy_entry_only_when_asked_for_exact():
    kv = make_kv(4)
    data = serialize.dumps(key(), kv, "int8")
    assert serialize.loads(key(), data).keys.shape == kv.keys.shape
    with pytest.raises(serialize.CodecRefused, match="int8"):
        serialize.loads(key(), data, exact=True)
    dropped = []
    assert serialize.loads_or_drop(key(), data, lambda k, why: dropped.append(why), exact=True) is None
    assert not dropped
    assert torch.equal(serialize.loads(key(), serialize.dumps(key(), kv), exact=True).keys, kv.keys)
