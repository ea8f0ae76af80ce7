"""The FastAPI app: OpenAI-compatible routes over one :class:`~block_attention.engine.BlockAttentionEngine`.

``create_app(engine, settings, retriever=None)`` builds it; nothing global is touched (its metrics live in the
app's own registry), so a process may hold several. Routes: ``POST /v1/chat/completions``, ``POST
/v1/completions`` (JSON or server-sent events), ``GET /v1/models``, ``GET /health``, ``GET /metrics``. Errors
are OpenAI-style JSON with the matching 4xx/5xx status. Requests run on the model thread, their decode steps
batched with other concurrent requests' up to ``ServerSettings.max_batch`` (:mod:`block_attention.serving.worker`,
:mod:`block_attention.serving.batching`); a request is validated and planned before any header is sent, so a refused
request writes nothing to the KV cache.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from block_attention.core.extras import require

for _module in ("fastapi", "prometheus_client"):  # a missing [serve] extra raises MissingExtraError naming it
    require("serve", _module)

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from block_attention.core.config import GenerationConfig
from block_attention.core.errors import (BlockAttentionError, ConfigError, ContextTooLongError, InvalidRequestError,
                                    SchedulerClosedError)
from block_attention.engine.stages import RequestPlan

from .metrics import CONTENT_TYPE, ServerMetrics
from .openai_format import (ChunkMaker, EngineRequest, RequestRejected, block_attention_info, chat_request,
                            chat_response, completion_request, completion_response, error_body, new_id)
from .schema import ChatCompletionRequest, CompletionRequest
from .settings import ServerSettings
from .worker import Failed, Finished, ModelWorker

logger = logging.getLogger("block_attention.server")

ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics")


def create_app(engine: Any, settings: ServerSettings | None = None, *, retriever: Any = None) -> FastAPI:
    """The server app for ``engine``. ``retriever`` (anything with ``search(query, top_k)``) lets a request that
    sends no ``documents`` field retrieve passages from a local index; without it such a request has no blocks."""
    settings = settings or ServerSettings()
    metrics = ServerMetrics(lambda: engine.store.stats() if engine.store is not None else None)
    worker = ModelWorker(engine, settings.max_batch, on_piece=metrics.pieces.inc, on_step=metrics.observe_step)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await asyncio.get_running_loop().run_in_executor(None, worker.shutdown)  # joins the model thread

    app = FastAPI(title="block-attention", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine, app.state.settings, app.state.metrics, app.state.worker = engine, settings, metrics, worker
    app.add_middleware(_CountRequests, metrics=metrics)

    def reject(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
        metrics.errors.labels(body["error"]["type"]).inc()
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(RequestRejected)
    async def _rejected(_: Request, exc: RequestRejected) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return reject(exc.status, exc.body(), headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return reject(exc.status_code, error_body(str(exc.detail), kind))

    @app.exception_handler(Exception)
    async def _crash(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("Request failed")
        return reject(500, error_body(f"The server failed to answer ({type(exc).__name__}); see its log.",
                                      "server_error"))

    async def require_key(request: Request) -> None:
        if settings.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(),
                                                                    settings.api_key.encode()):
            raise RequestRejected(401, "Missing or wrong API key; send the header `Authorization: Bearer KEY`.",
                                  type="authentication_error", code="invalid_api_key")

    auth = [Depends(require_key)]

    @app.get("/health")
    async def health() -> JSONResponse:
        stats = worker.scheduler.stats
        up = not worker.scheduler.closed  # a failed model thread answers nothing more: tell the load balancer
        return JSONResponse({"status": "ok" if up else "unavailable", "model": settings.model_name,
                             "queue_depth": worker.queued, "max_batch": worker.max_batch,
                             "decoding": worker.scheduler.active, "max_batch_rows_seen": stats.max_rows,
                             "batched": not stats.fallback}, status_code=200 if up else 503)

    @app.get("/v1/models", dependencies=auth)
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": settings.model_name, "object": "model", "created": 0,
                                            "owned_by": "block-attention"}]}

    @app.get("/metrics", dependencies=auth)
    async def prometheus() -> Response:
        metrics.queue_depth.set(worker.queued)
        metrics.batch_rows_max.set(worker.scheduler.stats.max_rows)  # the scheduler keeps the running maximum
        return Response(await run_in_threadpool(metrics.render), media_type=CONTENT_TYPE)

    def start(ereq: EngineRequest, doc_ids: list[str]) -> tuple[RequestPlan, GenerationConfig]:
        """Runs on the model thread: retrieve when asked, then plan the request (raises if it cannot run)."""
        blocks = ereq.blocks
        if blocks is None:
            blocks = ([hit.to_block() for hit in retriever.search(ereq.question, settings.top_k)]
                      if retriever is not None else [])
        doc_ids.extend(b.key for b in blocks)
        return engine.plan_request(blocks, ereq.question, system=ereq.system, history=list(ereq.history),
                                   mode=ereq.mode, generation=ereq.generation)

    async def complete(request: Request, schema: type[BaseModel],
                       translate: Callable[[Any, ServerSettings], EngineRequest], chat: bool) -> Response:
        body = await _read_body(request, settings.max_body_bytes)
        parsed = _parse(schema, body)
        ereq = translate(parsed, settings)
        rid = new_id("chatcmpl" if chat else "cmpl")
        doc_ids: list[str] = []
        try:
            handle = worker.stream(lambda: start(ereq, doc_ids))  # raises when the model thread is gone
            await handle.started
        except BlockAttentionError as exc:
            raise _as_rejected(exc) from None
        if not parsed.stream:  # type: ignore[attr-defined]
            finished = await _collect(handle)
            metrics.observe(finished.generation.stats, finished.queue_s)
            info = block_attention_info(finished.generation.stats, finished.queue_s, doc_ids)
            shape = chat_response if chat else completion_response
            return JSONResponse(shape(rid, settings.model_name, finished.generation, info))
        include_usage = bool(parsed.stream_options and parsed.stream_options.include_usage)  # type: ignore
        chunks = ChunkMaker(rid, settings.model_name, chat)
        return StreamingResponse(_sse(handle, chunks, include_usage, metrics, doc_ids),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/v1/chat/completions", dependencies=auth)
    async def chat_completions(request: Request) -> Response:
        return await complete(request, ChatCompletionRequest, chat_request, chat=True)

    @app.post("/v1/completions", dependencies=auth)
    async def completions(request: Request) -> Response:
        return await complete(request, CompletionRequest, completion_request, chat=False)

    return app


async def _collect(handle: Any) -> Finished:
    """Wait for a non-streaming request's end (re-raising its error); leaving early cancels it."""
    try:
        while True:
            item = await handle.items.get()
            if isinstance(item, Finished):
                return item
            if isinstance(item, Failed):
                raise item.error
    finally:
        handle.cancel()  # no-op once finished; a client gone (task cancelled) stops the generation


