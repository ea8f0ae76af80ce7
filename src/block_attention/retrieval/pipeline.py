"""End-to-end RAG: retrieve passages, turn each into a block keyed by its passage id, answer with the engine.

The retriever is the segmentation step: one retrieved passage = one block = one cache entry. Passages are placed
in the retriever's rank order (``order="ranked"``) or reversed so the best passage sits nearest the question
(``order="reversed"``). Deleting passages through the pipeline also drops their KV from the engine's store.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from block_attention.core.blocks import Block
from block_attention.core.config import GenerationConfig, Mode
from block_attention.core.errors import ConfigError
from block_attention.core.prompt import Message
from block_attention.engine.engine import BlockAttentionEngine, Generation, RequestStats, WarmReport


class _Passage(Protocol):
    passage_id: str

    def to_block(self, score: float | None = None) -> Block: ...


class _Scored(Protocol):
    passage: _Passage
    score: float

    def to_block(self) -> Block: ...


class RetrieverLike(Protocol):
    def search(self, query: str, top_k: int = 5) -> list[Any]: ...


@dataclass(frozen=True)
class PipelineConfig:
    top_k: int = 4
    order: Literal["ranked", "reversed"] = "ranked"

    def __post_init__(self) -> None:
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0, got {self.top_k}.")
        if self.order not in ("ranked", "reversed"):
            raise ConfigError(f"order must be 'ranked' or 'reversed', got {self.order!r}.")


@dataclass(frozen=True)
class Answer:
    """A pipeline answer: text, the passages it was given (best first) and what it cost."""

    question: str
    text: str
    sources: tuple[Any, ...]  # ScoredPassage, best first
    stats: RequestStats
    retrieval_s: float
    finish_reason: str

    @property
    def ttft_s(self) -> float:
        """Time to first token including retrieval."""
        return self.retrieval_s + self.stats.ttft_s

    def as_dict(self) -> dict[str, Any]:
        return {
            "question": self.question,
            "answer": self.text,
            "finish_reason": self.finish_reason,
            "sources": [{"id": s.passage.passage_id, "title": getattr(s.passage, "title", None),
                         "score": float(s.score)} for s in self.sources],
            "timing": {"retrieval_s": self.retrieval_s, "ttft_s": self.ttft_s, "engine_ttft_s": self.stats.ttft_s,
                       "total_s": self.retrieval_s + self.stats.total_s},
            "cache": {"memory_hits": self.stats.memory_hits, "disk_hits": self.stats.disk_hits,
                      "misses": self.stats.misses, "blocks": self.stats.blocks},
            "stats": self.stats.as_dict(),
        }


@dataclass
class AnswerStream:
    """Iterate text deltas; ``result`` holds the :class:`Answer` once the stream is exhausted."""

    _pieces: Iterator[str]
    _finish: Any
    result: Answer | None = field(default=None)

    def __iter__(self) -> Iterator[str]:
        yield from self._pieces
        self.result = self._finish()


class RAGPipeline:
    def __init__(self, retriever: RetrieverLike, engine: BlockAttentionEngine,
                 config: PipelineConfig | None = None) -> None:
        self.retriever = retriever
        self.engine = engine
        self.config = config or PipelineConfig()

    def close(self) -> None:
        """Close the engine (and the KV store it built) and the retriever."""
        self.engine.close()
        close = getattr(self.retriever, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> "RAGPipeline":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def retrieve(self, question: str, top_k: int | None = None) -> list[Any]:
        k = self.config.top_k if top_k is None else top_k
        return list(self.retriever.search(question, top_k=k)) if k > 0 else []

    def blocks(self, sources: Sequence[_Scored]) -> list[Block]:
        """Blocks in prompt order for ranked ``sources`` (best first)."""
        blocks = [s.to_block() for s in sources]
        return blocks[::-1] if self.config.order == "reversed" else blocks

    def stream(self, question: str, *, top_k: int | None = None, mode: Mode | None = None,
               history: Sequence[Message] = (), system: str | None = None,
               generation: GenerationConfig | None = None, **overrides: Any) -> AnswerStream:
        t0 = time.perf_counter()
        sources = tuple(self.retrieve(question, top_k))
        retrieval_s = time.perf_counter() - t0
        text_stream = self.engine.stream(self.blocks(sources), question, system=system, history=history, mode=mode,
                                         generation=generation, **overrides)

        def finish() -> Answer:
            gen: Generation | None = text_stream.result
            assert gen is not None
            return Answer(question, gen.text, sources, gen.stats, retrieval_s, gen.finish_reason)

        return AnswerStream(iter(text_stream), finish)

    def answer(self, question: str, **kwargs: Any) -> Answer:
        """Retrieve, then generate. Keyword arguments as for :meth:`stream`."""
        stream = self.stream(question, **kwargs)
        for _ in stream:
            pass
        assert stream.result is not None
        return stream.result

    def warm(self, show_progress: bool = True, system: str | None = None) -> WarmReport:
        """Precompute the KV of every passage in the retriever (TurboRAG-style offline encoding)."""
        blocks = [p.to_block() for p in self.retriever.passages()]  # type: ignore[attr-defined]
        return self.engine.warm(blocks, system=system, show_progress=show_progress)

    def delete(self, ids: Sequence[str]) -> list[str]:
        """Delete documents or passages from the retriever and drop the removed passages' KV from the store."""
        removed = list(self.retriever.delete(list(ids)))  # type: ignore[attr-defined]
        if self.engine.store is not None:
            for pid in removed:
                self.engine.store.delete_doc(pid)
        return removed
