"""The offline end-to-end demo: ingest the packaged corpus, ask questions cold, warm and in full mode.

Prints which model it uses and what quality to expect, the answers, their sources, and a TTFT / cache table.
The retriever and the engine (with its disk tier) are closed before the temporary directory is removed.
The default model is :func:`block_attention.models.default_model`: the best offline reader installed (the
block-fine-tuned SmolLM2 adapter when packaged, else SmolLM2-135M-Instruct with its recommended recovery setting,
else ``tiny-random``). Answers stop at the first newline (:data:`DEMO_STOP`) or the model's end of turn.

:func:`answer_demo_questions` runs the same path (ingest a corpus folder, retrieve top 4, answer in one mode)
without printing: the reader's quality tests and its training report score its answers with it.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

DEMO_TOP_K = 4
DEMO_MAX_NEW_TOKENS = 48  # short answers; a real reader stops at its end-of-turn token well before
DEMO_STOP = ("\n",)  # one-line answers (tuned on held-out invented-fact data, not on the demo's questions)


@dataclass(frozen=True)
class DemoAnswer:
    """One demo question, its reference answer, the model's answer and the retrieved passage ids."""

    question: str
    reference: str
    answer: str
    passage_ids: tuple[str, ...]
    misses: int  # blocks of the answering request that were not cached (0 on a warm request)


def answer_demo_questions(model: str, *, corpus: str | Path | None = None, mode: str = "block",
                          workdir: str | Path | None = None, questions: Sequence[str] | None = None,
                          device: str | None = None, warm: bool = False) -> list[DemoAnswer]:
    """Ingest ``corpus`` (default: the packaged one), answer the demo questions through the demo's pipeline
    (``warm``: ask each question twice and report the second, cached, answer)."""
    from block_attention.core.packaged import demo_corpus_dir, demo_questions
    from block_attention.retrieval.pipeline import PipelineConfig, RAGPipeline
    from .models import load_engine
    from .retrieval import Retriever

    items = demo_questions()
    if questions is not None:
        items = [q for q in items if q.question in set(questions)]
    with tempfile.TemporaryDirectory(prefix="block-attention-demo-") as tmp:
        root = Path(workdir or tmp)
        with Retriever.create(root / "index") as retriever, \
                load_engine(model, device=device) as engine:
            retriever.ingest(Path(corpus) if corpus else demo_corpus_dir(), show_progress=False)
            pipe = RAGPipeline(retriever, engine, PipelineConfig(top_k=DEMO_TOP_K))
            out = []
            for item in items:
                for _ in range(2 if warm else 1):
                    result = pipe.answer(item.question, max_new_tokens=DEMO_MAX_NEW_TOKENS, mode=mode,
                                         stop=DEMO_STOP)
                out.append(DemoAnswer(item.question, item.answer, result.text.strip(),
                                      tuple(src.passage.passage_id for src in result.sources), result.stats.misses))
    return out


def run_demo(model: str | None = None, workdir: str | None = None, questions: int = 3,
             device: str | None = None) -> int:
    from block_attention.core.packaged import demo_corpus_dir, demo_questions
    from block_attention.retrieval.pipeline import PipelineConfig, RAGPipeline
    from .models import default_model, describe_model, expected_quality, load_engine
    from .retrieval import Retriever

    name, corpus = model or default_model(), demo_corpus_dir()
    all_questions = [q.question for q in demo_questions()]
    print("Block-Attention RAG demo (offline)")
    print(f"  model : {describe_model(name)}")
    print(f"  expect: {expected_quality(name)}")
    print(f"  corpus: {corpus}")
    print("  Other models (online): block-fine-tuned checkpoints such as hxia7/Llama-3.2-1B-Block-FT or "
          "ldsjmdy/Tulu3-Block-FT (the paper's Llama-3.1-8B); a model not block-fine-tuned, e.g. "
          "Qwen/Qwen2.5-1.5B-Instruct, loses answer quality in block mode (see docs/quality.md).\n")
    with tempfile.TemporaryDirectory(prefix="block-attention-demo-") as tmp:
        root = Path(workdir or tmp)
        with Retriever.create(root / "index") as retriever, \
                load_engine(name, cache_dir=root / "kv_cache", device=device) as engine:
            report = retriever.ingest(corpus, show_progress=False)
            print(f"ingested: {report.summary()}")
            pipe = RAGPipeline(retriever, engine, PipelineConfig(top_k=DEMO_TOP_K))
            rows = []
            for question in all_questions[:questions]:
                print(f"\nQ: {question}")
                cold = pipe.answer(question, max_new_tokens=DEMO_MAX_NEW_TOKENS, stop=DEMO_STOP)
                warm = pipe.answer(question, max_new_tokens=DEMO_MAX_NEW_TOKENS, stop=DEMO_STOP)
                full = pipe.answer(question, max_new_tokens=DEMO_MAX_NEW_TOKENS, mode="full", stop=DEMO_STOP)
                print(f"A (block): {cold.text.strip()!r}")
                print(f"A (full) : {full.text.strip()!r}")
                for i, src in enumerate(cold.sources, 1):
                    print(f"   [{i}] {src.score:.3f} {src.passage.passage_id}")
                rows.append((question, cold, warm, full))
    print("\n  question                               | block cold | block warm | full     | warm hits")
    print("  " + "-" * 94)
    for question, cold, warm, full in rows:
        print(f"  {question[:38]:38} | {cold.stats.ttft_s * 1e3:8.1f}ms | {warm.stats.ttft_s * 1e3:8.1f}ms | "
              f"{full.stats.ttft_s * 1e3:6.1f}ms | {warm.stats.hits}/{warm.stats.blocks}")
    print("\n  (engine TTFT on this machine; speedups grow with context length: see docs/benchmarks.md)")
    print(json.dumps({"model": name, "questions": len(rows),
                      "warm_all_hits": all(w.stats.misses == 0 for _, _, w, _ in rows),
                      "block_equals_warm": all(c.text == w.text for _, c, w, _ in rows)}))
    return 0
