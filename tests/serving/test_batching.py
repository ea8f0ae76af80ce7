"""BatchScheduler: concurrent requests decoded in one batched forward per step give exactly what ``engine.generate``
gives for each request alone (pieces, text, token ids, finish reason), on batchable models (Llama, Qwen2) and on
sliding-window models stepped one by one (Mistral, Gemma2). Arrivals are staggered deterministically: later
requests are submitted from the scheduler's own step callback, so they join while others are mid-decode.
"""

from __future__ import annotations

import dataclasses
import threading

import pytest
import torch
from transformers import DynamicCache

from block_attention import Block, BlockAttentionEngine
from block_attention.core.errors import ConfigError, ContextTooLongError, RequestCancelledError, SchedulerClosedError
from block_attention.engine.decoding import DecodeState, decode_step
from block_attention.serving.batching import (BatchScheduler, Failed, Finished, PaddedBatch, Started, batchable_model,
                                      plain_cache)
from block_attention.testing import ARCHITECTURES, architecture_model, tiny_model

PASSAGES = [
    "The lighthouse of Alexandria stood on the island of Pharos for sixteen centuries.",
    "Block attention caches each retrieved passage separately and reuses it in any order.",
    "The quick brown fox jumps over the lazy dog; it did so in 1999 and again in 2004.",
    "Users ask questions about documents, and the model answers with facts from the passage.",
    "Rock lighthouses were built on reefs far from shore, lit by oil lamps and later by electricity.",
]
MAX_TOKENS = (20, 16, 14, 9, 12, 5, 18, 7)


def _model(name: str) -> torch.nn.Module:
    if name in ("llama", "qwen2"):
        return tiny_model(name, seed=0)
    return architecture_model(name, attn_implementation=ARCHITECTURES[name].attn_implementations()[0])


def _requests(engine: BlockAttentionEngine) -> list[dict]:
    """Eight requests: different context lengths, modes, lengths; two end on a stop string taken from their own
    free-running answer (so the stop path is certainly taken)."""
    requests = []
    for i in range(8):
        blocks = [Block(PASSAGES[i % 5] * (1 + i % 3), f"doc-{i % 5}-{i % 3}"),
                  Block(f"Note {i}: lighthouse number {i} has {i + 3} floors.", f"note-{i}")]
        requests.append(dict(blocks=blocks[: 1 + i % 2] if i != 4 else [], question=f"Question {i}: where?",
                             mode="full" if i % 3 == 0 else "block", max_new_tokens=MAX_TOKENS[i]))
    for i in (3, 6):
        free = engine.generate(**requests[i]).text
        requests[i]["stop"] = (free[4:6],)
    return requests


def _alone(engine: BlockAttentionEngine, request: dict) -> tuple[list[str], object]:
    stream = engine.stream(**request)
    return list(stream), stream.result


class Collector:
    """Events of every request in arrival order (the scheduler's ``deliver`` callbacks)."""

    def __init__(self, n: int) -> None:
        self.log: list[tuple[int, object]] = []
        self.ended = threading.Semaphore(0)
        self.n = n

    def deliver(self, i: int):
        def take(event: object) -> None:
            self.log.append((i, event))
            if isinstance(event, (Finished, Failed)):
                self.ended.release()
        return take

    def wait(self) -> None:
        for _ in range(self.n):
            assert self.ended.acquire(timeout=120), "a request never ended"

    def pieces(self, i: int) -> list[str]:
        return [e for j, e in self.log if j == i and isinstance(e, str)]

    def end(self, i: int) -> object:
        return next(e for j, e in self.log if j == i and isinstance(e, (Finished, Failed)))

    def index(self, i: int, kind: type) -> int:
        return next(k for k, (j, e) in enumerate(self.log) if j == i and isinstance(e, kind))


def hold(scheduler: BatchScheduler) -> threading.Event:
    """Occupy the model thread until the returned gate is set, so that submissions queue up meanwhile."""
    gate, entered = threading.Event(), threading.Event()
    scheduler.call(lambda _: (entered.set(), gate.wait(60)))
    assert entered.wait(60)
    return gate


