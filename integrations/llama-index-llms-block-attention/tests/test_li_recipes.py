"""LlamaIndex's stock query and chat engines keep one cached block per node (real LlamaIndex objects).

Every LLM call the framework makes is recorded through LlamaIndex's own instrumentation; each marked prompt is
checked against the engine's own answer for the same blocks, and the second query is all cache hits.
"""

from __future__ import annotations

import copy
import logging
import pickle
from typing import Any

import pytest
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events.llm import LLMChatEndEvent, LLMCompletionEndEvent
from llama_index.core.schema import TextNode

from block_attention.frameworks.markers import split_prompt
from llama_index.llms.block_attention import BlockAttentionLLM, BlockMarkers, block_query_engine, node_key

N = 6
K = 3
QUESTION = "Who built the Bell Rock lighthouse?"


class Recorder(BaseEventHandler):
    """Every completion prompt / chat message list the framework sent, with the LLM's reply."""

    calls: list[tuple[Any, str]] = []

    @classmethod
    def class_name(cls) -> str:
        return "Recorder"

    def handle(self, event: Any, **kwargs: Any) -> None:
        if isinstance(event, LLMCompletionEndEvent):
            self.calls.append((event.prompt, event.response.text))
        elif isinstance(event, LLMChatEndEvent) and event.response is not None:
            self.calls.append((list(event.messages), event.response.message.content))


@pytest.fixture(scope="module")
def recorder() -> Recorder:
    recorder = Recorder()
    get_dispatcher().add_event_handler(recorder)
    yield recorder
    get_dispatcher().event_handlers.remove(recorder)


@pytest.fixture(scope="module")
def vector_index(corpus: dict[str, str]) -> VectorStoreIndex:
    docs = [Document(text=text, id_=name) for name, text in corpus.items()]
    return VectorStoreIndex.from_documents(docs, embed_model=MockEmbedding(embed_dim=8))


@pytest.fixture(scope="module")
def oracle(make_engine: Any) -> Any:
    return make_engine()


def check_completions(recorder: Recorder, oracle: Any, keys: set[str]) -> None:
    """Each recorded completion carried only known node blocks and equals the engine's answer for them."""
    assert recorder.calls
    for prompt, text in recorder.calls:
        split = split_prompt(prompt)
        assert split.blocks and {b.doc_id for b in split.blocks} <= keys and not split.broken
        assert oracle.generate(list(split.blocks), split.rest, max_new_tokens=N).text == text


@pytest.mark.parametrize("mode", ["compact", "refine", "tree_summarize", "simple_summarize"])
def test_stock_query_engine_keeps_nodes_as_blocks(mode: str, make_engine: Any, oracle: Any, recorder: Recorder,
                                                  vector_index: VectorStoreIndex) -> None:
    engine = make_engine()
    llm = BlockAttentionLLM(engine=engine, max_new_tokens=N)
    query_engine = vector_index.as_query_engine(llm=llm, response_mode=mode, similarity_top_k=K,
                                                node_postprocessors=[BlockMarkers()])
    recorder.calls.clear()
    first = query_engine.query(QUESTION)
    keys = {node_key(n.node) for n in first.source_nodes}
    assert len(keys) == K
    check_completions(recorder, oracle, keys)
    assert str(first) == recorder.calls[-1][1]
    stats = first.metadata["block_attention"]
    assert stats["misses"] == engine.store.stats().misses > 0  # the store counts exactly the requests' misses
    before = engine.store.stats()
    second = query_engine.query(QUESTION)
    assert str(second) == str(first)
    stats = second.metadata["block_attention"]
    assert stats["misses"] == 0 and stats["hits"] == stats["hits_by_tier"]["memory"] > 0
    assert engine.store.stats().misses == before.misses and stats["ttft_s"] > 0
    assert all(n.node.node_id in second.metadata for n in second.source_nodes)  # LlamaIndex's own metadata kept


def test_streaming_query_engine_streams_blocks(make_engine: Any, oracle: Any, recorder: Recorder,
                                               vector_index: VectorStoreIndex) -> None:
    engine = make_engine()
    llm = BlockAttentionLLM(engine=engine, max_new_tokens=N)
    plain = block_query_engine(vector_index, llm, similarity_top_k=K)
    want = str(plain.query(QUESTION))
    streaming = block_query_engine(vector_index, llm, similarity_top_k=K, streaming=True)
    response = streaming.query(QUESTION)
    pieces = list(response.response_gen)
    assert len(pieces) >= 1 and "".join(pieces) == want
    stats = response.metadata["block_attention"]
    assert stats["misses"] == 0 and stats["hits"] == K + 1


