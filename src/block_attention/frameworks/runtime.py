"""Runtime helpers every integration shares: the lazy engine holder, async iteration, the stats dictionary.

* :class:`LazyEngine` holds either an injected engine (objects sharing one engine share its KV cache) or a model
  name loaded on first use, once, under a lock, with :func:`block_attention.models.load_engine` (the library's
  single factory: built-in offline names, local folders, hub ids). Copies made with ``copy.deepcopy`` share the
  engine (weights are never copied); pickling keeps the name and load options and drops an engine loaded from
  the name (it is loaded again on first use after unpickling). An injected engine is pickled with the holder.
* :func:`iterate_in_thread` runs a blocking iterator (an engine stream) from async code, one ``next`` per
  worker-thread hop, so the event loop is never blocked by decoding.
* :func:`stats_metadata` is the request-stats dictionary frameworks expose (LangChain ``response_metadata`` /
  ``generation_info``, LlamaIndex ``Response.metadata``): cache hits per tier and in total, misses, TTFT, dropped
  block ids, token counts and stage times (:meth:`block_attention.RequestStats.as_dict`).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from block_attention.core.errors import ConfigError

if TYPE_CHECKING:
    from block_attention.engine.engine import BlockAttentionEngine
    from block_attention.engine.stages import RequestStats

T = TypeVar("T")


class LazyEngine:
    """An injected engine, or one loaded from ``name`` on first :meth:`get` (see the module docstring)."""

    def __init__(self, name: str | None = None, *, engine: BlockAttentionEngine | None = None,
                 load_kwargs: Mapping[str, Any] | None = None) -> None:
        if engine is None and not name:
            raise ConfigError("A block-attention model needs a model name (hub id, local folder or 'tiny-random') "
                              "or an engine=BlockAttentionEngine(model, tokenizer).")
        if engine is not None and not (hasattr(engine, "stream") and hasattr(engine, "generate")):
            raise ConfigError(f"engine must be a block_attention.BlockAttentionEngine, got {type(engine).__name__}; "
                              "build one with BlockAttentionEngine(model, tokenizer) or pass a model name instead.")
        self.name = name
        self.load_kwargs = dict(load_kwargs or {})
        self._injected = engine
        self._loaded: BlockAttentionEngine | None = None
        self._lock = threading.Lock()

    def get(self) -> BlockAttentionEngine:
        """The engine, loaded from ``name`` on the first call when none was injected."""
        if self._injected is not None:
            return self._injected
        if self._loaded is None:
            with self._lock:
                if self._loaded is None:
                    from ..models import load_engine

                    self._loaded = load_engine(str(self.name), **self.load_kwargs)
        return self._loaded

    @property
    def loaded(self) -> bool:
        return self._injected is not None or self._loaded is not None

    @property
    def current(self) -> BlockAttentionEngine | None:
        """The engine if it exists, without loading it."""
        return self._injected if self._injected is not None else self._loaded

    def __getstate__(self) -> dict[str, Any]:
        return {"name": self.name, "load_kwargs": self.load_kwargs, "engine": self._injected}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["name"], engine=state["engine"], load_kwargs=state["load_kwargs"])  # type: ignore[misc]

    def __deepcopy__(self, memo: dict[int, Any]) -> "LazyEngine":
        twin = LazyEngine(self.name, engine=self._injected, load_kwargs=self.load_kwargs)
        twin._loaded = self._loaded  # share, never copy, the weights
        return twin


async def iterate_in_thread(items: Iterator[T]) -> AsyncIterator[T]:
    """Iterate a blocking iterator from async code, one ``next`` per worker-thread hop."""
    done = object()
    while (item := await asyncio.to_thread(next, items, done)) is not done:
        yield item  # type: ignore[misc]


def stats_metadata(stats: RequestStats) -> dict[str, Any]:
    """The request-stats dictionary integrations expose (see the module docstring)."""
    return stats.as_dict()


__all__ = ["LazyEngine", "iterate_in_thread", "stats_metadata"]