def job(engine: BlockAttentionEngine, request: dict):
    return lambda: engine.plan_request(**request)


@pytest.mark.parametrize("name", ["llama", "qwen2", "Mistral", "Gemma2"])
def test_staggered_requests_equal_sequential_generation(name, tok, one_thread):
    engine = BlockAttentionEngine(_model(name), tok, store=False)
    requests = _requests(engine)
    reference = [_alone(engine, r) for r in requests]
    assert [g.finish_reason for _, g in reference].count("stop") == 2
    waves = {0: [0, 1, 2], 2: [3, 4, 5], 5: [6, 7]}  # at decode step -> requests submitted then
    collector = Collector(8)
    scheduler: BatchScheduler

    def submit(indices: list[int]) -> None:
        for i in indices:
            scheduler.submit(job(engine, requests[i]), collector.deliver(i))

    def on_step(rows: int) -> None:
        submit(waves.get(scheduler.stats.steps, []))

    scheduler = BatchScheduler(engine, max_batch=8, on_step=on_step)
    gate = hold(scheduler)
    submit(waves[0])
    gate.set()
    collector.wait()
    scheduler.close()
    for i, (pieces, generation) in enumerate(reference):
        end = collector.end(i)
        assert isinstance(end, Finished), (i, end)
        got = end.generation
        assert (got.text, got.token_ids, got.finish_reason) == \
            (generation.text, generation.token_ids, generation.finish_reason), i
        assert collector.pieces(i) == pieces, i
    # Requests 3-7 started while 0-2 were decoding (interleaved in both modes).
    assert collector.index(7, Started) < collector.index(0, Finished)
    batched = name in ("llama", "qwen2")
    assert batchable_model(engine.model) is batched and scheduler.stats.fallback is not batched
    if batched:  # the first two waves (six requests, none near its end) decode together after step 2
        assert scheduler.stats.max_rows >= 6
    else:
        assert scheduler.stats.max_rows == 1
    # one decode forward row per selected token but the last of each request
    assert scheduler.stats.rows == sum(len(g.token_ids) + (g.finish_reason == "eos") - 1 for _, g in reference)
    assert scheduler.pending == 0


def test_seeded_sampling_is_the_same_batched_or_alone(tok, llama, one_thread):
    engine = BlockAttentionEngine(llama, tok, store=False)
    requests = [dict(blocks=[Block(PASSAGES[i], f"d{i}")], question=f"Q{i}?", max_new_tokens=12,
                     do_sample=i < 3, temperature=1.3, top_k=50 if i == 1 else 0, top_p=0.9 if i == 2 else 1.0,
                     seed=11 + i, stop_on_eos=False) for i in range(5)]
    reference = [engine.generate(**r).token_ids for r in requests]
    scheduler = BatchScheduler(engine, max_batch=8)
    gate = hold(scheduler)
    streams = [scheduler.stream(job(engine, r)) for r in requests]
    gate.set()
    results = []
    for stream in streams:
        text = "".join(stream)
        assert text == stream.result.text
        results.append(stream.result.token_ids)
    scheduler.close()
    assert results == reference
    assert scheduler.stats.max_rows == 5
    greedy = engine.generate(**{**requests[0], "do_sample": False}).token_ids
    assert reference[0] != greedy  # the oracle: these requests really sample


