"""The one resolver of data files shipped inside the package (``block_attention/data``).

Contract: :func:`packaged_path` names a file or folder under the package's data directory (read-only; nothing is
created). :func:`demo_corpus_dir` is the folder ``data/corpus``, a small Markdown corpus about lighthouses (ingest
it with ``Retriever.ingest``); :func:`demo_questions` reads ``data/demo_questions.json``, where each question
names the corpus file (relative path = passage source) that answers it and a short answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path


def packaged_path(*parts: str) -> Path:
    """Path of ``block_attention/data/<parts...>`` in this install (may not exist)."""
    return Path(str(resources.files("block_attention").joinpath("data", *parts)))


@dataclass(frozen=True)
class DemoQuestion:
    """A question, the corpus file (passage ``source``) that answers it, and a short reference answer."""

    question: str
    source: str
    answer: str


def demo_corpus_dir() -> Path:
    """Folder of the bundled demo corpus (Markdown files)."""
    return packaged_path("corpus")


def demo_questions() -> list[DemoQuestion]:
    """The bundled demo questions."""
    data = json.loads(packaged_path("demo_questions.json").read_text(encoding="utf-8"))
    return [DemoQuestion(question=q["question"], source=q["source"], answer=q["answer"]) for q in data["questions"]]


__all__ = ["DemoQuestion", "demo_corpus_dir", "demo_questions", "packaged_path"]
