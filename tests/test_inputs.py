"""Bad input gets a clear error and nothing is cached wrongly (issue #15, class 8): lone surrogates in every text
field, a missing block list, mistyped generation options, non-UTF-8 corpus file names, a tampered passage store."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from block_attention import Block, BlockAttentionEngine, StoreConfig
from block_attention.core.config import GenerationConfig
from block_attention.core.errors import BlockAttentionError, ConfigError, InvalidRequestError
from block_attention.core.errors import CorpusFormatError
from block_attention.models import check_device
from block_attention.retrieval import Document, IndexFormatError, PassageStore, chunk_document, load_corpus
from block_attention.store import CacheKey

LONE = "\ud800"


@pytest.fixture
def engine(tok, llama, tmp_path):
    e = BlockAttentionEngine(llama, tok, store=StoreConfig(disk_dir=str(tmp_path / "kv")))
    yield e
    e.close()


@pytest.mark.parametrize("field", ["question", "text", "doc_id", "title", "system", "history", "string-block"])
def test_lone_surrogates_are_refused_before_anything_is_cached(engine, field):
    blocks: list = [Block("A passage about lighthouses.", doc_id="ok")]
    kwargs: dict = {}
    question = "Where?"
    if field == "question":
        question = f"Where{LONE}?"
    elif field == "system":
        kwargs["system"] = f"Be brief{LONE}"
    elif field == "history":
        kwargs["history"] = [{"role": "user", "content": f"hi{LONE}"}]
    elif field == "string-block":
        blocks.append(f"raw text {LONE}")
    with pytest.raises(InvalidRequestError, match="lone surrogate") as info:
        if field in ("text", "doc_id", "title"):
            values = {"text": "A passage.", "doc_id": "d", "title": "T"}
            values[field] = values[field] + LONE
            blocks.append(Block(values["text"], doc_id=values["doc_id"], title=values["title"]))
        engine.generate(blocks, question, max_new_tokens=2, **kwargs)
    assert "errors='replace'" in str(info.value)
    stats = engine.store.stats()
    assert stats.puts == 0 and stats.memory_entries == 0 and stats.disk_entries == 0


def test_cache_keys_that_cannot_be_stored_are_refused():
    with pytest.raises(InvalidRequestError, match="lone surrogate"):
        CacheKey("fp", f"doc{LONE}", "h")
    with pytest.raises(InvalidRequestError, match="must be a str"):
        CacheKey("fp", None, "h")  # type: ignore[arg-type]


@pytest.mark.parametrize("blocks", [None, 42, b"bytes"])
def test_missing_or_mistyped_block_list(engine, blocks):
    with pytest.raises(InvalidRequestError, match="blocks|list"):
        engine.generate(blocks, "Where?", max_new_tokens=2)


@pytest.mark.parametrize("overrides, needle", [
    ({"max_new_tokens": "5"}, "max_new_tokens must be an int"),
    ({"max_new_tokens": None}, "max_new_tokens must be an int"),
    ({"max_new_tokens": True}, "max_new_tokens must be an int"),
    ({"max_new_tokens": 2.0}, "max_new_tokens must be an int"),
    ({"temperature": "hot"}, "temperature must be a number"),
    ({"temperature": float("nan")}, "temperature must be a number"),
    ({"top_k": None}, "top_k must be an int"),
    ({"top_p": None}, "top_p must be a number"),
    ({"seed": "1"}, "seed must be an int"),
    ({"do_sample": "yes"}, "do_sample must be True or False"),
    ({"stop": None}, "stop must be"),
])
def test_mistyped_generation_options_are_config_errors(engine, overrides, needle):
    with pytest.raises(ConfigError, match=needle):
        GenerationConfig(**overrides)
    with pytest.raises(ConfigError, match=needle):
        engine.generate(["A passage."], "Where?", **overrides)


@pytest.mark.parametrize("device, needle", [("bogus", "Unknown device"), ("", "device must be"),
                                            ("cuda:99", "cuda"), (3, "device must be")])
def test_unusable_devices_are_config_errors(device, needle):
    import torch

    if device == "cuda:99" and torch.cuda.device_count() > 99:
        pytest.skip("a machine with 100 GPUs")
    with pytest.raises(ConfigError, match=needle):
        check_device(device)
    assert check_device("cpu") == "cpu" and check_device(None) is None


def test_corpus_file_name_that_is_not_utf8(tmp_path: Path):
    (tmp_path / "good.txt").write_text("A fine document.")
    with open(os.path.join(os.fsencode(tmp_path), b"caf\xe9.txt"), "w") as f:
        f.write("A document with a Latin-1 file name.")
    with pytest.raises(CorpusFormatError, match="not valid UTF-8") as info:
        load_corpus(tmp_path)
    assert isinstance(info.value, BlockAttentionError) and "rename the file" in str(info.value)


def _store_with_rows(path: Path) -> PassageStore:
    store = PassageStore(path)
    passages = chunk_document(Document(doc_id="a", title="A", text="Alpha text.")) + \
        chunk_document(Document(doc_id="b", title="B", text="Beta text."))
    with store.transaction():
        store.insert(passages, np.arange(8, dtype=np.float32).reshape(2, 4))
    return store


@pytest.mark.parametrize("tamper, reader", [
    ("UPDATE passages SET chunk_index = 'first' WHERE row_id = 0", "get_rows"),
    ("UPDATE passages SET chunk_index = 1.5 WHERE row_id = 0", "iter"),
    ("UPDATE passages SET text = x'00ff' WHERE row_id = 1", "get_rows"),
    ("UPDATE passages SET embedding = substr(embedding, 1, 7) WHERE row_id = 1", "vectors"),
    ("UPDATE passages SET embedding = 'text' WHERE row_id = 0", "vectors"),
])
def test_tampered_passage_store_is_an_index_format_error(tmp_path: Path, tamper: str, reader: str):
    path = tmp_path / "passages.sqlite3"
    _store_with_rows(path).close()
    with sqlite3.connect(path) as con:
        con.execute(tamper)
    store = PassageStore(path)
    with pytest.raises(IndexFormatError, match="rebuild the index") as info:
        if reader == "get_rows":
            store.get_rows([0, 1])
        elif reader == "iter":
            list(store.iter_passages())
        else:
            store.vectors(4)
    assert isinstance(info.value, BlockAttentionError)
    store.close()
