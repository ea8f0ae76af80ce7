"""Batched decoding of concurrent requests: one model thread, one forward per decode step for every active request.

Contract
--------
:class:`BatchScheduler` owns the engine's model on one thread. :meth:`~BatchScheduler.submit` queues a *job*
(a callable returning ``(RequestPlan, GenerationConfig)``, e.g. ``engine.plan_request(...)`` wrapped in a
lambda) with a ``deliver`` callback; the model thread then delivers, in order, :class:`Started` (queue wait), the
text pieces (``str``), and one :class:`Finished` or :class:`Failed`. A job that raises (a request that cannot be
planned) delivers :class:`Failed` *before* any :class:`Started`, so a server can answer 4xx before headers.
:meth:`~BatchScheduler.stream` is the blocking iterator over the same events; :meth:`~BatchScheduler.call` runs
any function on the model thread between steps.

Every piece, token and finish reason is what ``engine.generate`` gives for the request alone: both paths drive
one :class:`~block_attention.engine.decoding.DecodeState` per request (same selection, stop strings, EOS, max tokens,
TTFT), and a sampling request keeps its own seeded generator. Numerically, a padded batched forward is not
bit-identical to a one-row forward (different GEMM shapes and attention block boundaries): in float32 the logits
differ by ~2e-7 (tiny test models), so identity holds unless a greedy near-tie falls inside that noise. In bf16 the
noise is ~0.03 in the logits: on the random-weight Qwen2-0.5B shape (flat logits, exact ties occur) one of four
greedy outputs diverged at a step whose top-2 margin was 0.016, while float32 gave four of four identical.

The loop
--------
Each turn: run queued :meth:`call` functions; admit waiting requests FIFO while fewer than ``max_batch`` are
active (for each: the job plans it, ``engine.run_prefill(plan)`` prefills it alone, its first token comes from
the prefill logits: that is its TTFT); then run **one batched decode forward** for every active request, hand
each its piece, and drop finished, failed and cancelled rows. ``max_batch=1`` is one request at a time in arrival
order (the old worker). Final-block prefills are *not* batched: each runs alone between decode steps (measured
on the Qwen2-0.5B shape, bf16, one CPU thread: a 4 x 40-token forward costs 170 ms per row vs 222 ms alone, a
~23% saving that would also hold every admitted request's first token until the whole batch is prefilled).

The batched cache (:class:`PaddedBatch`) is one ``DynamicCache`` whose rows are LEFT-padded to a common length
``T`` with a 2-D ``attention_mask [B, T+1]`` (0 on padding) and per-row ``position_ids [B, 1]``: each row's own
next position, which in block mode is not its padded index. transformers (5.x, ``masking_utils``) turns the 2-D
mask plus the cache length into the causal+padding mask, so padded keys get zero weight. A joining row (or the
batch) is left-padded to the longer length and concatenated on the batch dim; leaving rows are index-selected
away and columns that are padding in every row are trimmed.

Fallback: a model whose config declares sliding-window or other non-full attention layers (Mistral with
``sliding_window``, Gemma2/3, hybrid Qwen2, ...), a request whose cache has non-plain layers, or a model whose
batched forward raises, is stepped one request at a time in round-robin inside the same loop (still interleaved,
so waiting requests start early; outputs identical trivially). A batched forward that raises switches the
scheduler to that fallback for good (logged). One request raising (planning, prefill, selection, joining the
batch) fails that request only; the others continue. Running out of memory while rows leave the batch fails the
rows still in it; the scheduler goes on. A cancelled request (:meth:`Ticket.cancel`, e.g. a client disconnected) is
dropped before its next step. :meth:`~BatchScheduler.close` stops the loop after the current step and fails what
is still queued or running with :class:`~block_attention.core.errors.SchedulerClosedError`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from block_attention.core.checks import is_int
from block_attention.core.config import GenerationConfig
from block_attention.core.errors import ConfigError, RequestCancelledError, SchedulerClosedError
from block_attention.engine.decoding import DecodeState, decode_step
from block_attention.engine.stages import Generation, RequestPlan
from block_attention.engine.threads import model_lock
from block_attention.hf.cache import DynamicCache, cache_over, empty_cache, is_plain_cache, layer_tensors
from block_attention.hf.compat import cache_kwargs, output_cache

logger = logging.getLogger("block_attention")

T = TypeVar("T")
Job = Callable[[], tuple[RequestPlan, GenerationConfig]]

__all__ = ["BatchScheduler", "BatchStream", "Failed", "Finished", "Job", "PaddedBatch", "SchedulerStats", "Started",
           "Ticket", "batchable_model", "plain_cache"]


@dataclass(frozen=True)
class Started:
    """The request was planned and starts prefilling; ``queue_s``: how long it waited for the model thread."""

    queue_s: float


@dataclass(frozen=True)
class Finished:
    """End of a request: the generation and how long it waited for the model thread."""

    generation: Generation
    queue_s: float


@dataclass(frozen=True)
class Failed:
    """A request that raised: before :class:`Started` its job (planning) failed, after it the prefill or decoding."""

    error: BaseException


@dataclass
class SchedulerStats:
    """Counters of the decode loop (read them from any thread; written by the model thread only)."""

    steps: int = 0  # decode forwards run (a batched forward counts once, each one-by-one step once)
    rows: int = 0  # request-steps decoded (sum of rows over steps)
    max_rows: int = 0  # the largest batch one forward decoded
    last_rows: int = 0  # rows of the latest forward
    fallback: bool = False  # stepping one request at a time (model not batchable, or a batched forward raised)


class Ticket:
    """The submitter's side of one request: cancel it; events arrive through its ``deliver`` callback."""

    def __init__(self, job: Job, deliver: Callable[[Any], None]) -> None:
        self.job = job
        self.deliver = deliver
        self.submitted = time.perf_counter()
        self.queue_s = 0.0
        self.started = False
        self.ended = False  # Finished or Failed was delivered (model thread)
        self._cancel = threading.Event()

    def cancel(self) -> None:
        """Stop the request before its next step (or before it starts, if still queued)."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()


def batchable_model(model: torch.nn.Module) -> bool:
    """Whether every attention layer of ``model`` is plain full attention (no sliding window, chunked or linear
    layers), the condition for decoding its requests in one left-padded batch."""
    config = model.config.get_text_config(decoder=True)
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        return all(kind == "full_attention" for kind in layer_types)
    return getattr(config, "sliding_window", None) is None and getattr(config, "attention_chunk_size", None) is None


def plain_cache(cache: Any) -> bool:
    """Whether ``cache`` is a one-row ``DynamicCache`` of plain (full-attention) layers, all of one length."""
    return is_plain_cache(cache)


def _left_pad(x: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    """``x`` with ``n`` zero (False) slots prepended along ``dim``."""
    if n == 0:
        return x
    shape = list(x.shape)
    shape[dim] = n
    return torch.cat([x.new_zeros(shape), x], dim=dim)


class PaddedBatch:
    """The active rows' caches as one left-padded ``DynamicCache`` plus its 2-D attention mask (module docstring)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.rows: list[DecodeState] = []
        self.cache: DynamicCache | None = None
        self.mask = torch.zeros((0, 0), dtype=torch.bool, device=device)  # [B, T] True on real tokens

    @property
    def width(self) -> int:
        return int(self.mask.shape[1])

    def add(self, state: DecodeState) -> None:
        """Take over ``state``'s one-row cache (``state.cache`` becomes ``None``; that cache object is emptied)."""
        assert state.cache is not None and plain_cache(state.cache)
        own = layer_tensors(state.cache)  # each [1, H_kv, n, D]
        n = own[0][0].shape[-2]
        row_mask = torch.ones((1, n), dtype=torch.bool, device=self.device)  # [1, n]
        if self.cache is None:
            data = own
            self.mask = row_mask
        else:
            width = max(self.width, n)
            grow, pad = width - self.width, width - n
            data = [(torch.cat([_left_pad(keys, grow, 2), _left_pad(k, pad, 2)]),  # [B+1, H_kv, W, D]
                     torch.cat([_left_pad(values, grow, 2), _left_pad(v, pad, 2)]))
                    for (keys, values), (k, v) in zip(layer_tensors(self.cache), own)]
            self.mask = torch.cat([_left_pad(self.mask, grow, 1), _left_pad(row_mask, pad, 1)])  # [B+1, W]
        self.cache = cache_over([(k, v, None) for k, v in data])  # the new tensors themselves, not a copy
        self.rows.append(state)
        empty_cache(state.cache)  # emptied, not just dropped: the state's Prefilled and Assembled share this cache
        state.cache = None

    def keep(self, indices: list[int]) -> None:
        """Keep only rows ``indices`` (in that order) and trim columns that are padding in every kept row."""
        if not indices:
            self.rows, self.cache = [], None
            self.mask = torch.zeros((0, 0), dtype=torch.bool, device=self.device)
            return
        if indices == list(range(len(self.rows))):
            return
        assert self.cache is not None
        index = torch.tensor(indices, dtype=torch.long, device=self.device)  # [B']
        mask = self.mask.index_select(0, index)  # [B', T]
        first = int(mask.any(dim=0).nonzero()[0])  # leading columns that are padding in every row
        self.mask = mask[:, first:]
        self.cache = cache_over([
            (keys.index_select(0, index)[:, :, first:], values.index_select(0, index)[:, :, first:], None)
            for keys, values in layer_tensors(self.cache)])  # each [B', H_kv, T - first, D]
        self.rows = [self.rows[i] for i in indices]

    @torch.inference_mode()
    def step(self, model: torch.nn.Module) -> torch.Tensor:
        """One forward of every row's next token; the next-token logits ``[B, V]``. On an exception the cache
        and mask are as before the call (so :meth:`release` still gives each row its exact cache)."""
        assert self.cache is not None and all(s.next_input is not None for s in self.rows)
        inputs = [s.next_input for s in self.rows]
        tokens = torch.tensor([[t] for t, _ in inputs], dtype=torch.long, device=self.device)  # [B, 1]
        positions = torch.tensor([[p] for _, p in inputs], dtype=torch.long, device=self.device)  # [B, 1]
        mask = torch.cat([self.mask, self.mask.new_ones((len(self.rows), 1))], dim=1)  # [B, T+1]
        padded = not bool(mask.all())  # no padding at all (e.g. one row): the same call as a one-row step
        with model_lock(model):  # the engine's thread contract (block_attention.engine.threads)
            out = model(input_ids=tokens, position_ids=positions, attention_mask=mask if padded else None,
                        **cache_kwargs(model, self.cache), use_cache=True, logits_to_keep=1)
        self.cache, self.mask = output_cache(out), mask
        return out.logits[:, -1]  # [B, V]

    def release(self) -> list[DecodeState]:
        """Give every row its own one-row cache back (its real columns only) and empty the batch."""
        rows, width = self.rows, self.width
        if self.cache is not None:
            for i, state in enumerate(rows):
                pad = width - int(self.mask[i].sum())
                state.cache = cache_over([  # own storage, so the batch's tensors can be freed
                    (keys[i:i + 1, :, pad:width].clone(), values[i:i + 1, :, pad:width].clone(), None)
                    for keys, values in layer_tensors(self.cache)])  # each [1, H_kv, n, D]
        self.keep([])
        return rows


