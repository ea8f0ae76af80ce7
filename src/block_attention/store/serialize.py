"""Byte format of one stored block KV entry (the disk tier's values). Never pickle.

Layout::

    b"BAKV" | layout version (u16 LE) | payload length (u64 LE) | xxh3-128(payload) | payload

``payload`` is a safetensors blob with the tensors of the entry's codec (:mod:`.codec`: ``"keys"`` and
``"values"`` uncompressed, or int8 tensors with their scales) and string metadata ``format_version, fingerprint,
doc_id, content_hash, dtype, shape`` and ``codec`` (absent means ``"none"``, the original format). :func:`loads` trusts nothing: wrong magic or
version, truncation, a digest mismatch, a safetensors parse failure, metadata naming another cache key, or tensors
whose dtype/shape disagree with the metadata all raise :class:`~block_attention.core.errors.CorruptEntryError` with the
reason. ``loads(..., exact=True)`` (a tier configured with ``kv_codec="none"``) raises :class:`CodecRefused` for
a lossy entry instead of decoding it: for an exact reader such an entry is a miss (not corrupt; it is recomputed and
overwritten with the exact entry, which a lossy reader serves too). Tensors come back on CPU, contiguous, owning their memory; every dtype (bf16 included) round-trips
bitwise.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable

import torch
import xxhash
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from block_attention.core.errors import CorruptEntryError
from block_attention.core.kv import BlockKV
from block_attention.store.codec import CODECS, Codec, decode, encode, is_codec, names
from block_attention.store.keys import FORMAT_VERSION, CacheKey

MAGIC = b"BAKV"
LAYOUT_VERSION = 2  # bump when this byte layout changes (2: xxh3-128 checksum instead of blake2b-256)
_DIGEST_SIZE = 16
_PREFIX = struct.Struct("<4sHQ")  # magic, layout version, payload length
HEADER_SIZE = _PREFIX.size + _DIGEST_SIZE


class CodecRefused(Exception):
    """A valid entry in a lossy codec, read by an exact reader: a miss, not corruption."""


def dumps(key: CacheKey, kv: BlockKV, codec: Codec = "none") -> bytes:
    """Serialize ``kv`` (any device) for ``key`` with ``codec``; the tensors themselves are not modified."""
    metadata = {
        "format_version": str(FORMAT_VERSION),
        "fingerprint": key.fingerprint,
        "doc_id": key.doc_id,
        "content_hash": key.content_hash,
        "dtype": _dtype_name(kv.keys.dtype),
        "shape": json.dumps(list(kv.keys.shape)),
    }
    if codec != "none":
        metadata["codec"] = codec
    payload = st_save(encode(kv, codec), metadata=metadata)
    prefix = _PREFIX.pack(MAGIC, LAYOUT_VERSION, len(payload))
    return prefix + payload_digest(payload) + payload


def loads(key: CacheKey, data: bytes, *, exact: bool = False) -> BlockKV:
    """Parse and validate an entry read from the slot of ``key``; raise ``CorruptEntryError`` on any mismatch, and
    :class:`CodecRefused` for a lossy entry when ``exact``."""
    payload = _check_envelope(data)
    metadata = _read_metadata(payload)
    _check_metadata(key, metadata)
    codec = metadata.get("codec", "none")
    if not is_codec(codec):
        raise CorruptEntryError(f"entry uses codec {codec!r}; this library reads {list(CODECS)}")
    if exact and codec != "none":
        raise CodecRefused(f"entry is stored with the lossy codec {codec!r} and this reader is exact")
    tensors = _read_tensors(payload)
    if codec == "none":
        return _check_tensors(tensors, metadata)
    return decode(tensors, codec, _dtype_of(metadata.get("dtype")), _shape_of(metadata.get("shape")))


def loads_or_drop(key: CacheKey, data: bytes | None, drop: Callable[[CacheKey, str], None], *,
                  exact: bool = False) -> BlockKV | None:
    """:func:`loads` for a tier's ``get``: ``None`` for no data, for a lossy entry when ``exact`` (kept: another
    reader may serve it), and for bad data after ``drop(key, reason)``."""
    if data is None:
        return None
    try:
        return loads(key, data, exact=exact)
    except CodecRefused:
        return None
    except CorruptEntryError as exc:
        drop(key, str(exc))
        return None


def _dtype_of(name: str | None) -> torch.dtype:
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise CorruptEntryError(f"entry metadata names dtype {name!r}, not a floating point torch dtype")
    return dtype


def _shape_of(text: str | None) -> list[int]:
    try:
        shape = json.loads(text or "")
    except ValueError:
        shape = None
    if not (isinstance(shape, list) and len(shape) == 4 and all(isinstance(d, int) and d > 0 for d in shape)):
        raise CorruptEntryError(f"entry metadata shape {text!r} is not [layers, heads, tokens, dim]")
    return shape


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def payload_digest(payload: bytes | memoryview) -> bytes:
    """Checksum of an entry's payload: xxh3-128 (detects corruption at memory speed; not a keyed MAC: whoever can
    write the cache directory can also rewrite checksums, which is why every entry is still validated in full)."""
    return xxhash.xxh3_128_digest(payload)


def _check_envelope(data: bytes) -> memoryview:
    if not isinstance(data, (bytes, bytearray)):
        raise CorruptEntryError(f"entry is a {type(data).__name__}, not bytes")
    if len(data) < HEADER_SIZE:
        raise CorruptEntryError(f"entry is truncated: {len(data)} bytes is shorter than the {HEADER_SIZE}-byte header")
    magic, version, length = _PREFIX.unpack_from(data, 0)
    if magic != MAGIC:
        raise CorruptEntryError(f"entry has wrong magic bytes {magic!r} (expected {MAGIC!r})")
    if version != LAYOUT_VERSION:
        raise CorruptEntryError(f"entry has layout version {version}, this library reads version {LAYOUT_VERSION}")
    payload = memoryview(data)[HEADER_SIZE:]
    if len(payload) != length:
        raise CorruptEntryError(f"entry is truncated or padded: payload has {len(payload)} bytes, header says {length}")
    if payload_digest(payload) != bytes(data[_PREFIX.size : HEADER_SIZE]):
        raise CorruptEntryError("entry digest mismatch: the stored bytes were altered")
    return payload


def _read_metadata(payload: memoryview) -> dict[str, str]:
    """Read the safetensors JSON header ourselves: ``safetensors.torch.load`` does not return metadata."""
    try:
        (header_len,) = struct.unpack_from("<Q", payload, 0)
        header = json.loads(bytes(payload[8 : 8 + header_len]).decode("utf-8"))
        metadata = header["__metadata__"]
    except (struct.error, ValueError, KeyError, TypeError) as exc:
        raise CorruptEntryError(f"entry has an unreadable safetensors header ({exc!r})") from None
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CorruptEntryError("entry metadata is not a mapping of strings")
    return metadata


def _check_metadata(key: CacheKey, metadata: dict[str, str]) -> None:
    expected = {
        "format_version": str(FORMAT_VERSION),
        "fingerprint": key.fingerprint,
        "doc_id": key.doc_id,
        "content_hash": key.content_hash,
    }
    for name, want in expected.items():
        got = metadata.get(name)
        if got != want:
            raise CorruptEntryError(f"entry metadata {name}={got!r} does not match the requested key ({want!r})")


def _read_tensors(payload: memoryview) -> dict[str, torch.Tensor]:
    try:
        tensors = st_load(bytes(payload))
    except Exception as exc:  # safetensors raises its own SafetensorError and assorted others
        raise CorruptEntryError(f"entry payload failed to parse as safetensors ({exc})") from None
    return tensors


def _check_tensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> BlockKV:
    if set(tensors) != names("none"):
        raise CorruptEntryError(f"entry holds tensors {sorted(tensors)}, expected ['keys', 'values']")
    keys, values = tensors["keys"], tensors["values"]
    shape_text = metadata.get("shape")
    for name, tensor in (("keys", keys), ("values", values)):
        if _dtype_name(tensor.dtype) != metadata.get("dtype"):
            want = metadata.get("dtype")
            raise CorruptEntryError(f"entry {name} dtype {tensor.dtype} does not match metadata {want!r}")
        if json.dumps(list(tensor.shape)) != shape_text:
            raise CorruptEntryError(f"entry {name} shape {list(tensor.shape)} does not match metadata {shape_text!r}")
    if keys.dim() != 4:
        raise CorruptEntryError(f"entry tensors have {keys.dim()} dimensions, expected 4 [layers, heads, tokens, dim]")
    return BlockKV(keys.contiguous(), values.contiguous())