def test_cancelled_request_leaves_the_batch_and_others_finish_identically(tok, llama, one_thread):
    engine = BlockAttentionEngine(llama, tok, store=False)
    requests = [dict(blocks=[Block(PASSAGES[i], f"d{i}")], question=f"Q{i}?", max_new_tokens=n, stop_on_eos=False)
                for i, n in enumerate((40, 12, 10))]
    reference = [engine.generate(**r) for r in requests]
    collector = Collector(3)
    rows: list[int] = []
    tickets = []

    def on_step(n: int) -> None:
        rows.append(n)
        if len(rows) == 3:
            tickets[0].cancel()

    scheduler = BatchScheduler(engine, max_batch=8, on_step=on_step)
    gate = hold(scheduler)
    tickets.extend(scheduler.submit(job(engine, r), collector.deliver(i)) for i, r in enumerate(requests))
    gate.set()
    collector.wait()
    scheduler.close()
    end = collector.end(0)
    assert isinstance(end, Failed) and isinstance(end.error, RequestCancelledError)
    assert rows[:3] == [3, 3, 3] and rows[3] == 2  # the cancelled row is gone at the next step
    assert len(rows) == 11 and len(collector.pieces(0)) <= 4  # far fewer than its 40 tokens
    for i in (1, 2):
        assert collector.end(i).generation.token_ids == reference[i].token_ids
    assert scheduler.pending == 0


def test_a_failing_request_does_not_affect_the_others(tok, llama, one_thread):
    engine = BlockAttentionEngine(llama, tok, store=False)
    good = [dict(blocks=[Block(PASSAGES[i], f"d{i}")], question=f"Q{i}?", max_new_tokens=10) for i in range(2)]
    reference = [engine.generate(**r) for r in good]

    def broken_prefill():
        plan, generation = engine.plan_request(**good[0])
        layout = dataclasses.replace(plan.layout, final_ids=plan.layout.final_ids + (10**6,))  # not in the vocab
        return dataclasses.replace(plan, layout=layout), generation

    jobs = [job(engine, good[0]), job(engine, {**good[1], "max_new_tokens": 10**6}), broken_prefill,
            job(engine, good[1])]
    collector = Collector(4)
    scheduler = BatchScheduler(engine, max_batch=8)
    gate = hold(scheduler)
    for i, j in enumerate(jobs):
        scheduler.submit(j, collector.deliver(i))
    gate.set()
    collector.wait()
    scheduler.close()
    planning = collector.end(1)
    assert isinstance(planning, Failed) and isinstance(planning.error, ContextTooLongError)
    assert not any(isinstance(e, Started) for j, e in collector.log if j == 1)  # failed before it started
    prefill = collector.end(2)
    assert isinstance(prefill, Failed) and isinstance(prefill.error, IndexError)
    assert collector.index(2, Started) < collector.index(2, Failed)
    assert [collector.end(i).generation.token_ids for i in (0, 3)] == [g.token_ids for g in reference]
    assert scheduler.stats.max_rows == 2


def test_max_batch_one_serves_requests_one_at_a_time(tok, llama, one_thread):
    engine = BlockAttentionEngine(llama, tok, store=False)
    requests = [dict(blocks=[Block(PASSAGES[i], f"d{i}")], question=f"Q{i}?", max_new_tokens=6) for i in range(4)]
    reference = [engine.generate(**r) for r in requests]
    collector = Collector(4)
    scheduler = BatchScheduler(engine, max_batch=1)
    gate = hold(scheduler)
    for i, r in enumerate(requests):
        scheduler.submit(job(engine, r), collector.deliver(i))
    gate.set()
    collector.wait()
    scheduler.close()
    for i in range(3):  # arrival order, each ends before the next starts
        assert collector.index(i, Finished) < collector.index(i + 1, Started)
    assert [collector.end(i).generation.token_ids for i in range(4)] == [g.token_ids for g in reference]
    assert scheduler.stats.max_rows == 1 and not scheduler.stats.fallback


def test_close_fails_queued_requests_and_refuses_new_ones(tok, llama):
    engine = BlockAttentionEngine(llama, tok, store=False)
    scheduler = BatchScheduler(engine)
    collector = Collector(2)
    gate = hold(scheduler)
    for i in range(2):
        scheduler.submit(job(engine, dict(blocks=[], question="Q?", max_new_tokens=4)), collector.deliver(i))
    scheduler.close(timeout=0)
    gate.set()
    collector.wait()
    assert all(isinstance(collector.end(i), Failed) and isinstance(collector.end(i).error, SchedulerClosedError)
               for i in range(2))
    with pytest.raises(SchedulerClosedError, match="closed"):
        scheduler.submit(job(engine, dict(blocks=[], question="Q?")), lambda _: None)
    assert scheduler.pending == 0


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "8"])
def test_max_batch_is_validated(value, tok, llama):
    with pytest.raises(ConfigError, match="max_batch must be a positive integer"):
        BatchScheduler(BlockAttentionEngine(llama, tok, store=False), max_batch=value)


