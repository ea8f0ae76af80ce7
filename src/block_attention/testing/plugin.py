"""The pytest plugin of the project's test suites (core, integrations, examples): shared offline fixtures.

Load it with ``-p block_attention.testing.plugin`` (the pyproject files of this repository and of both integration
packages do). On configure it makes the session offline (``HF_HUB_OFFLINE``, ``TRANSFORMERS_OFFLINE``) and
serial-tokenizer; fixtures build everything locally and deterministically:

* ``one_thread``: torch on one thread for the test;
* ``tok``, ``llama``: the tiny byte-level BPE tokenizer and the seeded random tiny Llama (session-wide);
* ``docs``: three short scored passages; ``make_engine``: a fresh engine (own memory store) around ``llama``;
* ``tiny_model_dir``: ``llama`` + ``tok`` saved as a local model folder (for loading paths);
* ``corpus``, ``corpus_dir``, ``index_dir``, ``index``: a four-file Markdown corpus and a Faiss index of it built with
  the real default embedder;
* ``redis_proc``: a private ``redis-server`` on a free loopback port, stopped afterwards (skipped when the Debian
  package is not installed; ``.ci/run`` installs it).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

CORPUS = {
    "pharos.md": "# Pharos\nThe lighthouse of Alexandria stood on the island of Pharos. Sostratus of Cnidus built it "
                 "in the third century BC.\n",
    "bell_rock.md": "# Bell Rock\nThe Bell Rock lighthouse off the coast of Angus was built by Robert Stevenson "
                    "between 1807 and 1810.\n",
    "eddystone.md": "# Eddystone\nThe Eddystone lighthouse stands on dangerous rocks south of Plymouth; John Smeaton "
                    "built its third tower in 1759.\n",
    "fox.md": "# Foxes\nThe quick brown fox jumps over the lazy dog; it did so in 1999 and again in 2004.\n",
}


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # An old import path (block_attention._moved) used by the library, an integration or a test is an error; the
    # tests of the aliases themselves assert the warning with pytest.warns.
    config.addinivalue_line("filterwarnings", r"error:block_attention\.[\w.]+ moved to:DeprecationWarning")


@pytest.fixture(scope="session", autouse=True)
def _few_threads() -> None:
    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture()
def one_thread() -> Iterator[None]:
    """torch runs on one thread during the test (steadier for end-to-end runs of tiny models)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tok() -> Any:
    from block_attention.hf.tiny import tiny_tokenizer

    return tiny_tokenizer()


@pytest.fixture(scope="session")
def llama() -> Any:
    from block_attention.hf.tiny import tiny_model

    return tiny_model("llama", seed=0)


@pytest.fixture(scope="session")
def docs() -> list[Any]:
    from block_attention import Block

    return [
        Block("The lighthouse of Alexandria stood on the island of Pharos for sixteen centuries.", "pharos",
              title="Pharos", score=0.9),
        Block("Block attention caches each retrieved passage separately and reuses it in any order.", "blocks",
              score=0.7),
        Block("The quick brown fox jumps over the lazy dog; it did so in 1999 and again in 2004.", "fox",
              title="Fox", score=0.5),
    ]


@pytest.fixture(scope="session")
def make_engine(llama: Any, tok: Any) -> Callable[..., Any]:
    """Build a fresh engine (own in-memory KV store) around the shared tiny model."""
    from block_attention import BlockAttentionEngine

    def build(**kwargs: Any) -> Any:
        return BlockAttentionEngine(llama, tok, **kwargs)

    return build


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, llama: Any, tok: Any) -> Path:
    """The tiny model and tokenizer saved as a local model folder (loadable with from_pretrained)."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    llama.save_pretrained(folder)
    tok.save_pretrained(folder)
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
def index(index_dir: Path) -> Iterator[Any]:
    """The index opened once for the session (shared by every retriever wrapper in the tests)."""
    from block_attention.retrieval import Retriever

    retriever = Retriever.load(index_dir)
    yield retriever
    retriever.close()


@pytest.fixture()
def redis_proc() -> Iterator[Any]:
    """A private redis-server on a free loopback port, stopped after the test (skipped if not installed)."""
    from block_attention.testing.redis_server import RedisProcess, redis_server_path

    if redis_server_path() is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install -y redis-server; .ci/run installs it)")
    with RedisProcess() as proc:
        yield proc
