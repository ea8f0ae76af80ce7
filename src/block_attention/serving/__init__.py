"""Serving: the batch scheduler (:mod:`.batching`) and an OpenAI-compatible HTTP server over it.

The server: send documents with the request, get their KV reused.

Contract:

* ``POST /v1/chat/completions`` and ``POST /v1/completions`` take the OpenAI request schema plus ``documents``
  (a list of ``{doc_id?, title?, text}``; OpenAI clients pass it through ``extra_body``) and ``mode``
  (``"block"``, the default, or ``"full"``). Each document is one block whose KV is cached under its ``doc_id``
  (or a digest of its text) in every tier of the engine's store, the shared Redis tier included. ``messages``:
  system/developer -> instruction, earlier turns -> history, last user message -> question. ``stream: true``
  answers with server-sent events in the OpenAI chunk format ending with ``data: [DONE]``. Responses carry
  ``usage`` and a ``block_attention`` object (hits per tier, misses, TTFT, queue time, dropped ids).
* ``temperature`` absent or 0 decodes greedily (same answer as the in-process engine); ``stop``,
  ``max_tokens``/``max_completion_tokens``, ``top_p`` and ``seed`` are honoured. ``n > 1``, ``logprobs`` and
  tools are refused with 400.
* ``GET /v1/models``, ``GET /health`` (never needs a key), ``GET /metrics`` (Prometheus text format).
* Errors are OpenAI-style JSON: 400 malformed body / bad parameter / context too long, 401 missing or wrong key,
  404 unknown route, 413 oversized body, 500 a bug. A refused request never reaches the KV cache.
* Concurrency: one model thread owns the model. Requests are planned and prefilled one by one in arrival order,
  then decoded together: one batched forward per decode step for up to ``max_batch`` requests (default 8;
  ``--max-batch 1`` answers one request at a time); see :mod:`block_attention.serving.batching` and
  :mod:`block_attention.serving.worker`. A client that disconnects stops its generation at the next step.
* ``create_app`` touches nothing global; ``ServerThread`` serves an app in the background (tests, notebooks).
"""

from __future__ import annotations

from block_attention.core.lazy import lazy_exports

# Lazy: the scheduler (``.batching``) needs no web framework; the server names load FastAPI on first use.
_EXPORTS = {
    "create_app": "app", "RequestRejected": "openai_format", "ServerThread": "runner", "run_server": "runner",
    "ServerSettings": "settings", "BatchScheduler": "batching",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