def test_padded_batch_joins_left_padded_and_trims_when_rows_leave(tok, llama, docs):
    engine = BlockAttentionEngine(llama, tok, store=False)
    states = []
    for i, blocks in enumerate([docs[:1], docs, []]):  # three different cache lengths
        plan, generation = engine.plan_request(blocks, f"Q{i}?", max_new_tokens=4)
        prefilled, *_ = engine.run_prefill(plan)
        assert plain_cache(prefilled.cache)
        states.append(DecodeState(engine, plan, prefilled, generation))
    lengths = [s.cache.get_seq_length() for s in states]
    originals = [[(layer.keys.clone(), layer.values.clone()) for layer in s.cache.layers] for s in states]
    assert len(set(lengths)) == 3
    batch = PaddedBatch(engine.device)
    for s in states:
        batch.add(s)
        assert s.cache is None
    assert batch.width == max(lengths) and batch.mask.sum(dim=1).tolist() == lengths
    assert all(bool(batch.mask[i, max(lengths) - n:].all()) for i, n in enumerate(lengths))  # left padding
    batch.keep([2, 0])  # the longest row leaves: the padding no kept row needs is trimmed
    assert batch.width == max(lengths[0], lengths[2]) and batch.rows == [states[2], states[0]]
    assert batch.cache.layers[0].keys.shape[0] == 2
    released = batch.release()
    assert released == [states[2], states[0]] and batch.rows == [] and batch.cache is None
    for i in (2, 0):
        assert states[i].cache.get_seq_length() == lengths[i]
        for layer, (k, v) in zip(states[i].cache.layers, originals[i]):
            assert torch.equal(layer.keys, k) and torch.equal(layer.values, v)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_padded_batch_step_matches_one_row_steps(family, tok, docs):
    """The batched forward's logits equal each row's own forward (rows of three lengths, block and full mode),
    across joins and a leave: the left padding is invisible and every row keeps its own positions."""
    model = tiny_model(family, seed=3)
    engine = BlockAttentionEngine(model, tok, store=False)

    def start(blocks, mode):
        plan, generation = engine.plan_request(blocks, "Where?", mode=mode, max_new_tokens=12, stop_on_eos=False)
        prefilled, *_ = engine.run_prefill(plan)
        pair = [DecodeState(engine, plan, prefilled, generation) for _ in range(2)]  # batched, alone
        pair[1].cache = DynamicCache(ddp_cache_data=[(layer.keys.clone(), layer.values.clone())
                                                     for layer in prefilled.cache.layers])
        for state in pair:
            state.push(prefilled.logits[-1])
        return pair

    batch = PaddedBatch(engine.device)
    rows = [start(docs, "block"), start(docs[:1], "full"), start([], "block")]
    batch.add(rows[0][0])
    batch.add(rows[1][0])
    for step in range(6):
        if step == 2:
            batch.add(rows[2][0])  # a shorter row joins mid-decode
        if step == 4:
            batch.keep([1, 2])  # the longest row leaves
        logits = batch.step(model)  # [B, V]
        for i, batched in enumerate(batch.rows):
            alone = next(pair[1] for pair in rows if pair[0] is batched)
            assert batched.next_input == alone.next_input
            expected = decode_step(model, alone, engine.device)  # [V]
            assert (logits[i] - expected).abs().max().item() < 1e-4, (step, i)
            batched.push(logits[i])
            alone.push(expected)


