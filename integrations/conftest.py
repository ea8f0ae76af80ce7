"""Fixtures shared by the LangChain and LlamaIndex integration tests: tiny offline model, corpus, index.

Everything is offline and built once per session: the tiny random llama and its tokenizer, a saved copy of both
(for lazy-loading tests), a four-file Markdown corpus and a Faiss index of it built with the real default
embedder. Engines are cheap wrappers, so tests build their own (fresh KV store) with ``make_engine``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CORPUS = {
    "pharos.md": "# Pharos\nThe lighthouse of Alexandria stood on the island of Pharos. Sostratus of Cnidus built it "
                 "in the third century BC.\n",
    "bell_rock.md": "# Bell Rock\nThe Bell Rock lighthouse off the coast of Angus was built by Robert Stevenson "
                    "between 1807 and 1810.\n",
    "eddystone.md": "# Eddystone\nThe Eddystone lighthouse stands on dangerous rocks south of Plymouth; John Smeaton "
                    "built its third tower in 1759.\n",
    "fox.md": "# Foxes\nThe quick brown fox jumps over the lazy dog; it did so in 1999 and again in 2004.\n",
}
MAX_NEW_TOKENS = 6


@pytest.fixture(scope="session", autouse=True)
def _few_threads() -> None:
    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_tok() -> Any:
    from block_attention.testing import tiny_tokenizer

    return tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_llama() -> Any:
    from block_attention.testing import tiny_model

    return tiny_model("llama", seed=0)


@pytest.fixture(scope="session")
def make_engine(tiny_llama: Any, tiny_tok: Any) -> Callable[..., Any]:
    """Build a fresh engine (own in-memory KV store) around the shared tiny model."""
    from block_attention import BlockAttentionEngine

    def build(**kwargs: Any) -> Any:
        return BlockAttentionEngine(tiny_llama, tiny_tok, **kwargs)

    return build


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Any, tiny_tok: Any) -> Path:
    """The tiny model and tokenizer saved as a local model folder (loadable with from_pretrained)."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_llama.save_pretrained(folder)
    tiny_tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def corpus() -> dict[str, str]:
    """:data:`CORPUS` (file name -> Markdown text)."""
    return dict(CORPUS)


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    for name, text in CORPUS.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def index_dir(tmp_path_factory: pytest.TempPathFactory, corpus_dir: Path) -> Path:
    """A Faiss index of :data:`CORPUS` built with the library's retriever and its default embedder."""
    from block_attention.retrieval import Retriever

    folder = tmp_path_factory.mktemp("index") / "idx"
    with Retriever.create(folder) as retriever:
        retriever.ingest(corpus_dir, show_progress=False)
    return folder


@pytest.fixture(scope="session")
def index(index_dir: Path) -> Any:
    """The index opened once for the session (shared by every retriever wrapper in the tests)."""
    from block_attention.retrieval import Retriever

    retriever = Retriever.load(index_dir)
    yield retriever
    retriever.close()
