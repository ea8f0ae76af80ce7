"""Translating between the OpenAI wire format and the engine: requests in, responses, stream chunks and errors out.

* :func:`chat_request` / :func:`completion_request` turn a validated body into an :class:`EngineRequest`:
  ``documents`` become blocks keyed by ``doc_id`` (or a digest of the text); system and developer messages
  become the instruction, earlier user/assistant turns the history, and the last message (which must be the
  user's) the question (:func:`block_attention.frameworks.chat.split_chat`). Decoding settings follow the
  frameworks' one rule (:func:`block_attention.frameworks.options.sampling_from`): ``temperature`` absent or ``0``
  means greedy decoding (deterministic answers); ``temperature > 0`` samples, reproducibly with ``seed``.
* Responses carry ``usage`` and a ``block_attention`` object (mode, hits and misses per tier, TTFT, queue time,
  dropped doc ids, ``final_reused`` for an exact repeat) next to the standard fields; the last stream chunk
  carries the same object.
* :class:`RequestRejected` is the one error type of the routes: it knows its HTTP status and renders as an
  OpenAI-style ``{"error": {"message", "type", "param", "code"}}`` body.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from block_attention.core.blocks import Block
from block_attention.core.config import GenerationConfig
from block_attention.core.errors import InvalidRequestError
from block_attention.engine.stages import Generation, RequestStats
from block_attention.frameworks.chat import ChatShapeError, split_chat
from block_attention.frameworks.options import sampling_from

from .schema import ChatCompletionRequest, CompletionRequest, _Common, unsupported_fields
from .settings import ServerSettings

_FINISH = {"eos": "stop", "stop": "stop", "length": "length"}
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}  # tool: None


class RequestRejected(InvalidRequestError):
    """A request the server refuses, with its HTTP status and OpenAI error fields."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return error_body(str(self), self.type, self.param, self.code)


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


@dataclass(frozen=True)
class EngineRequest:
    """One request as the engine takes it. ``blocks is None`` means "no documents field" (may retrieve)."""

    blocks: list[Block] | None
    question: str
    system: str | None = None
    history: tuple[dict[str, str], ...] = ()
    mode: str | None = None
    generation: GenerationConfig = field(default_factory=GenerationConfig)


def _generation(req: _Common, settings: ServerSettings, max_tokens: int | None) -> GenerationConfig:
    unsupported = unsupported_fields(req)
    if unsupported is not None:
        raise RequestRejected(400, f"The field {unsupported!r} is not supported by this server; remove it (one "
                                   "choice, no log-probabilities, no tools).", param=unsupported)
    return sampling_from(max_new_tokens=max_tokens or settings.default_max_tokens, temperature=req.temperature,
                         top_p=req.top_p, seed=req.seed, stop=req.stop_strings())


def _blocks(req: _Common) -> list[Block] | None:
    if req.documents is None:
        return None
    return [Block(d.text, doc_id=d.doc_id, title=d.title) for d in req.documents]


def chat_request(req: ChatCompletionRequest, settings: ServerSettings) -> EngineRequest:
    pairs = [(_ROLES.get(message.role), message.text()) for message in req.messages]
    try:
        chat = split_chat(pairs, require_question=True)
    except ChatShapeError as error:
        role = req.messages[error.index].role
        if error.problem == "empty_question":
            raise RequestRejected(400, "The last user message is empty; send the question as its content.",
                                  param="messages") from None
        if error.problem == "unsupported_role":
            raise RequestRejected(400, f"Messages with role {role!r} are not supported; send system, user "
                                       "and assistant messages only.", param="messages") from None
        raise RequestRejected(400, f"The last message must come from the user (it is the question), got role "
                                   f"{role!r}; end `messages` with a user message.", param="messages") from None
    max_tokens = req.max_completion_tokens or req.max_tokens
    return EngineRequest(_blocks(req), chat.question, chat.system or None, chat.history, req.mode,
                         _generation(req, settings, max_tokens))


def completion_request(req: CompletionRequest, settings: ServerSettings) -> EngineRequest:
    question = req.prompt_text()
    if not question.strip():
        raise RequestRejected(400, "The prompt is empty; send the question as `prompt`.", param="prompt")
    return EngineRequest(_blocks(req), question, None, (), req.mode, _generation(req, settings, req.max_tokens))


# -- responses -----------------------------------------------------------------------------------------------


def new_id(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex}"


def usage(stats: RequestStats) -> dict[str, int]:
    return {"prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.new_tokens,
            "total_tokens": stats.prompt_tokens + stats.new_tokens}


def block_attention_info(stats: RequestStats, queue_s: float, doc_ids: list[str]) -> dict[str, Any]:
    """The ``block_attention`` object of a response: what the KV cache gave this request."""
    return {
        "mode": stats.mode, "blocks": stats.blocks, "documents": doc_ids,
        "hits": stats.hits, "hits_by_tier": dict(stats.hits_by_tier), "misses": stats.misses,
        "encoded_tokens": stats.encoded_tokens, "dropped": list(stats.dropped),
        "final_reused": stats.final_reused, "ttft_ms": round(stats.ttft_s * 1000, 3),
        "queue_ms": round(queue_s * 1000, 3), "total_ms": round(stats.total_s * 1000, 3),
    }


def finish_reason(generation: Generation) -> str:
    return _FINISH.get(generation.finish_reason, "stop")


def chat_response(rid: str, model: str, generation: Generation, info: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": generation.text},
                     "logprobs": None, "finish_reason": finish_reason(generation)}],
        "usage": usage(generation.stats), "block_attention": info,
    }


def completion_response(rid: str, model: str, generation: Generation, info: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "text": generation.text, "logprobs": None,
                     "finish_reason": finish_reason(generation)}],
        "usage": usage(generation.stats), "block_attention": info,
    }


@dataclass(frozen=True)
class ChunkMaker:
    """Builds the stream chunks of one response (chat or text completion)."""

    rid: str
    model: str
    chat: bool
    created: int = field(default_factory=lambda: int(time.time()))

    def _base(self) -> dict[str, Any]:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return {"id": self.rid, "object": kind, "created": self.created, "model": self.model}

    def _choice(self, text: str | None, finish: str | None, role: bool = False) -> dict[str, Any]:
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
            if text is not None:
                delta["content"] = text
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}

    def start(self) -> dict[str, Any] | None:
        """The opening chunk (chat: the assistant role), or None for text completions."""
        return {**self._base(), "choices": [self._choice(None, None, role=True)]} if self.chat else None

    def piece(self, text: str) -> dict[str, Any]:
        return {**self._base(), "choices": [self._choice(text, None)]}

    def finish(self, generation: Generation, info: dict[str, Any]) -> dict[str, Any]:
        return {**self._base(), "choices": [self._choice(None if self.chat else "", finish_reason(generation))],
                "block_attention": info}

    def usage(self, generation: Generation) -> dict[str, Any]:
        return {**self._base(), "choices": [], "usage": usage(generation.stats)}