def test_close_resolves_queued_calls(tok, llama):
    """A call still queued when the scheduler closes gets SchedulerClosedError (its waiter never hangs)."""
    engine = BlockAttentionEngine(llama, tok, store=False)
    scheduler = BatchScheduler(engine)
    gate = hold(scheduler)
    queued = scheduler.call(lambda _: "ran")
    scheduler.close(timeout=0)
    gate.set()
    scheduler.close(timeout=None)  # the model thread has ended
    assert queued.done()
    with pytest.raises(SchedulerClosedError, match="closed"):
        queued.result(timeout=0)
    assert scheduler.pending == 0


def test_a_batched_row_does_not_keep_its_one_row_cache_alive(tok, llama, docs):
    """The batch takes over a row's prefill cache: the one-row tensors are freed, not held for the request's
    lifetime next to the batch's copy (twice the KV memory of every decoding request)."""
    import gc
    import weakref

    engine = BlockAttentionEngine(llama, tok, store=False)
    batch = PaddedBatch(engine.device)
    refs = []
    for blocks in (docs, docs[:1]):
        plan, generation = engine.plan_request(blocks, "Where?", max_new_tokens=4)
        prefilled, lookup, kvs, assembled = engine.run_prefill(plan)
        state = DecodeState(engine, plan, prefilled, generation,
                            {"lookup": lookup, "encoded": kvs, "assembled": assembled})
        refs += [weakref.ref(layer.keys) for layer in prefilled.cache.layers]
        del prefilled, assembled
        batch.add(state)
    gc.collect()
    assert all(ref() is None for ref in refs)
    assert len(batch.rows) == 2 and all(s.cache is None for s in batch.rows)


def test_a_request_that_cannot_join_the_batch_fails_alone(tok, llama, monkeypatch):
    """Growing the batch can run out of memory: that request fails (it does not wait forever) and the scheduler
    keeps serving the others."""
    engine = BlockAttentionEngine(llama, tok, store=False)
    request = dict(blocks=[], question="Q?", max_new_tokens=4)
    reference = engine.generate(**request)
    add = PaddedBatch.add
    calls = []

    def add_once_out_of_memory(self, state):
        calls.append(state)
        if len(calls) == 1:
            raise torch.OutOfMemoryError("out of memory while growing the batch")
        add(self, state)

    monkeypatch.setattr(PaddedBatch, "add", add_once_out_of_memory)
    collector = Collector(2)
    scheduler = BatchScheduler(engine)
    gate = hold(scheduler)
    for i in range(2):
        scheduler.submit(job(engine, request), collector.deliver(i))
    gate.set()
    while not any(j == 1 and isinstance(e, (Finished, Failed)) for j, e in collector.log):
        assert collector.ended.acquire(timeout=120), "a request never ended"
    scheduler.close(timeout=None)  # the model thread has ended: every event was delivered
    assert [j for j, e in collector.log if isinstance(e, (Finished, Failed))].count(0) == 1, "request 0 never ended"
    assert isinstance(collector.end(0), Failed) and isinstance(collector.end(0).error, torch.OutOfMemoryError)
    assert isinstance(collector.end(1), Finished) and collector.end(1).generation.token_ids == reference.token_ids
    assert scheduler.pending == 0


def test_a_bug_in_the_loop_fails_every_admitted_request(tok, llama, monkeypatch):
    """If the model thread itself fails (a bug), every request it had taken from the queue gets Failed, including
    the one it was starting and those admitted with it: none waits forever."""
    engine = BlockAttentionEngine(llama, tok, store=False)

    def broken_finish(self, ticket, state):
        raise RuntimeError("a bug in the scheduler")

    monkeypatch.setattr(BatchScheduler, "_finish", broken_finish)
    collector = Collector(3)
    scheduler = BatchScheduler(engine)
    gate = hold(scheduler)
    started = threading.Event()

    def deliver(i):
        take = collector.deliver(i)
        return lambda event: (take(event), isinstance(event, Started) and started.set())

    for i in range(3):  # max_new_tokens=1: each request finishes at its first token, in _finish
        scheduler.submit(job(engine, dict(blocks=[], question="Q?", max_new_tokens=1)), deliver(i))
    gate.set()
    assert started.wait(120)  # all three were admitted together
    scheduler.close(timeout=None)  # the model thread has ended: every event was delivered
    ends = [e for _, e in collector.log if isinstance(e, (Finished, Failed))]
    assert sorted(j for j, e in collector.log if isinstance(e, (Finished, Failed))) == [0, 1, 2]
    assert all(isinstance(e, Failed) for e in ends) and scheduler.pending == 0


