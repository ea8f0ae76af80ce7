"""ChatBlockAttention with real LangChain messages and the tiny offline model (greedy decoding)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain_core.documents import Document
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage

from langchain_block_attention import ChatBlockAttention

N = 6
QUESTION = "Who built it?"
HISTORY = [HumanMessage("Tell me about lighthouses."), AIMessage("Which one?")]


@pytest.fixture(scope="module")
def engine(make_engine: Any) -> Any:
    return make_engine()


@pytest.fixture(scope="module")
def chat(engine: Any) -> ChatBlockAttention:
    return ChatBlockAttention(engine=engine, max_tokens=N)


@pytest.fixture(scope="module")
def docs() -> list[Document]:
    return [Document("The lighthouse of Alexandria stood on Pharos.", id="pharos", metadata={"title": "Pharos"}),
            Document("Robert Stevenson built the Bell Rock lighthouse.", id="bell")]


def engine_answer(engine: Any, **kwargs: Any) -> Any:
    from block_attention import Block

    blocks = [Block("The lighthouse of Alexandria stood on Pharos.", "pharos", title="Pharos"),
              Block("Robert Stevenson built the Bell Rock lighthouse.", "bell")]
    return engine.generate(blocks, QUESTION, max_new_tokens=N, **kwargs)


def test_messages_map_to_system_history_and_question(chat: ChatBlockAttention, engine: Any,
                                                      docs: list[Document]) -> None:
    messages = [SystemMessage("Answer briefly."), *HISTORY, HumanMessage(QUESTION)]
    want = engine_answer(engine, system="Answer briefly.",
                         history=[{"role": "user", "content": "Tell me about lighthouses."},
                                  {"role": "assistant", "content": "Which one?"}])
    first = chat.invoke(messages, documents=docs)
    second = chat.invoke(messages, documents=docs)
    assert isinstance(second, AIMessage) and first.content == second.content == want.text
    stats = second.response_metadata["block_attention"]
    assert stats["misses"] == 0 and stats["hits"] == len(docs) + 1
    assert second.usage_metadata["input_tokens"] == want.stats.prompt_tokens
    assert second.usage_metadata["output_tokens"] == want.stats.new_tokens
    assert second.response_metadata["finish_reason"] == want.finish_reason


def test_documents_attached_to_the_question(chat: ChatBlockAttention, engine: Any, docs: list[Document]) -> None:
    message = HumanMessage(QUESTION, additional_kwargs={"documents": docs})
    assert chat.invoke([message]).content == engine_answer(engine).text


def test_stream_equals_invoke(chat: ChatBlockAttention, docs: list[Document]) -> None:
    chunks = list(chat.stream(QUESTION, documents=docs))
    assert all(isinstance(c, AIMessageChunk) for c in chunks) and len(chunks) > 2
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    assert merged.content == chat.invoke(QUESTION, documents=docs).content
    assert merged.usage_metadata and merged.response_metadata["finish_reason"]


def test_async_invoke_and_stream(chat: ChatBlockAttention, docs: list[Document]) -> None:
    want = chat.invoke(QUESTION, documents=docs).content

    async def run() -> tuple[str, str]:
        message = await chat.ainvoke(QUESTION, documents=docs)
        streamed = "".join([str(c.content) async for c in chat.astream(QUESTION, documents=docs)])
        return str(message.content), streamed

    assert asyncio.run(run()) == (want, want)


def test_streaming_flag_and_batch(chat: ChatBlockAttention, engine: Any, docs: list[Document]) -> None:
    streaming = ChatBlockAttention(engine=engine, max_tokens=N, streaming=True)
    want = engine_answer(engine).text
    assert streaming.invoke(QUESTION, documents=docs).content == want
    assert [m.content for m in chat.bind(documents=docs).batch([QUESTION, QUESTION])] == [want, want]


def test_unsupported_inputs_are_refused(chat: ChatBlockAttention) -> None:
    with pytest.raises(ValueError, match="last message must be a human message"):
        chat.invoke([HumanMessage("hi"), AIMessage("hello")])
    with pytest.raises(ValueError, match="text-only"):
        chat.invoke([HumanMessage([{"type": "image", "url": "https://example.com/a.png"}])])
