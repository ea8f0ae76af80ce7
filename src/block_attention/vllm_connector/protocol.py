"""The block structure a request carries to vLLM, in ``kv_transfer_params["block_attention"]``.

Wire form (JSON, version 1)::

    {"block_attention": {"v": 1, "role": "serve" | "encode",
                         "blocks": [{"id": DOC_ID, "n": N_TOKENS}, ...]}}

* ``role="serve"``: the prompt is ``[block 0][block 1]...[block m-1][final block]``; ``blocks`` lists the cacheable
  blocks in prompt order (the prefix block first when there is one) and their token counts. The tokens after the
  last block are the final block, which vLLM prefills.
* ``role="encode"``: the prompt is exactly one block (``blocks`` has one entry whose ``n`` is the prompt length); vLLM
  computes it alone at positions ``0..n-1`` and the connector stores its KV.

Nothing the client sends is trusted for content: cache keys hash the request's own prompt token ids (sliced by the
counts), so a wrong count or id can only cause a miss or store KV under a useless key, never serve wrong KV.
:func:`parse` returns None for a request without block structure and raises :class:`InvalidRequestError` (with the
fix) for a malformed one; the connector treats both as "not a block-attention request".

:func:`cache_salt` is vLLM's ``cache_salt`` for a serve request: its prefix-cache blocks then never mix with those
of plain requests (whose KV of the same tokens is full attention, not block attention) nor with another layout.
This module is pure Python (no vLLM, no torch): the client helper and the connector share it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from block_attention.core.checks import is_int
from block_attention.core.errors import InvalidRequestError

PARAM = "block_attention"  # the key inside kv_transfer_params
VERSION = 1
Role = Literal["serve", "encode"]


@dataclass(frozen=True)
class BlockRef:
    """One cacheable block of a request: the caller's doc id and its token count in the prompt."""

    doc_id: str
    n_tokens: int


@dataclass(frozen=True)
class BlockRequest:
    """The parsed block structure of one request."""

    role: Role
    blocks: tuple[BlockRef, ...]

    @property
    def context_len(self) -> int:
        """Tokens covered by the cacheable blocks (the final block starts here)."""
        return sum(b.n_tokens for b in self.blocks)

    def spans(self) -> list[tuple[BlockRef, int, int]]:
        """``(block, start, end)`` of every block in prompt positions."""
        out, start = [], 0
        for block in self.blocks:
            out.append((block, start, start + block.n_tokens))
            start += block.n_tokens
        return out

    def to_params(self) -> dict[str, Any]:
        """The ``kv_transfer_params`` value that carries this structure."""
        return {PARAM: {"v": VERSION, "role": self.role,
                        "blocks": [{"id": b.doc_id, "n": b.n_tokens} for b in self.blocks]}}


def parse(kv_transfer_params: Mapping[str, Any] | None, prompt_len: int) -> BlockRequest | None:
    """The block structure of a request whose prompt has ``prompt_len`` tokens (None when it carries none)."""
    if not kv_transfer_params or PARAM not in kv_transfer_params:
        return None
    raw = kv_transfer_params[PARAM]
    if not isinstance(raw, Mapping) or raw.get("v") != VERSION:
        raise InvalidRequestError(f"kv_transfer_params[{PARAM!r}] must be an object with 'v': {VERSION}; build it "
                                  "with block_attention.vllm_connector.client.")
    role = raw.get("role")
    if role not in ("serve", "encode"):
        raise InvalidRequestError(f"kv_transfer_params[{PARAM!r}]['role'] must be 'serve' or 'encode', got {role!r}.")
    items = raw.get("blocks")
    if not isinstance(items, Sequence) or isinstance(items, (str, bytes)) or not items:
        raise InvalidRequestError(f"kv_transfer_params[{PARAM!r}]['blocks'] must be a non-empty list of "
                                  "{'id': str, 'n': int}.")
    blocks = []
    for item in items:
        doc_id, n = (item.get("id"), item.get("n")) if isinstance(item, Mapping) else (None, None)
        if not isinstance(doc_id, str) or not is_int(n) or n < 1:
            raise InvalidRequestError(f"Each block must be {{'id': str, 'n': positive int}}, got {item!r}.")
        blocks.append(BlockRef(doc_id, n))
    request = BlockRequest(role, tuple(blocks))
    if role == "encode" and (len(blocks) != 1 or blocks[0].n_tokens != prompt_len):
        raise InvalidRequestError(f"An encode request carries exactly one block spanning its whole prompt "
                                  f"({prompt_len} tokens); got {[(b.doc_id, b.n_tokens) for b in blocks]}.")
    if role == "serve" and request.context_len >= prompt_len:
        raise InvalidRequestError(f"The blocks cover {request.context_len} tokens but the prompt has {prompt_len}; "
                                  "a serve request needs a non-empty final block after them.")
    return request


def cache_salt(request: BlockRequest) -> str:
    """vLLM ``cache_salt`` of a serve request: a digest of its block layout (ids and token counts)."""
    payload = json.dumps([[b.doc_id, b.n_tokens] for b in request.blocks]).encode("utf-8")
    return "block-attention-v1:" + hashlib.blake2b(payload, digest_size=16).hexdigest()
