"""RAG chains end to end: real retriever + tiny model; answers twice, the second from cached KV."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from langchain_block_attention import (
    BlockAttentionLLM,
    BlockAttentionRetriever,
    ChatBlockAttention,
    create_block_attention_combine_chain,
    create_block_attention_rag_chain,
)

N = 6
K = 3
QUESTION = "Who built the Bell Rock lighthouse?"


@pytest.fixture(scope="module")
def engine(make_engine: Any) -> Any:
    return make_engine()


@pytest.fixture(scope="module")
def retriever(index: Any) -> BlockAttentionRetriever:
    return BlockAttentionRetriever(retriever=index, top_k=K)


@pytest.fixture(scope="module")
def want(engine: Any, index: Any) -> str:
    """The core engine's answer over the same passages (as the library's own blocks) and question."""
    blocks = [hit.to_block() for hit in index.search(QUESTION, top_k=K)]
    return engine.generate(blocks, QUESTION, max_new_tokens=N).text


def test_rag_chain_answers_twice_second_from_cache(engine: Any, retriever: BlockAttentionRetriever,
                                                   want: str) -> None:
    engine.store.clear()  # the first ask below encodes everything
    chain = create_block_attention_rag_chain(retriever, BlockAttentionLLM(engine=engine, max_tokens=N))
    before = engine.store.stats()
    first = chain.invoke(QUESTION)
    middle = engine.store.stats()
    second = chain.invoke({"question": QUESTION})
    after = engine.store.stats()
    assert first["answer"] == second["answer"] == want
    assert [d.id for d in second["context"]] == [d.id for d in first["context"]] and len(first["context"]) == K
    assert after.puts == middle.puts  # nothing encoded on the second ask
    assert after.memory_hits - middle.memory_hits == K + 1  # every retrieved passage + the prefix block
    assert middle.puts - before.puts == K + 1


def test_rag_chain_streams_the_answer(engine: Any, retriever: BlockAttentionRetriever, want: str) -> None:
    chain = create_block_attention_rag_chain(retriever, BlockAttentionLLM(engine=engine, max_tokens=N))
    answers = [c["answer"] for c in chain.stream(QUESTION) if "answer" in c]
    assert len(answers) > 1 and "".join(answers) == want

    async def run() -> dict[str, Any]:
        return await chain.ainvoke(QUESTION)

    assert asyncio.run(run())["answer"] == want


def test_rag_chain_with_chat_model_and_history(engine: Any, retriever: BlockAttentionRetriever, index: Any) -> None:
    chat = ChatBlockAttention(engine=engine, max_tokens=N)
    chain = create_block_attention_rag_chain(retriever, chat)
    history = [("human", "Hello"), ("ai", "Hi! Ask me about lighthouses.")]
    out = chain.invoke({"question": QUESTION, "chat_history": history})
    blocks = [hit.to_block() for hit in index.search(QUESTION, top_k=K)]
    turns = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi! Ask me about lighthouses."}]
    assert out["answer"] == engine.generate(blocks, QUESTION, history=turns, max_new_tokens=N).text


def test_create_retrieval_chain_with_block_attention_combine_step(engine: Any, retriever: BlockAttentionRetriever,
                                                                  want: str) -> None:
    from langchain_classic.chains import create_retrieval_chain

    llm = BlockAttentionLLM(engine=engine, max_tokens=N)
    chain = create_retrieval_chain(retriever, create_block_attention_combine_chain(llm))
    engine.store.clear()
    before = engine.store.stats()
    first = chain.invoke({"input": QUESTION})
    middle = engine.store.stats()
    second = chain.invoke({"input": QUESTION})
    after = engine.store.stats()
    assert first["answer"] == second["answer"] == want and len(second["context"]) == K
    assert middle.puts - before.puts == K + 1
    assert after.puts == middle.puts and after.memory_hits - middle.memory_hits == K + 1


def test_combine_step_names_the_missing_key(engine: Any) -> None:
    combine = create_block_attention_combine_chain(BlockAttentionLLM(engine=engine, max_tokens=N))
    with pytest.raises(ValueError, match="'input' key"):
        combine.invoke({"question": QUESTION, "context": []})
