"""The offline end-to-end demo: ingest the packaged corpus, ask questions cold, warm and in full mode.

Prints which model it uses and what quality to expect, the answers, their sources, and a TTFT / cache table.
"""

from __future__ import annotations

import json
import tempfile
from importlib import resources
from pathlib import Path


def _data(name: str) -> Path:
    return Path(str(resources.files("block_attention") / "data" / name))


def _demo_material(model: str | None) -> tuple[str, Path, list[str]]:
    from .models import BUILTIN_FINETUNED, BUILTIN_RANDOM, finetuned_checkpoint

    synthetic = _data("synthetic_corpus")
    if model in (None, BUILTIN_FINETUNED) and finetuned_checkpoint() is not None and synthetic.is_dir():
        questions = json.loads((_data("synthetic_questions.json")).read_text())
        return BUILTIN_FINETUNED, synthetic, [q["question"] for q in questions]
    from .retrieval.demo import demo_corpus_dir, demo_questions

    return model or BUILTIN_RANDOM, demo_corpus_dir(), [q.question for q in demo_questions()]


def run_demo(model: str | None = None, workdir: str | None = None, questions: int = 3,
             device: str | None = None) -> int:
    from .cli import _report_line
    from .config import EngineConfig
    from .models import describe_model, load_engine
    from .pipeline import PipelineConfig, RAGPipeline
    from .retrieval import Retriever

    name, corpus, all_questions = _demo_material(model)
    print("Block-Attention RAG demo (offline)")
    print(f"  model : {describe_model(name)}")
    print(f"  corpus: {corpus}")
    print("  Other models (online): block-fine-tuned checkpoints such as hxia7/Llama-3.2-1B-Block-FT or "
          "ldsjmdy/Tulu3-Block-FT (the paper's Llama-3.1-8B); a model not block-fine-tuned, e.g. "
          "Qwen/Qwen2.5-1.5B-Instruct, loses answer quality in block mode (see docs/quality.md).\n")
    tmp = tempfile.TemporaryDirectory(prefix="block-attention-demo-") if workdir is None else None
    root = Path(workdir or tmp.name)  # type: ignore[union-attr]
    try:
        retriever = Retriever.create(root / "index")
        report = retriever.ingest(corpus, show_progress=False)
        print(f"ingested: {_report_line(report)}")
        engine = load_engine(name, cache_dir=root / "kv_cache", config=EngineConfig(), device=device)
        pipe = RAGPipeline(retriever, engine, PipelineConfig(top_k=4))
        rows = []
        for question in all_questions[:questions]:
            print(f"\nQ: {question}")
            cold = pipe.answer(question, max_new_tokens=32)
            warm = pipe.answer(question, max_new_tokens=32)
            full = pipe.answer(question, max_new_tokens=32, mode="full")
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
        print("\n  (engine TTFT; tiny models are too small for speedups to show — see benchmarks/ for real shapes)")
        print(json.dumps({"model": name, "questions": len(rows),
                          "warm_all_hits": all(w.stats.misses == 0 for _, _, w, _ in rows),
                          "block_equals_warm": all(c.text == w.text for _, c, w, _ in rows)}))
        return 0
    finally:
        if tmp is not None:
            engine = None  # noqa: F841 - release the disk tier before removing its directory
            tmp.cleanup()
