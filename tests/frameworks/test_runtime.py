"""Lazy engine holder (one factory, copy/pickle rules), async stream iteration, sampling and roles."""

from __future__ import annotations

import asyncio
import copy
import pickle

import pytest

from block_attention.core.errors import ConfigError
from block_attention.frameworks.options import engine_role, sampling_from
from block_attention.frameworks.runtime import LazyEngine, iterate_in_thread, stats_metadata


def test_lazy_engine_loads_once_and_copies_share_it() -> None:
    holder = LazyEngine("tiny-random", load_kwargs={"store": False})
    assert not holder.loaded and pickle.loads(pickle.dumps(holder)).name == "tiny-random"
    engine = holder.get()
    assert holder.get() is engine and engine.store is None
    assert copy.deepcopy(holder).get() is engine
    revived = pickle.loads(pickle.dumps(holder))
    assert not revived.loaded and revived.load_kwargs == {"store": False}
    with pytest.raises(ConfigError, match="model name"):
        LazyEngine()


def test_iterate_in_thread_and_stats() -> None:
    from block_attention.models import load_engine

    engine = load_engine("tiny-random")
    stream = engine.stream(["A passage."], "Why?", max_new_tokens=3)

    async def collect() -> list[str]:
        return [piece async for piece in iterate_in_thread(iter(stream))]

    pieces = asyncio.run(collect())
    assert "".join(pieces) == stream.result.text
    stats = stats_metadata(stream.result.stats)
    assert stats["misses"] == 2 and stats["hits"] == 0 and stats["dropped"] == [] and stats["ttft_s"] > 0


def test_sampling_and_roles() -> None:
    greedy = sampling_from(max_new_tokens=4, temperature=0, top_p=0.5, stop="x")
    assert not greedy.do_sample and greedy.top_p == 1.0 and greedy.stop == ("x",)
    sampled = sampling_from(max_new_tokens=4, temperature=0.7, top_p=0.9, top_k=5, seed=1)
    assert sampled.do_sample and (sampled.temperature, sampled.top_p, sampled.top_k, sampled.seed) == (0.7, 0.9, 5, 1)
    with pytest.raises(ConfigError):
        sampling_from(max_new_tokens=4, temperature=-1)
    assert [engine_role(r) for r in ("human", "AI", "chatbot", "developer", "tool")] == [
        "user", "assistant", "assistant", "system", None]