@dataclass
class _Active:
    """One running request (a batch row and a one-by-one row alike): its ticket and its decode state."""

    ticket: Ticket
    state: DecodeState


@dataclass
class _Queue:
    waiting: deque[Ticket] = field(default_factory=deque)
    calls: deque[tuple[Callable[[], None], Future[Any]]] = field(default_factory=deque)  # (run, its future)


class BatchScheduler:
    """Batched decoding of concurrent requests on one model thread (see the module docstring).

    ``max_batch``: most requests decoded together (1: one at a time). ``on_step(rows)`` is called on the model
    thread after every decode forward with its number of rows (metrics)."""

    def __init__(self, engine: Any, max_batch: int = 8, *, on_step: Callable[[int], None] | None = None,
                 name: str = "block-attention-model") -> None:
        if not is_int(max_batch) or max_batch < 1:
            raise ConfigError(f"max_batch must be a positive integer, got {max_batch!r}; pass 1 to decode one request "
                              "at a time, or more to batch concurrent requests.")
        self.engine = engine
        self.max_batch = max_batch
        self.stats = SchedulerStats(fallback=not batchable_model(engine.model))
        self._on_step = on_step
        self._name = name
        self._cond = threading.Condition()
        self._queue = _Queue()
        self._pending = 0  # submitted and not yet finished: queued, running, and queued calls
        self._closed = False
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()  # set when the model loop has ended (on its thread or in run_here)
        self._batch = PaddedBatch(engine.device)
        self._rows: list[_Active] = []  # the batch's requests, in the order of self._batch.rows
        self._solo: list[_Active] = []  # stepped one by one (fallback)
        self._admitted: list[Ticket] = []  # taken from the queue this turn (a loop failure fails those not ended)

    # -- submitting ------------------------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Requests (and calls) submitted and not finished: waiting ones and running ones."""
        with self._cond:
            return self._pending

    @property
    def closed(self) -> bool:
        """Whether the scheduler takes no more requests (closed, or its model thread failed)."""
        with self._cond:
            return self._closed

    @property
    def active(self) -> int:
        """Requests decoding now (model thread's view; approximate from other threads)."""
        return len(self._batch.rows) + len(self._solo)

    def submit(self, job: Job, deliver: Callable[[Any], None]) -> Ticket:
        """Queue a request; events go to ``deliver`` (called on the model thread; see the module docstring)."""
        ticket = Ticket(job, deliver)
        with self._cond:
            if self._closed:
                raise SchedulerClosedError("The batch scheduler is closed; create a new one (or a new server app) "
                                           "to serve more requests.")
            self._pending += 1
            self._queue.waiting.append(ticket)
            self._ensure_thread()
            self._cond.notify()
        return ticket

    def stream(self, job: Job) -> "BatchStream":
        """Submit ``job`` and return a blocking iterator over its pieces (see :class:`BatchStream`)."""
        return BatchStream(self, job)

    def generate(self, job: Job) -> Generation:
        """Submit ``job`` and wait for its :class:`Generation` (raises what the request raised)."""
        stream = self.stream(job)
        for _ in stream:
            pass
        assert stream.result is not None
        return stream.result

    def call(self, fn: Callable[[float], T]) -> "Future[T]":
        """Run ``fn(queue_s)`` on the model thread between decode steps; its future."""
        future: Future[T] = Future()
        submitted = time.perf_counter()

        def run() -> None:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(time.perf_counter() - submitted))
                except BaseException as exc:
                    future.set_exception(exc)

        with self._cond:
            if self._closed:
                raise SchedulerClosedError("The batch scheduler is closed; create a new one to run more work.")
            self._pending += 1
            self._queue.calls.append((run, future))
            self._ensure_thread()
            self._cond.notify()
        return future

    def close(self, timeout: float | None = 30.0) -> None:
        """Stop after the current step; queued and running requests get :class:`Failed` (SchedulerClosedError),
        queued :meth:`call` futures that error. Waits up to ``timeout`` seconds for the model thread (``0``: do not
        wait)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and timeout != 0 and thread is not threading.current_thread():
            self._stopped.wait(timeout)

    def run_here(self, ready: Callable[[], None] | None = None) -> None:
        """Run the model loop on the calling thread until :meth:`close` (from another thread or a signal
        handler); no model thread is started. ``ready()`` is called once the loop is claimed, before it runs
        (start the threads that submit requests there). ``block-attention serve`` runs it on the main thread: torch's
        OpenMP kernels run markedly slower when called from a thread other than the main one (on a 2-core CPU,
        SmolLM2 bf16: a warm 3K-token prefill 81 ms on the main thread vs 121-157 ms on another, a decode step 50
        vs 73-90 ms), so the server keeps HTTP on a background thread and the model on the main one."""
        with self._cond:
            if self._thread is not None:
                raise ConfigError("This batch scheduler already has a model thread; call run_here() before the "
                                  "first request is submitted, on a scheduler of its own.")
            self._thread = threading.current_thread()
        if ready is not None:
            try:
                ready()
            except BaseException:
                self.close(timeout=0)
                self._loop()  # fails anything submitted meanwhile and marks the loop ended
                raise
        self._loop()

    def __enter__(self) -> "BatchScheduler":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
            self._thread.start()

    # -- the model thread ------------------------------------------------------------------------------------
    def _loop(self) -> None:
        try:
            self._run()
        except BaseException:  # a bug in the loop: fail every request rather than leave its submitter waiting
            logger.exception("The batch scheduler's model thread failed; failing its requests")
            with self._cond:
                self._closed = True
        try:
            self._shutdown()
        finally:
            self._stopped.set()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._closed or self._queue.waiting or self._queue.calls or self.active):
                    self._cond.wait()
                if self._closed:
                    break
                calls = list(self._queue.calls)
                self._queue.calls.clear()
                admit = self._admitted = []
                while self._queue.waiting and self.active + len(admit) < self.max_batch:
                    admit.append(self._queue.waiting.popleft())
            for run, _ in calls:
                run()
                self._done()
            with torch.inference_mode():
                for ticket in admit:
                    self._start(ticket)
                self._admitted = []
                self._step()

    def _done(self) -> None:
        with self._cond:
            self._pending -= 1

    def _deliver(self, ticket: Ticket, event: Any) -> None:
        try:
            ticket.deliver(event)
        except Exception:  # a consumer's bug must not stop the loop
            logger.exception("Delivering a batch scheduler event failed")

    def _end(self, ticket: Ticket, event: Finished | Failed) -> None:
        ticket.ended = True
        self._deliver(ticket, event)
        self._done()

    def _start(self, ticket: Ticket) -> None:
        """Plan, prefill and select the first token of one request; then it joins the batch (or the solo rows)."""
        ticket.queue_s = time.perf_counter() - ticket.submitted
        if ticket.cancelled:
            self._end(ticket, Failed(RequestCancelledError("The request was cancelled before it started.")))
            return
        try:
            plan, generation = ticket.job()
        except BaseException as exc:  # planning failed: before Started, so a server can still answer 4xx
            self._end(ticket, Failed(exc))
            return
        ticket.started = True
        self._deliver(ticket, Started(ticket.queue_s))
        try:
            prefilled, lookup, kvs, assembled = self.engine.run_prefill(plan)
            state = DecodeState(self.engine, plan, prefilled, generation,
                                {"lookup": lookup, "encoded": kvs, "assembled": assembled})
            if not state.finished:
                self._push(ticket, state, prefilled.logits[-1])
            batched = not state.finished and not self.stats.fallback and plain_cache(state.cache)
            if batched:
                self._batch.add(state)  # may run out of memory growing the batch (which is then unchanged)
        except Exception as exc:
            self._end(ticket, Failed(exc))
            return
        if state.finished:
            self._finish(ticket, state)
        elif batched:
            self._rows.append(_Active(ticket, state))  # the batch appended ``state`` last: same order
        else:
            self._solo.append(_Active(ticket, state))

    def _push(self, ticket: Ticket, state: DecodeState, logits: torch.Tensor) -> None:
        piece = state.push(logits)
        if piece:
            self._deliver(ticket, piece)

    def _finish(self, ticket: Ticket, state: DecodeState) -> None:
        rest = state.flush()
        if rest:
            self._deliver(ticket, rest)
        self._end(ticket, Finished(state.result(), ticket.queue_s))

    def _record(self, rows: int) -> None:
        s = self.stats
        s.steps, s.rows, s.max_rows, s.last_rows = s.steps + 1, s.rows + rows, max(s.max_rows, rows), rows
        if self._on_step is not None:
            try:
                self._on_step(rows)
            except Exception:
                logger.exception("The batch scheduler's on_step callback failed")

    def _cancelled(self, ticket: Ticket) -> bool:
        if ticket.cancelled:
            self._end(ticket, Failed(RequestCancelledError("The request was cancelled while it was decoding.")))
        return ticket.cancelled

    def _step(self) -> None:
        """One decode step of every active request: one batched forward, then the one-by-one rows."""
        batch = self._batch
        self._drop_rows([i for i, a in enumerate(self._rows) if not self._cancelled(a.ticket)])
        if batch.rows:
            try:
                logits = batch.step(self.engine.model)  # [B, V]
            except Exception as exc:
                self.stats.fallback = True
                logger.warning("A batched decode step failed (%r); decoding requests one at a time from now on.",
                               exc)
                batch.release()  # every row's state gets its own one-row cache back
                self._solo += self._rows
                self._rows = []
            else:
                self._record(len(batch.rows))
                self._drop_rows([i for i, a in enumerate(self._rows)
                                 if self._advance(a.ticket, a.state, lambda i=i: logits[i])])

        def solo_step(state: DecodeState) -> torch.Tensor:
            row = decode_step(self.engine.model, state, self.engine.device)  # [V]
            self._record(1)
            return row

        self._solo = [a for a in self._solo if not self._cancelled(a.ticket)
                      and self._advance(a.ticket, a.state, lambda a=a: solo_step(a.state))]

    def _advance(self, ticket: Ticket, state: DecodeState, logits: Callable[[], torch.Tensor]) -> bool:
        """Hand ``state`` its next logits ``[V]`` (``logits()`` may run the model); whether it is still running
        (False: it finished, or it failed and got :class:`Failed`)."""
        try:
            self._push(ticket, state, logits())
        except Exception as exc:
            self._end(ticket, Failed(exc))
            return False
        if state.finished:
            self._finish(ticket, state)
            return False
        return True

    def _drop_rows(self, keep: list[int]) -> None:
        """Keep only batch rows ``keep`` (indices into ``self._rows``, which mirrors ``self._batch.rows``)."""
        assert len(self._rows) == len(self._batch.rows)
        try:
            self._batch.keep(keep)  # copies the kept rows: may run out of memory (the batch is then unchanged)
        except Exception as exc:  # the kept rows fail; the scheduler goes on with an empty batch
            for i in keep:
                self._end(self._rows[i].ticket, Failed(exc))
            self._batch.keep([])
            self._rows = []
            return
        self._rows = [self._rows[i] for i in keep]

    def _shutdown(self) -> None:
        error = SchedulerClosedError("The batch scheduler was closed (server shutting down) before this request "
                                     "finished; send it again to a running server.")
        with self._cond:
            waiting = list(self._queue.waiting)
            calls = list(self._queue.calls)
            self._queue.waiting.clear()
            self._queue.calls.clear()
        running = [a.ticket for a in self._rows + self._solo]
        admitted = [t for t in self._admitted if not t.ended and all(t is not r for r in running)]
        for ticket in waiting + admitted + running:  # admitted: after a failure of the loop, those it was starting
            self._end(ticket, Failed(error))
        self._admitted = []
        self._batch.keep([])
        self._rows = []
        self._solo = []
        for _, future in calls:  # never run: their waiters get the error instead of waiting forever
            if future.set_running_or_notify_cancel():
                future.set_exception(SchedulerClosedError("The batch scheduler was closed before this call ran; "
                                                          "create a new scheduler to run more work."))
            self._done()


class BatchStream:
    """Blocking iterator over one scheduled request's pieces; ``result`` holds the :class:`Generation` at the end.

    :meth:`wait_started` blocks until the request was planned and returns its queue wait, or raises the planning
    error. Iterating raises the request's error if it failed; :meth:`close` cancels it (``result`` stays ``None``).
    """

    def __init__(self, scheduler: BatchScheduler, job: Job) -> None:
        self._events: queue.Queue[Any] = queue.Queue()
        self._started: Started | Failed | None = None
        self.result: Generation | None = None
        self.queue_s = 0.0
        self.ticket = scheduler.submit(job, self._events.put)

    def wait_started(self, timeout: float | None = None) -> float:
        while self._started is None:
            event = self._events.get(timeout=timeout)
            if isinstance(event, (Started, Failed)):
                self._started = event
            else:  # pragma: no cover - Started always comes first
                raise AssertionError(f"unexpected event before Started: {event!r}")
        if isinstance(self._started, Failed):
            raise self._started.error
        self.queue_s = self._started.queue_s
        return self.queue_s

    def __iter__(self) -> Iterator[str]:
        self.wait_started()
        while True:
            event = self._events.get()
            if isinstance(event, str):
                yield event
            elif isinstance(event, Finished):
                self.result = event.generation
                return
            else:
                assert isinstance(event, Failed)
                if isinstance(event.error, RequestCancelledError) and self.ticket.cancelled:
                    return
                raise event.error

    def close(self) -> None:
        self.ticket.cancel()
