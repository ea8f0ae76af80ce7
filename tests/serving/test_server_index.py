"""``--index``: a request with no ``documents`` field retrieves from the local index (real Faiss + MiniLM), and the
answer equals the in-process pipeline's; ``documents: []`` turns retrieval off for that request."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from block_attention.models import load_engine
from block_attention.retrieval import Retriever
from block_attention.retrieval.pipeline import PipelineConfig, RAGPipeline
from block_attention.serving import ServerSettings, ServerThread, create_app
from block_attention.testing import INVENTED_FACTS as FACTS


def test_request_without_documents_retrieves_from_the_index(tmp_path: Path, reference: Any) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name, text in FACTS.items():
        (corpus / name).write_text(text)
    retriever = Retriever.create(tmp_path / "index")
    retriever.ingest(corpus, show_progress=False)
    question = "How long is the Zarnok bridge?"
    want = RAGPipeline(retriever, reference, PipelineConfig(top_k=2)).answer(question, max_new_tokens=8)
    engine = load_engine("tiny-random")
    app = create_app(engine, ServerSettings(model_name="tiny-random", top_k=2), retriever=retriever)
    with ServerThread(app) as thread, httpx.Client(base_url=thread.base_url, timeout=60) as client:
        body = {"messages": [{"role": "user", "content": question}], "max_tokens": 8}
        got = client.post("/v1/chat/completions", json=body).json()
        bare = client.post("/v1/chat/completions", json={**body, "documents": []}).json()
    engine.close()
    assert got["choices"][0]["message"]["content"] == want.text
    assert got["block_attention"]["documents"] == [s.passage.passage_id for s in want.sources]
    assert bare["block_attention"]["documents"] == []
