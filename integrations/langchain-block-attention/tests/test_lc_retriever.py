"""BlockAttentionRetriever over a real Faiss index built with the library's retriever and default embedder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from langchain_block_attention import BlockAttentionRetriever

QUESTION = "Who built the Bell Rock lighthouse?"


def test_documents_carry_passage_ids_and_metadata(index: Any) -> None:
    retriever = BlockAttentionRetriever(retriever=index, top_k=3)
    docs = retriever.invoke(QUESTION)
    hits = index.search(QUESTION, top_k=3)
    assert [d.id for d in docs] == [h.passage_id for h in hits]
    top = docs[0]
    assert top.metadata["source"] == "bell_rock.md" and top.metadata["title"] == "Bell Rock"
    assert top.metadata["id"] == top.id and top.metadata["score"] == pytest.approx(hits[0].score)
    assert top.page_content == hits[0].passage.text
    assert len(retriever.invoke(QUESTION, top_k=1)) == 1


def test_index_folder_opens_lazily(index_dir: Path) -> None:
    retriever = BlockAttentionRetriever(index_path=str(index_dir), top_k=2)
    assert retriever._loaded is None
    docs = retriever.invoke(QUESTION)
    assert len(docs) == 2 and docs[0].metadata["source"] == "bell_rock.md"
    retriever.get_index().close()


def test_needs_an_index() -> None:
    with pytest.raises(ValueError, match="index_path="):
        BlockAttentionRetriever()
