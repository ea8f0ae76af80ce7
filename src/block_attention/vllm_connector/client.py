"""Client side of block attention on vLLM: request bodies rendered by the engine's own prompt builder.

* :func:`plan` renders ``(blocks, question)`` with :class:`~block_attention.core.prompt.PromptBuilder` (the exact token
  layout the engine uses: prefix block, one block per passage, final block) into a :class:`Plan`.
* :meth:`Plan.serve_body` is the body of a ``/v1/completions`` request (token-id prompt, ``kv_transfer_params`` and
  ``cache_salt``); :meth:`Plan.encode_bodies` are the prefill-only requests (``max_tokens=1``) that make vLLM
  encode blocks alone and store them. With the OpenAI client pass everything but ``prompt`` as ``extra_body``
  (:func:`extra_body`).
* :func:`complete` runs one request over HTTP: ``encode="missing"`` (default) sends the serve request, and when
  the server reports missing blocks (that answer was computed by vLLM with full attention: a miss) encodes them so
  the next request hits; ``"first"`` encodes every block before serving (always block attention; cached blocks
  cost one prefill each); ``"never"`` only serves.
* :class:`VLLMBlockClient` is all of that as one object for callers that hold documents and a question (the
  LangChain and LlamaIndex integrations' ``BlockAttentionVLLM``): it loads the served checkpoint's tokenizer once
  (thread-safe), renders, sends, and returns a :class:`Completion` (text, finish reason, what the connector did).

Needs only the tokenizer of the served checkpoint and this package (no vLLM, no torch model).
"""

from __future__ import annotations

import json
import os
import threading
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

from block_attention.core.blocks import Block, as_blocks, check_unique_ids
from block_attention.core.config import GenerationConfig
from block_attention.core.layout import PromptLayout
from block_attention.core.prompt import Message, PromptBuilder
from block_attention.vllm_connector.protocol import PARAM, BlockRef, BlockRequest, cache_salt


