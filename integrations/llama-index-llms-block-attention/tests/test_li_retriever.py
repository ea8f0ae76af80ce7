"""BlockAttentionIndexRetriever over a real Faiss index, and the namespace package install."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
from llama_index.core.schema import MetadataMode

from llama_index.llms.block_attention import BlockAttentionIndexRetriever

QUESTION = "Who built the Bell Rock lighthouse?"


def test_nodes_carry_passage_ids_scores_and_metadata(index: Any) -> None:
    nodes = BlockAttentionIndexRetriever(retriever=index, similarity_top_k=2).retrieve(QUESTION)
    hits = index.search(QUESTION, top_k=2)
    assert [n.node.node_id for n in nodes] == [h.passage_id for h in hits]
    assert nodes[0].score == pytest.approx(hits[0].score)
    top = nodes[0].node
    assert top.metadata["source"] == "bell_rock.md"
    assert top.get_content(metadata_mode=MetadataMode.LLM) == f"title: Bell Rock\n\n{hits[0].passage.text}"


def test_index_folder_opens_lazily(index_dir: Path) -> None:
    retriever = BlockAttentionIndexRetriever(str(index_dir), similarity_top_k=1)
    assert retriever._retriever is None
    assert retriever.retrieve(QUESTION)[0].node.metadata["title"] == "Bell Rock"
    retriever.index.close()


def test_needs_an_index() -> None:
    with pytest.raises(ValueError, match="index_path="):
        BlockAttentionIndexRetriever()


def test_namespace_package_coexists_with_llama_index_core() -> None:
    import llama_index
    import llama_index.llms

    core = importlib.import_module("llama_index.core")
    ours = importlib.import_module("llama_index.llms.block_attention")
    assert core.__file__ and ours.__file__
    assert getattr(llama_index, "__file__", None) is None  # PEP 420 namespace: nobody owns llama_index/
    assert getattr(llama_index.llms, "__file__", None) is None
    assert not (Path(ours.__file__).parents[1] / "__init__.py").exists()
    assert not (Path(ours.__file__).parents[2] / "__init__.py").exists()
