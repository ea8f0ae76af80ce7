"""The engine's thread contract (issue #25): two threads on one engine with the fused cold prefill give the
single-thread outputs, and the model's attention implementation is restored afterwards."""

from __future__ import annotations

import threading

import pytest
import torch

from block_attention import Block, BlockAttentionEngine, EngineConfig
from block_attention.engine.fused import FusedUnsupported, fused_refusal
from block_attention.engine.threads import model_lock
from block_attention.testing import tiny_model

ROUNDS = 6  # per thread; every request cold (distinct passages, no store)


def _requests(thread: int) -> list[tuple[list[Block], str]]:
    return [([Block(f"Passage {thread}-{i} tells of harbour {i * 7 + thread} and its lighthouse keeper.",
                    f"d{thread}-{i}-a"),
              Block(f"The keeper {thread}.{i} counted {i + 3} ships in the fog.", f"d{thread}-{i}-b")],
             f"How many ships did keeper {thread}.{i} count?") for i in range(ROUNDS)]


def _engine(model: torch.nn.Module, tok) -> BlockAttentionEngine:
    engine = BlockAttentionEngine(model, tok, EngineConfig(cold_prefill="fused"), store=False)
    calls = []
    fused = engine.prefill_fused

    def counted(*args, **kwargs):
        calls.append(1)
        return fused(*args, **kwargs)

    engine.prefill_fused = counted  # type: ignore[method-assign]
    engine.fused_calls = calls  # type: ignore[attr-defined]
    return engine


def _separate(model: torch.nn.Module, tok) -> BlockAttentionEngine:
    return BlockAttentionEngine(model, tok, EngineConfig(cold_prefill="separate"), store=False)


def test_two_threads_on_one_engine_match_one_thread(tok):
    model = tiny_model("llama", seed=0)
    original = model.config._attn_implementation
    engine = _engine(model, tok)
    expected = {t: [engine.generate(blocks, q, max_new_tokens=6, stop_on_eos=False).token_ids
                    for blocks, q in _requests(t)] for t in (0, 1)}
    reference_logits = {t: [engine.prefill(blocks, q).logits for blocks, q in _requests(t)] for t in (0, 1)}
    assert len(engine.fused_calls) == 4 * ROUNDS  # every request took the fused path
    got: dict[int, list] = {}
    logits: dict[int, list] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def work(t: int) -> None:
        try:
            start.wait()
            got[t] = [engine.generate(blocks, q, max_new_tokens=6, stop_on_eos=False).token_ids
                      for blocks, q in _requests(t)]
            logits[t] = [engine.prefill(blocks, q).logits for blocks, q in _requests(t)]
        except BaseException as exc:  # noqa: BLE001  (re-raised below, in the test's thread)
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert model.config._attn_implementation == original
    assert len(engine.fused_calls) == 8 * ROUNDS and fused_refusal(model) is None
    assert got == expected
    for t in (0, 1):
        assert all(torch.equal(a, b) for a, b in zip(logits[t], reference_logits[t]))


def test_engines_on_one_model_share_one_lock(tok):
    model = tiny_model("llama", seed=0)
    first, second = _engine(model, tok), _engine(model, tok)
    assert first.lock is second.lock is model_lock(model)
    assert model_lock(tiny_model("llama", seed=0)) is not first.lock


def test_only_a_structural_refusal_switches_fused_off_for_the_model(tok, monkeypatch):
    model = tiny_model("llama", seed=0)
    engine, other = _engine(model, tok), _engine(model, tok)
    blocks, question = _requests(0)[0]
    expected = _separate(model, tok).prefill(blocks, question).logits
    reasons = iter([FusedUnsupported("one request's window"), FusedUnsupported("soft-capped", structural=True)])

    def refuse(*args, **kwargs):
        raise next(reasons)

    monkeypatch.setattr(engine, "prefill_fused", refuse)
    assert torch.equal(engine.prefill(blocks, question).logits, expected)  # this request fell back
    assert fused_refusal(model) is None
    assert torch.equal(engine.prefill(blocks, question).logits, expected)
    assert fused_refusal(model) == "soft-capped"  # recorded for the model: every engine on it skips fused
    calls = len(other.fused_calls)
    assert torch.equal(other.prefill(blocks, question).logits, expected) and len(other.fused_calls) == calls


def test_another_failure_falls_back_for_that_request_only(tok, monkeypatch):
    model = tiny_model("llama", seed=0)
    engine = _engine(model, tok)
    blocks, question = _requests(1)[0]
    expected = _separate(model, tok).prefill(blocks, question).logits
    monkeypatch.setattr(engine, "prefill_fused", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    assert torch.equal(engine.prefill(blocks, question).logits, expected)
    assert fused_refusal(model) is None
    with pytest.raises(RuntimeError):  # the separate path's own errors still surface
        monkeypatch.setattr(engine, "encode", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("real")))
        engine.prefill(blocks, question)
