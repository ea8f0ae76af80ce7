"""The bundled demo corpus ingests and every demo question retrieves a passage of its source file in the top 3."""

from __future__ import annotations

from pathlib import Path

import pytest

from block_attention.retrieval import Embedder, Retriever, demo_corpus_dir, demo_questions, load_corpus

pytestmark = pytest.mark.usefixtures("single_threaded")


@pytest.fixture(scope="module")
def demo_index(tmp_path_factory: pytest.TempPathFactory, embedder: Embedder) -> Retriever:
    retriever = Retriever.create(tmp_path_factory.mktemp("demo") / "index", embedder=embedder)
    retriever.ingest(demo_corpus_dir(), show_progress=False)
    return retriever


def test_demo_corpus_shape() -> None:
    docs = load_corpus(demo_corpus_dir())
    assert 4 <= len(docs) <= 6
    assert all(d.source.endswith(".md") and d.title and d.title != Path(d.source).stem for d in docs)
    questions = demo_questions()
    assert len(questions) >= 8
    assert {q.source for q in questions} <= {d.source for d in docs}


def test_demo_passages(demo_index: Retriever) -> None:
    passages = list(demo_index.passages())
    assert 20 <= len(passages) <= 40  # a few dozen passages
    assert all(len(p.text.split()) <= 200 for p in passages)


def test_each_demo_question_retrieves_its_source_in_top3(demo_index: Retriever) -> None:
    questions = demo_questions()
    results = demo_index.search_many([q.question for q in questions], top_k=3)
    misses = [q.question for q, hits in zip(questions, results) if q.source not in [h.passage.source for h in hits]]
    assert misses == []