def test_drop_lowest_nodes_leave_source_nodes(llama: Any, tok: Any) -> None:
    from block_attention import BlockAttentionEngine, EngineConfig

    engine = BlockAttentionEngine(llama, tok, EngineConfig(overflow="drop_lowest"))
    filler = "the keeper climbed the stair and lit the lamp "
    nodes = [TextNode(text=f"Tower {i}. " + filler * 70, id_=f"tower-{i}") for i in range(3)]
    lengths = [len(tok(n.text)["input_ids"]) for n in nodes]
    assert sum(lengths) > engine.max_positions > sum(lengths[:2]) + 200  # one node must go
    index = VectorStoreIndex(nodes, embed_model=MockEmbedding(embed_dim=8))
    llm = BlockAttentionLLM(engine=engine, max_new_tokens=2, context_window=100_000)
    response = block_query_engine(index, llm, similarity_top_k=3).query(QUESTION)
    dropped = response.metadata["block_attention"]["dropped"]
    assert len(dropped) == 1 and len(response.source_nodes) == 2
    assert dropped[0] not in {node_key(n.node) for n in response.source_nodes}


@pytest.mark.parametrize("chat_mode", ["context", "condense_plus_context"])
def test_stock_chat_engines_keep_nodes_as_blocks(chat_mode: str, make_engine: Any, oracle: Any,
                                                 recorder: Recorder, vector_index: VectorStoreIndex) -> None:
    engine = make_engine()
    llm = BlockAttentionLLM(engine=engine, max_new_tokens=N)
    chat = vector_index.as_chat_engine(chat_mode=chat_mode, llm=llm, similarity_top_k=K,
                                       node_postprocessors=[BlockMarkers()])
    recorder.calls.clear()
    first = chat.chat(QUESTION)
    keys = {node_key(n.node) for n in first.source_nodes}
    assert len(keys) == K
    check_completions(recorder, oracle, keys)  # LlamaIndex 0.14 chat engines answer through a synthesizer
    assert str(first) == recorder.calls[-1][1]
    want = str(first)
    before = engine.store.stats()
    chat.reset()
    assert str(chat.chat(QUESTION)) == want
    after = engine.store.stats()
    assert after.misses == before.misses and after.hits - before.hits == K + 1


def test_flat_context_warns_once(make_engine: Any, vector_index: VectorStoreIndex,
                                 caplog: pytest.LogCaptureFixture) -> None:
    llm = BlockAttentionLLM(engine=make_engine(), max_new_tokens=2)
    query_engine = vector_index.as_query_engine(llm=llm, similarity_top_k=4)
    with caplog.at_level(logging.WARNING, logger="llama_index.llms.block_attention"):
        query_engine.query(QUESTION)
        query_engine.query(QUESTION)
    assert len([r for r in caplog.records if "BlockMarkers" in r.getMessage()]) == 1


def test_unloaded_llm_survives_deepcopy_and_pickle(tiny_model_dir: Any) -> None:
    lazy = BlockAttentionLLM(model_name=str(tiny_model_dir), max_new_tokens=2)
    for twin in (copy.deepcopy(lazy), pickle.loads(pickle.dumps(lazy))):
        assert not twin.engine_loaded and twin.model_name == str(tiny_model_dir)
    assert not lazy.engine_loaded


def test_block_synthesizer_reports_stats_in_response_metadata(make_engine: Any, oracle: Any,
                                                              vector_index: VectorStoreIndex) -> None:
    from llama_index.core.query_engine import RetrieverQueryEngine
    from llama_index.llms.block_attention import BlockAttentionSynthesizer, to_blocks

    engine = make_engine()
    llm = BlockAttentionLLM(engine=engine, max_new_tokens=N)
    query_engine = RetrieverQueryEngine(vector_index.as_retriever(similarity_top_k=K),
                                        response_synthesizer=BlockAttentionSynthesizer(llm))
    first = query_engine.query(QUESTION)
    assert str(first) == oracle.generate(to_blocks(first.source_nodes), QUESTION, max_new_tokens=N).text
    assert first.metadata["block_attention"]["misses"] == engine.store.stats().misses == K + 1
    second = query_engine.query(QUESTION)
    assert second.metadata["block_attention"]["misses"] == 0 and second.metadata["block_attention"]["hits"] == K + 1
