"""The model worker: one thread owns the model; requests queue in front of it and run one at a time.

Why one thread: a request's blocks are looked up, encoded, stored, assembled and decoded against one model; two
requests interleaved on the same model would only slow each other down on a CPU or a single GPU, and one owner
thread makes "no interleaving of two requests' caches" true by construction. HTTP parsing, validation,
streaming to clients and ``/metrics`` run on the event loop meanwhile.

* :meth:`ModelWorker.call` runs a function on the model thread and awaits its result.
* :meth:`ModelWorker.stream` runs a :class:`~block_attention.stages.TextStream` factory on the model thread and
  forwards its pieces through an asyncio queue. The factory runs first (it plans the request, so a request that
  cannot be served fails before any response header is sent); ``await handle.started`` re-raises its error.
  ``handle.cancel()`` (a disconnected client) makes the model thread close the stream at the next piece, which
  stops generation; a stream cancelled while still queued never starts.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from block_attention.stages import Generation, TextStream

T = TypeVar("T")


@dataclass(frozen=True)
class Finished:
    """End of a stream: the generation and how long the request waited for the model."""

    generation: Generation
    queue_s: float


@dataclass(frozen=True)
class Failed:
    """A stream that failed after it started."""

    error: BaseException


@dataclass
class StreamHandle:
    """The event-loop side of one streaming request."""

    started: asyncio.Future[float]  # resolves to the queue wait (seconds) once the request is planned
    items: asyncio.Queue[Any]  # str pieces, then one Finished or Failed
    _cancel: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()


class ModelWorker:
    """A single model thread with a FIFO queue in front (see the module docstring)."""

    def __init__(self, on_piece: Callable[[], None] | None = None) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="block-attention-model")
        self._waiting = 0
        self._lock = threading.Lock()
        self._on_piece = on_piece

    @property
    def queued(self) -> int:
        """Requests submitted and not yet finished (running one included)."""
        with self._lock:
            return self._waiting

    def _enter(self) -> None:
        with self._lock:
            self._waiting += 1

    def _leave(self) -> None:
        with self._lock:
            self._waiting -= 1

    async def call(self, fn: Callable[[float], T]) -> T:
        """Run ``fn(queue_s)`` on the model thread; ``queue_s`` is how long it waited to start."""
        submitted = time.perf_counter()
        self._enter()

        def job() -> T:
            try:
                return fn(time.perf_counter() - submitted)
            finally:
                self._leave()

        return await asyncio.get_running_loop().run_in_executor(self._pool, job)

    def stream(self, factory: Callable[[], TextStream]) -> StreamHandle:
        """Queue a streaming request; see the module docstring."""
        loop = asyncio.get_running_loop()
        handle = StreamHandle(loop.create_future(), asyncio.Queue())
        submitted = time.perf_counter()
        self._enter()

        def emit(fn: Callable[..., Any], *args: Any) -> None:
            try:
                loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:  # the event loop is gone (server shutting down)
                pass

        def resolve(error: BaseException | None, value: float = 0.0) -> None:
            if handle.started.done():
                return
            if error is None:
                handle.started.set_result(value)
            else:
                handle.started.set_exception(error)

        def job() -> None:
            try:
                queue_s = time.perf_counter() - submitted
                if handle.cancelled:  # the client left while the request waited
                    emit(handle.started.cancel)
                    return
                try:
                    text_stream = factory()
                except BaseException as exc:  # planning failed: the route turns it into an error response
                    emit(resolve, exc)
                    return
                emit(resolve, None, queue_s)
                try:
                    for piece in text_stream:
                        if self._on_piece is not None:
                            self._on_piece()
                        emit(handle.items.put_nowait, piece)
                        if handle.cancelled:
                            text_stream.close()  # stops generation: the decode loop is a generator
                            return
                    assert text_stream.result is not None
                    emit(handle.items.put_nowait, Finished(text_stream.result, queue_s))
                except Exception as exc:
                    emit(handle.items.put_nowait, Failed(exc))
            finally:
                self._leave()

        self._pool.submit(job)
        return handle

    def shutdown(self) -> None:
        """Drop queued requests and let the running one finish in the background."""
        self._pool.shutdown(wait=False, cancel_futures=True)
