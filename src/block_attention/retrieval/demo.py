"""Demo data shipped with the package: a small Markdown corpus about lighthouses and questions about it.

Contract: :func:`demo_corpus_dir` is the folder ``block_attention/data/corpus`` (ingest it with
``Retriever.ingest``); :func:`demo_questions` reads ``block_attention/data/demo_questions.json``, where each
question names the corpus file (relative path = passage source) that answers it and a short answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent.parent / "data"


@dataclass(frozen=True)
class DemoQuestion:
    """A question, the corpus file (passage ``source``) that answers it, and a short reference answer."""

    question: str
    source: str
    answer: str


def demo_corpus_dir() -> Path:
    """Folder of the bundled demo corpus (Markdown files)."""
    return DATA_DIR / "corpus"


def demo_questions() -> list[DemoQuestion]:
    """The bundled demo questions."""
    data = json.loads((DATA_DIR / "demo_questions.json").read_text(encoding="utf-8"))
    return [DemoQuestion(question=q["question"], source=q["source"], answer=q["answer"]) for q in data["questions"]]


__all__ = ["DATA_DIR", "DemoQuestion", "demo_corpus_dir", "demo_questions"]