def test_running_out_of_memory_when_rows_leave_fails_the_batch_not_the_scheduler(tok, llama, monkeypatch):
    """Selecting the rows that stay (a copy of the batch) can run out of memory: the rows still running fail, and
    the scheduler keeps serving new requests (it used to close for good: every later request was refused)."""
    engine = BlockAttentionEngine(llama, tok, store=False)
    short, long = (dict(blocks=[], question="Q?", max_new_tokens=n, stop_on_eos=False) for n in (2, 6))
    reference = engine.generate(**long)
    keep = PaddedBatch.keep
    failures = []

    def keep_out_of_memory_once(self, indices):
        if indices and indices != list(range(len(self.rows))) and not failures:
            failures.append(indices)
            raise torch.OutOfMemoryError("out of memory while selecting the rows that stay")
        keep(self, indices)

    monkeypatch.setattr(PaddedBatch, "keep", keep_out_of_memory_once)
    collector = Collector(2)
    scheduler = BatchScheduler(engine)
    gate = hold(scheduler)
    scheduler.submit(job(engine, short), collector.deliver(0))
    scheduler.submit(job(engine, long), collector.deliver(1))
    gate.set()
    collector.wait()
    assert failures == [[1]] and isinstance(collector.end(0), Finished)
    assert isinstance(collector.end(1), Failed) and isinstance(collector.end(1).error, torch.OutOfMemoryError)
    later = scheduler.generate(job(engine, long))
    scheduler.close()
    assert later.token_ids == reference.token_ids and scheduler.pending == 0


def test_run_here_runs_the_model_loop_on_the_calling_thread_until_closed(tok, llama):
    engine = BlockAttentionEngine(llama, tok, store=False)
    scheduler = BatchScheduler(engine)
    request = dict(blocks=[Block(PASSAGES[0], "p")], question="Where?", max_new_tokens=6)
    want = engine.generate(**request)
    seen, results = [], []

    def submit_then_close() -> None:  # the "HTTP side": submits once the loop is claimed, then shuts it down
        def planned():
            seen.append(threading.current_thread())
            return engine.plan_request(**request)

        results.append(scheduler.generate(planned))
        scheduler.close()

    host = threading.Thread(target=lambda: scheduler.run_here(ready=threading.Thread(target=submit_then_close).start))
    host.start()
    host.join(120)
    assert not host.is_alive() and seen == [host]  # planned, prefilled and decoded on the thread that called it
    assert results[0].token_ids == want.token_ids and scheduler.closed
    with pytest.raises(ConfigError, match="already has a model thread"):
        scheduler.run_here()


def test_run_here_refuses_a_scheduler_with_a_model_thread_and_a_failing_ready_closes_it(tok, llama):
    engine = BlockAttentionEngine(llama, tok, store=False)
    busy = BatchScheduler(engine)
    busy.generate(job(engine, dict(blocks=[], question="Q?", max_new_tokens=2)))  # starts its model thread
    with pytest.raises(ConfigError, match="already has a model thread"):
        busy.run_here()
    busy.close()

    fresh = BatchScheduler(engine)

    def broken() -> None:
        raise OSError("the port is taken")

    with pytest.raises(OSError, match="port"):
        fresh.run_here(ready=broken)
    assert fresh.closed
    with pytest.raises(SchedulerClosedError):
        fresh.submit(job(engine, dict(blocks=[], question="Q?")), lambda _: None)
