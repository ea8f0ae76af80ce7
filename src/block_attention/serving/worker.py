"""The model worker: the event-loop side of the :class:`~.batching.BatchScheduler` that owns the model.

One thread owns the model (:mod:`block_attention.serving.batching`): concurrent requests are prefilled one by one
as they arrive and then decoded together, one batched forward per step for up to ``max_batch`` requests (``1``: one
request at a time in arrival order). HTTP parsing, validation, streaming to clients and ``/metrics`` run on the
event loop meanwhile.

* :meth:`ModelWorker.stream` queues a request *job* (a function returning ``(RequestPlan, GenerationConfig)``;
  it runs on the model thread when the request is admitted, so retrieval and planning never block the event loop)
  and forwards its events through an asyncio queue. ``await handle.started`` resolves to the queue wait once the
  job planned the request, or re-raises the job's error (a request that cannot be served fails before any
  response header is sent). ``handle.items`` then yields ``str`` pieces and one :class:`Finished` or
  :class:`Failed`. ``handle.cancel()`` (a disconnected client) drops the request before its next decode step; a
  request cancelled while still queued never starts.
* :meth:`ModelWorker.call` runs any function on the model thread between decode steps and awaits its result.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from block_attention.serving.batching import BatchScheduler, Failed, Finished, Job, Started, Ticket

T = TypeVar("T")

__all__ = ["Failed", "Finished", "ModelWorker", "StreamHandle"]


@dataclass
class StreamHandle:
    """The event-loop side of one request."""

    started: asyncio.Future[float]  # resolves to the queue wait (seconds) once the request is planned
    items: asyncio.Queue[Any]  # str pieces, then one Finished or Failed
    ticket: Ticket | None = None

    def cancel(self) -> None:
        if self.ticket is not None:
            self.ticket.cancel()

    @property
    def cancelled(self) -> bool:
        return self.ticket is not None and self.ticket.cancelled


class ModelWorker:
    """The server's model thread: a :class:`BatchScheduler` over ``engine`` (see the module docstring).

    ``on_piece`` is called for every streamed piece, ``on_step(rows)`` after every decode forward (metrics)."""

    def __init__(self, engine: Any, max_batch: int = 8, *, on_piece: Callable[[], None] | None = None,
                 on_step: Callable[[int], None] | None = None) -> None:
        self.scheduler = BatchScheduler(engine, max_batch, on_step=on_step)
        self._on_piece = on_piece

    @property
    def queued(self) -> int:
        """Requests submitted and not yet finished (running ones included)."""
        return self.scheduler.pending

    @property
    def max_batch(self) -> int:
        return self.scheduler.max_batch

    async def call(self, fn: Callable[[float], T]) -> T:
        """Run ``fn(queue_s)`` on the model thread; ``queue_s`` is how long it waited to start."""
        return await asyncio.wrap_future(self.scheduler.call(fn))

    def stream(self, job: Job) -> StreamHandle:
        """Queue a request; see the module docstring."""
        loop = asyncio.get_running_loop()
        handle = StreamHandle(loop.create_future(), asyncio.Queue())

        def on_loop(event: Any) -> None:  # runs on the event loop, in event order
            if isinstance(event, Started):
                if not handle.started.done():
                    handle.started.set_result(event.queue_s)
            elif isinstance(event, Failed) and not handle.started.done():
                handle.started.set_exception(event.error)  # planning failed (or cancelled while queued)
                handle.started.exception()  # mark retrieved: nobody may await a request whose client left
            else:
                handle.items.put_nowait(event)

        def deliver(event: Any) -> None:  # runs on the model thread
            if isinstance(event, str) and self._on_piece is not None:
                self._on_piece()
            try:
                loop.call_soon_threadsafe(on_loop, event)
            except RuntimeError:  # the event loop is gone (server shutting down)
                pass

        handle.ticket = self.scheduler.submit(job, deliver)
        return handle

    def run_here(self, ready: Callable[[], None] | None = None) -> None:
        """Run the model loop on the calling thread until :meth:`shutdown` (``block-attention serve`` runs it on
        the main thread, :func:`~block_attention.serving.runner.run_server`); see
        :meth:`~block_attention.serving.batching.BatchScheduler.run_here`."""
        self.scheduler.run_here(ready)

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop after the current decode step; queued and running requests fail (SchedulerClosedError). Waits up
        to ``timeout`` seconds for the model thread to end (a model thread still inside torch when the
        interpreter exits aborts the process), so call it off the event loop."""
        self.scheduler.close(timeout=timeout)
