"""End-to-end pipeline: real Faiss + MiniLM retrieval feeding the engine; cache reuse, deletes, re-ingest."""

from pathlib import Path

import pytest

from block_attention import BlockAttentionEngine, EngineConfig, StoreConfig
from block_attention.retrieval import Retriever
from block_attention.retrieval.pipeline import PipelineConfig, RAGPipeline
from block_attention.testing import INVENTED_FACTS as FACTS



@pytest.fixture()
def corpus(tmp_path) -> Path:
    root = tmp_path / "corpus"
    root.mkdir()
    for name, text in FACTS.items():
        (root / name).write_text(text)
    return root


@pytest.fixture()
def pipe(corpus, tmp_path, tok, llama):
    retriever = Retriever.create(tmp_path / "index")
    retriever.ingest(corpus, show_progress=False)
    engine = BlockAttentionEngine(llama, tok, EngineConfig(), store=StoreConfig(disk_dir=str(tmp_path / "kv")))
    return RAGPipeline(retriever, engine, PipelineConfig(top_k=3))


def test_answer_reuses_every_retrieved_block(pipe):
    first = pipe.answer("How long is the Zarnok bridge?", max_new_tokens=8)
    assert first.sources[0].passage.source == "zarnok.md"
    assert [s.score for s in first.sources] == sorted((s.score for s in first.sources), reverse=True)
    assert first.stats.misses == 4 and first.stats.blocks == 4  # prefix + 3 passages
    second = pipe.answer("How long is the Zarnok bridge?", max_new_tokens=8)
    assert second.stats.misses == 0 and second.stats.hits == 4 and second.text == first.text
    other = pipe.answer("Tell me about Zarnok, the bridge in Velmora.", max_new_tokens=8)
    shared = {s.passage_id for s in first.sources} & {s.passage_id for s in other.sources}
    assert other.stats.hits >= len(shared) + 1  # every passage seen before is a hit, in any order


def test_full_mode_and_order(pipe):
    q = "Where did Teodra Vask write her last symphony?"
    ans = pipe.answer(q, mode="full", max_new_tokens=8)
    blocks = pipe.blocks(ans.sources)
    assert ans.text == pipe.engine.generate(blocks, q, mode="full", max_new_tokens=8).text
    reversed_pipe = RAGPipeline(pipe.retriever, pipe.engine, PipelineConfig(top_k=3, order="reversed"))
    assert [b.doc_id for b in reversed_pipe.blocks(ans.sources)] == [b.doc_id for b in blocks][::-1]


def test_stream_matches_answer(pipe):
    q = "How many cars does the Pellin ferry carry?"
    stream = pipe.stream(q, max_new_tokens=12, stop_on_eos=False)
    text = "".join(stream)
    assert text == stream.result.text == pipe.answer(q, max_new_tokens=12, stop_on_eos=False).text
    assert stream.result.sources[0].passage.source == "pellin.md" and stream.result.ttft_s > 0


def test_delete_removes_passage_and_its_kv(pipe):
    q = "What is the coldest station of the Hallet archipelago?"
    ans = pipe.answer(q, max_new_tokens=4)
    victim = ans.sources[0].passage
    assert victim.source == "mirrow.md"
    layout = pipe.engine.layout(pipe.blocks(ans.sources), q)
    key = next(pipe.engine.cache_key(b.doc_id, b.token_ids) for b in layout.blocks if b.doc_id == victim.passage_id)
    assert pipe.engine.store.contains(key) == "memory"
    assert pipe.delete([victim.passage_id]) == [victim.passage_id]
    assert pipe.engine.store.contains(key) is None
    assert victim.passage_id not in {s.passage_id for s in pipe.answer(q, max_new_tokens=4).sources}


def test_reingest_changed_file_never_uses_stale_kv(pipe, corpus):
    q = "How long is the Zarnok bridge?"
    before = pipe.answer(q, max_new_tokens=4)
    (corpus / "zarnok.md").write_text("# Zarnok\nThe Zarnok bridge in Velmora is 640 metres long since 1990.")
    report = pipe.retriever.ingest(corpus, show_progress=False)
    assert report.added and report.removed
    after = pipe.answer(q, max_new_tokens=4)
    assert after.sources[0].passage_id != before.sources[0].passage_id
    assert "640" in after.sources[0].passage.text
    assert after.stats.misses >= 1  # the changed passage is encoded afresh


def test_warm_makes_first_query_all_hits(pipe):
    report = pipe.warm(show_progress=False)
    assert report.encoded == len(FACTS) + 1
    ans = pipe.answer("Where are Quillan pears grown?", max_new_tokens=4)
    assert ans.stats.misses == 0 and ans.stats.hits == 4
