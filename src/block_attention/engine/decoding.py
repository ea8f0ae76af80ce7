"""The decoding state of one request: every rule of the decode loop, shared by sequential and batched decoding.

:class:`DecodeState` holds a request's token selector (greedy or its own seeded sampler), text tracker (stop
strings, stream-safe pieces), cache, next position id, step count, finish reason and time to first token. The
caller runs the model; the state decides:

* :meth:`DecodeState.push` takes the next-token logits row ``[V]``, selects the token and returns the text piece
  that became safe to stream ("" when none). It finishes the request on EOS (``stop_on_eos``), a stop string, or
  ``max_new_tokens``; otherwise :attr:`DecodeState.next_input` is the ``(token, position)`` the model must run
  next (the caller stores the grown cache back in :attr:`DecodeState.cache` when it keeps one per request).
* :func:`decode_step` runs one request's next token through its own cache (the sequential step, also the batch
  scheduler's one-by-one fallback).
* :meth:`DecodeState.flush` returns the held-back tail once finished, :meth:`DecodeState.result` the
  :class:`~block_attention.engine.stages.Generation` with the request's stats.

:meth:`BlockAttentionEngine.decode <block_attention.engine.BlockAttentionEngine.decode>` (one request) and
:class:`~block_attention.serving.batching.BatchScheduler` (many requests, one forward per step) both drive this
class, so stop/EOS/max-token/TTFT semantics are identical by construction.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from transformers import DynamicCache

from block_attention.core.config import GenerationConfig
from block_attention.hf.compat import cache_kwargs, output_cache
from .generation import TextTracker, TokenSelector
from .stages import Generation, Prefilled, RequestPlan, RequestStats
from .threads import model_lock


class DecodeState:
    """One request's decoding state (see the module docstring). ``trace``: the stage results of
    :meth:`RequestStats.of` (``lookup``, ``encoded``, ``assembled``) used for the final stats."""

    def __init__(self, engine: Any, plan: RequestPlan, prefilled: Prefilled, generation: GenerationConfig,
                 trace: dict[str, Any] | None = None) -> None:
        self.plan = plan
        self.prefilled = prefilled
        self.generation = generation
        self.trace = dict(trace or {})
        self.eos_ids: frozenset[int] = engine.eos_ids
        self.select = TokenSelector(generation, engine.device)
        self.tracker = TextTracker(engine.tokenizer, generation.stop)
        self.cache: DynamicCache | None = prefilled.cache  # None while a batch holds this request's rows
        self.position = prefilled.position  # position id of the next token fed to the model
        self.steps = 0  # tokens selected so far
        self.ttft = 0.0
        self.finish_reason: str | None = None if generation.max_new_tokens > 0 else "length"
        self.next_input: tuple[int, int] | None = None  # (token, position) to run next, while not finished

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def push(self, logits: torch.Tensor) -> str:
        """Select the next token from ``logits [V]``; return the new stream-safe text ("" when none)."""
        assert not self.finished, "push() after the request finished"
        token = self.select(logits)
        if self.steps == 0:
            self.ttft = time.perf_counter() - self.plan.started
        self.steps += 1
        self.next_input = None
        if self.generation.stop_on_eos and token in self.eos_ids:
            self.finish_reason = "eos"
            return ""
        self.tracker.push(token)
        if self.tracker.stopped:
            self.finish_reason = "stop"
            return ""
        piece = self.tracker.delta()
        if self.steps == self.generation.max_new_tokens:
            self.finish_reason = "length"
        else:
            self.next_input = (token, self.position)
            self.position += 1
        return piece

    def flush(self) -> str:
        """The rest of the text once finished (held-back tails, the text before a stop string)."""
        assert self.finished, "flush() before the request finished"
        return self.tracker.delta(final=True)

    def result(self) -> Generation:
        """The finished request's :class:`Generation` (stats measured from the plan's start until now)."""
        assert self.finished, "result() before the request finished"
        stats = RequestStats.of(self.plan, **self.trace, prefilled=self.prefilled, ttft_s=self.ttft,
                                total_s=time.perf_counter() - self.plan.started,
                                new_tokens=len(self.tracker.token_ids))
        return Generation(self.tracker.text, tuple(self.tracker.token_ids), self.finish_reason or "length", stats)


@torch.inference_mode()
def decode_step(model: torch.nn.Module, state: DecodeState, device: torch.device) -> torch.Tensor:
    """Run ``state.next_input`` through ``state.cache`` (grown in place and stored back); the next logits ``[V]``."""
    assert state.next_input is not None and state.cache is not None
    token, position = state.next_input
    with model_lock(model):
        out = model(input_ids=torch.tensor([[token]], device=device),
                    position_ids=torch.tensor([[position]], device=device), **cache_kwargs(model, state.cache),
                    use_cache=True, logits_to_keep=1)
    state.cache = output_cache(out)
    return out.logits[0, -1]  # [V]
