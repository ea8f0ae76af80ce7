"""serialize.dumps/loads: bitwise round trips, and every kind of damage or mismatch raises CorruptEntryError."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import save as st_save

from block_attention.core.errors import CorruptEntryError
from block_attention.core.kv import BlockKV
from block_attention.store import serialize
from block_attention.store.keys import FORMAT_VERSION, CacheKey
from block_attention.testing.kv import bitwise_equal, key, kv_bitwise_equal, make_kv


def _envelope(payload: bytes, *, magic: bytes = serialize.MAGIC, version: int = serialize.LAYOUT_VERSION) -> bytes:
    """A well-formed envelope (correct length and digest) around an arbitrary payload."""
    prefix = struct.pack("<4sHQ", magic, version, len(payload))
    return prefix + serialize.payload_digest(payload) + payload


def _payload(k: CacheKey, tensors: dict[str, torch.Tensor], **meta_overrides: str) -> bytes:
    t = tensors["keys"]
    metadata = {
        "format_version": str(FORMAT_VERSION),
        "fingerprint": k.fingerprint,
        "doc_id": k.doc_id,
        "content_hash": k.content_hash,
        "dtype": str(t.dtype).removeprefix("torch."),
        "shape": json.dumps(list(t.shape)),
    }
    metadata.update(meta_overrides)
    return st_save(tensors, metadata=metadata)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_round_trip_is_bitwise(dtype: torch.dtype) -> None:
    kv = make_kv(1, dtype=dtype)
    out = serialize.loads(key(), serialize.dumps(key(), kv))
    assert kv_bitwise_equal(out, kv)
    assert out.keys.device.type == "cpu" and out.keys.is_contiguous() and out.values.is_contiguous()


def test_round_trip_preserves_special_values() -> None:
    kv = make_kv(2, dtype=torch.bfloat16)
    kv.keys[0, 0, 0, :4] = torch.tensor([float("nan"), float("inf"), -0.0, 1e-40])
    assert kv_bitwise_equal(serialize.loads(key(), serialize.dumps(key(), kv)), kv)


def test_non_contiguous_and_shared_storage_inputs_round_trip() -> None:
    base = torch.randn(2, 2, 2, 8, 16, generator=torch.Generator().manual_seed(3))
    shared = BlockKV(base[0], base[1])  # keys and values views of one storage
    transposed = BlockKV(base[0].transpose(2, 3).contiguous().transpose(2, 3), base[1])  # non-contiguous keys
    for kv in (shared, transposed):
        out = serialize.loads(key(), serialize.dumps(key(), kv))
        assert bitwise_equal(out.keys, kv.keys) and bitwise_equal(out.values, kv.values)


def test_dumps_does_not_modify_input() -> None:
    kv = make_kv(4)
    before = kv.keys.clone(), kv.values.clone()
    serialize.dumps(key(), kv)
    assert bitwise_equal(kv.keys, before[0]) and bitwise_equal(kv.values, before[1])


def test_unusual_doc_ids_round_trip() -> None:
    k = CacheKey("fp", 'naïve | "doc" \n 文書', "h")
    assert kv_bitwise_equal(serialize.loads(k, serialize.dumps(k, make_kv(5))), make_kv(5))


def test_format_starts_with_magic_and_is_not_pickle() -> None:
    data = serialize.dumps(key(), make_kv())
    assert data[:4] == b"BAKV"
    assert data[0] != 0x80  # pickle protocol opcode


def _corrupt(reason_fragment: str, k: CacheKey, data: bytes) -> None:
    with pytest.raises(CorruptEntryError, match=reason_fragment):
        serialize.loads(k, data)


def test_wrong_magic() -> None:
    data = serialize.dumps(key(), make_kv())
    _corrupt("magic", key(), b"XXXX" + data[4:])


def test_wrong_layout_version() -> None:
    payload = serialize.dumps(key(), make_kv())[serialize.HEADER_SIZE :]
    _corrupt("layout version", key(), _envelope(payload, version=serialize.LAYOUT_VERSION + 1))


@pytest.mark.parametrize("cut", [1, 100, "header", "empty"])
def test_truncation(cut: int | str) -> None:
    data = serialize.dumps(key(), make_kv())
    if isinstance(cut, str):
        data = {"header": data[: serialize.HEADER_SIZE - 1], "empty": b""}[cut]
    else:
        data = data[:-cut]
    _corrupt("truncated", key(), data)


def test_padding_is_detected() -> None:
    _corrupt("padded", key(), serialize.dumps(key(), make_kv()) + b"\0")


@pytest.mark.parametrize("where", ["digest", "payload_start", "middle", "last"])
def test_flipped_byte(where: str) -> None:
    data = bytearray(serialize.dumps(key(), make_kv()))
    pos = {"digest": 20, "payload_start": serialize.HEADER_SIZE, "middle": len(data) // 2, "last": len(data) - 1}[where]
    data[pos] ^= 0x01
    _corrupt("digest mismatch", key(), bytes(data))


@pytest.mark.parametrize(
    "other",
    [key(fp="fp-b"), key(doc="doc-1"), key(content="hash-1")],
    ids=["fingerprint", "doc_id", "content_hash"],
)
def test_metadata_of_another_key(other: CacheKey) -> None:
    _corrupt("does not match the requested key", other, serialize.dumps(key(), make_kv()))


def test_other_format_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serialize, "FORMAT_VERSION", FORMAT_VERSION + 1)
    data = serialize.dumps(key(), make_kv())
    monkeypatch.undo()
    _corrupt("format_version", key(), data)


def test_safetensors_parse_failure() -> None:
    _corrupt("safetensors", key(), _envelope(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all"))
    good = _payload(key(), {"keys": make_kv().keys, "values": make_kv().values})
    header_len = struct.unpack_from("<Q", good)[0]
    _corrupt("safetensors", key(), _envelope(good[: 8 + header_len + 10]))  # valid header, data cut short


def test_shape_and_dtype_mismatch_with_metadata() -> None:
    kv = make_kv()
    tensors = {"keys": kv.keys, "values": kv.values}
    _corrupt("shape", key(), _envelope(_payload(key(), tensors, shape="[2, 2, 9, 16]")))
    _corrupt("dtype", key(), _envelope(_payload(key(), tensors, dtype="float16")))
    mixed = {"keys": kv.keys, "values": kv.values.to(torch.float16)}
    _corrupt("values dtype", key(), _envelope(_payload(key(), mixed)))
    ragged = {"keys": kv.keys, "values": kv.values[:, :, :4].contiguous()}
    _corrupt("values shape", key(), _envelope(_payload(key(), ragged)))


def test_wrong_tensor_set_or_rank() -> None:
    kv = make_kv()
    extra = {"keys": kv.keys, "values": kv.values, "evil": torch.zeros(1)}
    _corrupt("expected", key(), _envelope(_payload(key(), extra)))
    flat = {"keys": kv.keys.flatten(0, 1).contiguous(), "values": kv.values.flatten(0, 1).contiguous()}
    _corrupt("dimensions", key(), _envelope(_payload(key(), flat)))


def test_non_bytes_input() -> None:
    _corrupt("not bytes", key(), "BAKV")  # type: ignore[arg-type]