def _event(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


async def _sse(handle: Any, chunks: ChunkMaker, include_usage: bool, metrics: ServerMetrics,
               doc_ids: list[str]) -> AsyncIterator[bytes]:
    """Server-sent events of one stream; leaving early (client gone) cancels the generation."""
    done = False
    try:
        opening = chunks.start()
        if opening is not None:
            yield _event(opening)
        while True:
            item = await handle.items.get()
            if isinstance(item, str):
                yield _event(chunks.piece(item))
            elif isinstance(item, Finished):
                stats = item.generation.stats
                metrics.observe(stats, item.queue_s)
                yield _event(chunks.finish(item.generation, block_attention_info(stats, item.queue_s, doc_ids)))
                if include_usage:
                    yield _event(chunks.usage(item.generation))
                break
            else:
                assert isinstance(item, Failed)
                logger.error("Streaming generation failed: %r", item.error)
                metrics.errors.labels("server_error").inc()
                yield _event(error_body(f"Generation failed ({type(item.error).__name__}); see the server log.",
                                        "server_error"))
                break
        yield _event("[DONE]")
        done = True
    finally:
        if not done:
            handle.cancel()
            metrics.cancelled.inc()


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    too_big = RequestRejected(413, f"The request body is larger than this server's limit of {limit} bytes; send "
                                   "fewer or shorter documents, or start the server with a larger limit.",
                              code="request_too_large")
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_big
    return bytes(body)


def _parse(schema: type[BaseModel], body: bytes) -> Any:
    try:
        return schema.model_validate_json(body, strict=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        if first["type"] == "json_invalid":
            message = f"The request body is not valid JSON ({first['msg']}); send one JSON object."
        elif not where:
            message = f"The request body must be a JSON object ({first['msg']})."
        else:
            message = f"Invalid value for `{where}`: {first['msg']}; fix that field (see the OpenAI API schema)."
        raise RequestRejected(400, message, param=where or None, code=first["type"]) from None


def _as_rejected(exc: BlockAttentionError) -> Exception:
    """The HTTP error for an engine refusal (unexpected errors stay errors: 500)."""
    if isinstance(exc, RequestRejected):
        return exc
    if isinstance(exc, SchedulerClosedError):
        return RequestRejected(503, str(exc), type="server_error", code="model_unavailable")
    if isinstance(exc, ContextTooLongError):
        return RequestRejected(400, str(exc), param="messages", code="context_length_exceeded")
    if isinstance(exc, (InvalidRequestError, ConfigError)):
        return RequestRejected(400, str(exc))
    return exc


class _CountRequests:
    """Pure ASGI middleware counting answered requests by route and status (keeps disconnects observable)."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def counting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            route = scope["path"] if scope["path"] in ROUTES else "other"
            self.metrics.requests.labels(route, str(status)).inc()
