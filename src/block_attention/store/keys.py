"""Cache keys: model fingerprint + document id + hash of the block's exact token ids.

A changed document changes its token hash; a changed model (weights, dtype, tokenizer, rotary config, block
template or marker) changes the fingerprint. Either way the old entry can never be hit again.
"""

from __future__ import annotations

import hashlib
import sys
from array import array
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NewType

from block_attention.core.errors import InvalidRequestError

FORMAT_VERSION = 1  # bump when the meaning of stored KV changes

Fingerprint = NewType("Fingerprint", str)  # digest of everything but the tokens that shapes a block's KV
TokenHash = NewType("TokenHash", str)  # digest of a block's exact token ids


def token_hash(token_ids: Sequence[int]) -> TokenHash:
    """Hash of the exact token ids of a block (its content, as the model sees it)."""
    ids = array("q", token_ids)  # int64, hashed little-endian on every machine (replicas share keys)
    if sys.byteorder == "big":
        ids.byteswap()
    return TokenHash(hashlib.blake2b(ids.tobytes(), digest_size=16).hexdigest())


def fingerprint(parts: Mapping[str, Any]) -> Fingerprint:
    """Stable digest of everything that determines a block's KV besides its tokens."""
    payload = json.dumps({"format": FORMAT_VERSION, **parts}, sort_keys=True, default=str)
    return Fingerprint(hashlib.blake2b(payload.encode("utf-8"), digest_size=16).hexdigest())


@dataclass(frozen=True)
class CacheKey:
    """Where a block's KV is cached: model fingerprint + caller's doc id + hash of the block's exact tokens."""

    fingerprint: Fingerprint
    doc_id: str
    content_hash: TokenHash

    def __post_init__(self) -> None:
        for name in ("fingerprint", "doc_id", "content_hash"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise InvalidRequestError(f"CacheKey.{name} must be a str, got {type(value).__name__}.")
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidRequestError(
                    f"CacheKey.{name} {value!r} contains a lone surrogate and cannot be stored; pass valid Unicode "
                    "text (decode with errors='replace')."
                ) from None

    def as_str(self) -> str:
        """Flat string form (the disk tier's key). ``doc_id`` goes last-but-one, JSON-quoted, so any id is safe."""
        return f"v{FORMAT_VERSION}|{self.fingerprint}|{json.dumps(self.doc_id)}|{self.content_hash}"
