"""BlockAttentionSynthesizer in real LlamaIndex query and chat engines over a real Faiss index."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from llama_index.core.base.response.schema import Response, StreamingResponse
from llama_index.core.chat_engine import CondenseQuestionChatEngine
from llama_index.core.query_engine import RetrieverQueryEngine

from llama_index.llms.block_attention import BlockAttentionIndexRetriever, BlockAttentionLLM, BlockAttentionSynthesizer

N = 6
K = 3
QUESTION = "Who built the Bell Rock lighthouse?"


@pytest.fixture(scope="module")
def engine(make_engine: Any) -> Any:
    return make_engine()


@pytest.fixture(scope="module")
def llm(engine: Any) -> BlockAttentionLLM:
    return BlockAttentionLLM(engine=engine, max_new_tokens=N)


@pytest.fixture(scope="module")
def retriever(index: Any) -> BlockAttentionIndexRetriever:
    return BlockAttentionIndexRetriever(retriever=index, similarity_top_k=K)


@pytest.fixture(scope="module")
def want(engine: Any, retriever: BlockAttentionIndexRetriever) -> str:
    from block_attention import Block

    nodes = retriever.retrieve(QUESTION)
    blocks = [Block(n.node.get_content(metadata_mode="llm"), f"{n.node.node_id}:{n.node.hash}") for n in nodes]
    return engine.generate(blocks, QUESTION, max_new_tokens=N).text


def test_query_engine_answers_twice_second_from_cache(engine: Any, llm: BlockAttentionLLM,
                                                      retriever: BlockAttentionIndexRetriever, want: str) -> None:
    query_engine = RetrieverQueryEngine(retriever, response_synthesizer=BlockAttentionSynthesizer(llm))
    engine.store.clear()
    before = engine.store.stats()
    first = query_engine.query(QUESTION)
    middle = engine.store.stats()
    second = query_engine.query(QUESTION)
    after = engine.store.stats()
    assert isinstance(second, Response) and first.response == second.response == want
    assert [n.node.node_id for n in second.source_nodes] == [h.passage_id for h in retriever.index.search(QUESTION, K)]
    assert middle.puts - before.puts == K + 1  # every passage + the prefix block encoded once
    assert after.puts == middle.puts and after.memory_hits - middle.memory_hits == K + 1
    assert second.source_nodes[0].node.metadata["source"] == "bell_rock.md"


def test_streaming_and_async_queries(llm: BlockAttentionLLM, retriever: BlockAttentionIndexRetriever,
                                     want: str) -> None:
    streaming = RetrieverQueryEngine(retriever, response_synthesizer=BlockAttentionSynthesizer(llm, streaming=True))
    response = streaming.query(QUESTION)
    assert isinstance(response, StreamingResponse) and len(response.source_nodes) == K
    assert "".join(response.response_gen) == want
    plain = RetrieverQueryEngine(retriever, response_synthesizer=BlockAttentionSynthesizer(llm))
    assert asyncio.run(plain.aquery(QUESTION)).response == want


def test_reversed_order_and_direct_text_chunks(engine: Any, llm: BlockAttentionLLM,
                                               retriever: BlockAttentionIndexRetriever) -> None:
    from block_attention import Block

    nodes = retriever.retrieve(QUESTION)
    synth = BlockAttentionSynthesizer(llm, order="reversed")
    blocks = [Block(n.node.get_content(metadata_mode="llm"), f"{n.node.node_id}:{n.node.hash}") for n in nodes]
    reply = synth.synthesize(QUESTION, nodes)
    assert reply.response == engine.generate(blocks[::-1], QUESTION, max_new_tokens=N).text
    assert [n.node.node_id for n in reply.source_nodes] == [n.node.node_id for n in nodes]
    chunks = ["Foxes jump.", "Dogs sleep."]
    assert synth.get_response(QUESTION, chunks) == engine.generate(chunks[::-1], QUESTION, max_new_tokens=N).text
    assert synth.synthesize(QUESTION, []).response == "Empty Response"


def test_condense_question_chat_engine_two_turns(engine: Any, llm: BlockAttentionLLM,
                                                 retriever: BlockAttentionIndexRetriever, want: str) -> None:
    query_engine = RetrieverQueryEngine(retriever, response_synthesizer=BlockAttentionSynthesizer(llm))
    chat = CondenseQuestionChatEngine.from_defaults(query_engine=query_engine, llm=llm)
    first = chat.chat(QUESTION)
    assert first.response == want and len(first.source_nodes) == K
    second = chat.chat("And when was it built?")
    assert isinstance(second.response, str) and second.sources
    assert [m.role.value for m in chat.chat_history] == ["user", "assistant", "user", "assistant"]


def test_synthesizer_needs_a_block_attention_llm() -> None:
    with pytest.raises(TypeError, match="BlockAttentionLLM"):
        BlockAttentionSynthesizer(llm=None)  # type: ignore[arg-type]