@dataclass(frozen=True)
class Plan:
    """One request's token layout and its block structure."""

    layout: PromptLayout
    request: BlockRequest | None  # None: no cacheable block (a plain request)

    def serve_body(self, **sampling: Any) -> dict[str, Any]:
        """``/v1/completions`` body of the request (``sampling``: max_tokens, temperature, logprobs, ...)."""
        body: dict[str, Any] = {"prompt": self.layout.input_ids(), **sampling}
        if self.request is not None:
            body["kv_transfer_params"] = self.request.to_params()
            body["cache_salt"] = cache_salt(self.request)
        return body

    def encode_bodies(self, doc_ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Prefill-only bodies that store blocks (all, or those in ``doc_ids``), each encoded alone."""
        wanted = None if doc_ids is None else set(doc_ids)
        return [{"prompt": list(b.token_ids), "max_tokens": 1,
                 "kv_transfer_params": BlockRequest("encode", (BlockRef(b.doc_id, len(b.token_ids)),)).to_params()}
                for b in self.layout.blocks if wanted is None or b.doc_id in wanted]


def plan(builder: PromptBuilder, blocks: Sequence[Block | str], question: str, *, system: str | None = None,
         history: Sequence[Message] = ()) -> Plan:
    """The request's layout, rendered exactly as :class:`~block_attention.BlockAttentionEngine` renders it."""
    blocks = as_blocks(blocks)
    check_unique_ids(blocks)
    layout = builder.layout(blocks, question, system, history)
    refs = tuple(BlockRef(b.doc_id, len(b.token_ids)) for b in layout.blocks)
    return Plan(layout, BlockRequest("serve", refs) if refs else None)


def extra_body(body: dict[str, Any]) -> dict[str, Any]:
    """The fields of ``body`` the OpenAI client passes as ``extra_body`` (all but ``prompt`` and ``model``)."""
    return {k: v for k, v in body.items() if k not in ("prompt", "model")}


def outcome(response: dict[str, Any]) -> dict[str, Any]:
    """What the connector did for a response (``{}`` when it reported nothing)."""
    params = response.get("kv_transfer_params") or {}
    return dict(params.get(PARAM) or {})


def post(base_url: str, body: dict[str, Any], timeout_s: float = 600.0) -> dict[str, Any]:
    """POST ``body`` to ``{base_url}/v1/completions`` and return the JSON response."""
    req = urllib.request.Request(base_url.rstrip("/") + "/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310 - the caller's own server URL
        return json.loads(resp.read())


def complete(base_url: str, model: str, request: Plan, *, encode: Literal["missing", "first", "never"] = "missing",
             timeout_s: float = 600.0, **sampling: Any) -> dict[str, Any]:
    """Serve ``request`` from a vLLM server running the connector (see the module docstring for ``encode``)."""
    def send(body: dict[str, Any]) -> dict[str, Any]:
        return post(base_url, {"model": model, **body}, timeout_s)

    def encode_all(doc_ids: Sequence[str] | None) -> None:
        bodies = request.encode_bodies(doc_ids)
        with ThreadPoolExecutor(max_workers=max(1, min(8, len(bodies)))) as pool:  # vLLM batches them
            list(pool.map(send, bodies))

    if encode == "first" and request.request is not None:
        encode_all(None)
    response = send(request.serve_body(**sampling))
    missing = outcome(response).get("missing")
    if encode == "missing" and missing:
        encode_all(missing)
    return response


Encode = Literal["missing", "first", "never"]


@dataclass(frozen=True)
class Completion:
    """One answer from the server: its text, why it stopped, and the connector's outcome (see :func:`outcome`)."""

    text: str
    finish_reason: str | None
    outcome: dict[str, Any]
    usage: dict[str, Any]


def sampling_fields(generation: GenerationConfig) -> dict[str, Any]:
    """The ``/v1/completions`` sampling fields that ask vLLM for what ``generation`` asks the engine for."""
    fields: dict[str, Any] = {"max_tokens": generation.max_new_tokens, "stop": list(generation.stop) or None,
                              "ignore_eos": not generation.stop_on_eos}
    if generation.do_sample:
        fields.update(temperature=generation.temperature, top_p=generation.top_p, seed=generation.seed,
                      top_k=generation.top_k or None)
    else:
        fields["temperature"] = 0.0
    return fields


@dataclass
class VLLMBlockClient:
    """A vLLM server running the connector: ``base_url``, its served ``model`` name, and ``tokenizer`` (the served
    checkpoint folder, whose tokenizer renders prompts exactly as the engine does). ``encode`` as in
    :func:`complete`. Safe to share between threads (the tokenizer loads once, under a lock)."""

    base_url: str
    model: str
    tokenizer: str | os.PathLike[str]
    encode: Encode = "missing"
    timeout_s: float = 600.0
    _builder: PromptBuilder | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.encode not in ("missing", "first", "never"):
            raise ValueError(f"encode must be 'missing', 'first' or 'never', got {self.encode!r}.")

    @property
    def builder(self) -> PromptBuilder:
        with self._lock:
            if self._builder is None:
                from transformers import AutoTokenizer

                self._builder = PromptBuilder(AutoTokenizer.from_pretrained(os.fspath(self.tokenizer)))
            return self._builder

    def complete(self, blocks: Sequence[Block | str], question: str, *, system: str | None = None,
                 history: Sequence[Message] = (), mode: Literal["block", "full"] = "block",
                 **sampling: Any) -> Completion:
        """Answer ``question`` over ``blocks`` (``mode="full"``: the same tokens as one plain prompt, computed by
        vLLM with full attention). ``sampling``: ``/v1/completions`` fields (max_tokens, temperature, top_p, top_k,
        seed, stop)."""
        if mode not in ("block", "full"):
            raise ValueError(f"mode must be 'block' or 'full', got {mode!r}.")
        request = plan(self.builder, blocks, question, system=system, history=history)
        if mode == "full":
            request = Plan(request.layout, None)
        reply = complete(self.base_url, self.model, request, encode=self.encode, timeout_s=self.timeout_s,
                         **{k: v for k, v in sampling.items() if v is not None})
        choice = reply["choices"][0]
        return Completion(choice.get("text") or "", choice.get("finish_reason"), outcome(reply),
                          dict(reply.get("usage") or {}))
