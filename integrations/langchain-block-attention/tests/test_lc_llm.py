"""BlockAttentionLLM with real LangChain objects and the tiny offline model (greedy decoding)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document

from langchain_block_attention import BLOCK_PROMPT, BLOCK_SEPARATOR, BlockAttentionLLM

N = 6
QUESTION = "Who built the lighthouse?"


@pytest.fixture(scope="module")
def engine(make_engine: Any) -> Any:
    return make_engine()


@pytest.fixture(scope="module")
def llm(engine: Any) -> BlockAttentionLLM:
    return BlockAttentionLLM(engine=engine, max_tokens=N)


@pytest.fixture(scope="module")
def docs() -> list[Document]:
    return [
        Document("The lighthouse of Alexandria stood on Pharos.", id="pharos", metadata={"title": "Pharos"}),
        Document("Robert Stevenson built the Bell Rock lighthouse.", metadata={"id": "bell", "score": 0.5}),
        Document("Foxes jump over lazy dogs."),
    ]


def expected_blocks(docs: list[Document]) -> list[Any]:
    from block_attention import Block

    return [Block("The lighthouse of Alexandria stood on Pharos.", "pharos", title="Pharos"),
            Block("Robert Stevenson built the Bell Rock lighthouse.", "bell"),
            Block("Foxes jump over lazy dogs.")]


def test_invoke_matches_engine_and_second_call_hits_cache(llm: BlockAttentionLLM, engine: Any,
                                                          docs: list[Document]) -> None:
    want = engine.generate(expected_blocks(docs), QUESTION, max_new_tokens=N).text
    first = llm.generate([QUESTION], documents=docs).generations[0][0]
    second = llm.generate([QUESTION], documents=docs).generations[0][0]
    assert first.text == second.text == want
    stats = second.generation_info["stats"]
    assert stats["misses"] == 0 and stats["hits"] == len(docs) + 1  # every document + the prefix block
    assert llm.invoke(QUESTION, documents=docs) == want


def test_without_documents_is_a_plain_llm(llm: BlockAttentionLLM, engine: Any) -> None:
    # No documents and no instruction: no RAG instruction either (the engine's default one is about documents).
    assert llm.invoke(QUESTION) == engine.generate([], QUESTION, system="", max_new_tokens=N).text
    with_instruction = engine.generate([], QUESTION, system="Be brief.", max_new_tokens=N).text
    assert llm.invoke(QUESTION, instruction="Be brief.") == with_instruction


def test_stream_equals_invoke_and_reports_tokens(llm: BlockAttentionLLM, docs: list[Document]) -> None:
    class Collect(BaseCallbackHandler):
        def __init__(self) -> None:
            self.tokens: list[str] = []

        def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
            self.tokens.append(token)

    collect = Collect()
    pieces = list(llm.stream(QUESTION, documents=docs, config={"callbacks": [collect]}))
    assert len([p for p in pieces if p]) > 1
    assert "".join(pieces) == llm.invoke(QUESTION, documents=docs) == "".join(collect.tokens)


def test_async_invoke_and_stream(llm: BlockAttentionLLM, docs: list[Document]) -> None:
    want = llm.invoke(QUESTION, documents=docs)

    async def run() -> tuple[str, str]:
        text = await llm.ainvoke(QUESTION, documents=docs)
        streamed = "".join([piece async for piece in llm.astream(QUESTION, documents=docs)])
        return text, streamed

    assert asyncio.run(run()) == (want, want)


def test_batch_and_bind(llm: BlockAttentionLLM, engine: Any, docs: list[Document]) -> None:
    questions = [QUESTION, "Where was it?"]
    bound = llm.bind(documents=docs)
    assert bound.batch(questions) == [llm.invoke(q, documents=docs) for q in questions]
    full = llm.invoke(QUESTION, documents=docs, mode="full")
    assert full == engine.generate(expected_blocks(docs), QUESTION, mode="full", max_new_tokens=N).text


def test_stop_is_honoured(llm: BlockAttentionLLM, docs: list[Document]) -> None:
    text = BlockAttentionLLM(engine=llm.engine, max_tokens=12).invoke(QUESTION, documents=docs)
    stop = text[len(text) // 2:len(text) // 2 + 2]
    assert stop.strip(), "the tiny model's output should have printable text to stop on"
    cut = BlockAttentionLLM(engine=llm.engine, max_tokens=12).invoke(QUESTION, documents=docs, stop=[stop])
    assert cut == text[:text.find(stop)]
    assert BlockAttentionLLM(engine=llm.engine, max_tokens=12, stop=[stop]).invoke(QUESTION, documents=docs) == cut


def test_block_separator_splits_a_flat_prompt(llm: BlockAttentionLLM, engine: Any, docs: list[Document]) -> None:
    flat = BLOCK_SEPARATOR.join([d.page_content for d in docs] + [QUESTION])
    want = engine.generate([d.page_content for d in docs], QUESTION, max_new_tokens=N).text
    assert llm.invoke(flat) == want


def test_create_stuff_documents_chain_with_block_separator(llm: BlockAttentionLLM, engine: Any,
                                                          docs: list[Document]) -> None:
    from langchain_classic.chains.combine_documents import create_stuff_documents_chain

    chain = create_stuff_documents_chain(llm, BLOCK_PROMPT, document_separator=BLOCK_SEPARATOR)
    answer = chain.invoke({"context": docs, "input": QUESTION})
    assert answer == engine.generate([d.page_content for d in docs], QUESTION, max_new_tokens=N).text


def test_engine_loads_lazily_from_a_model_folder(tiny_model_dir: Any, llm: BlockAttentionLLM,
                                                 docs: list[Document]) -> None:
    lazy = BlockAttentionLLM(model=str(tiny_model_dir), max_tokens=N)
    assert not lazy.engine_loaded
    assert lazy.invoke(QUESTION, documents=docs) == llm.invoke(QUESTION, documents=docs)
    assert lazy.engine_loaded and lazy._get_ls_params()["ls_model_name"] == str(tiny_model_dir)


def test_errors_name_the_fix(llm: BlockAttentionLLM) -> None:
    with pytest.raises(ValueError, match="model="):
        BlockAttentionLLM()
    with pytest.raises(ValueError, match="documents="):
        llm.invoke(QUESTION, documnets=[])
    with pytest.raises(TypeError, match="wrap it in a list"):
        llm.invoke(QUESTION, documents=Document("x"))


def test_builtin_offline_model_by_name(llm: BlockAttentionLLM, docs: list[Document]) -> None:
    named = BlockAttentionLLM(model="tiny-random", max_tokens=N)
    assert named.invoke(QUESTION, documents=docs) == llm.invoke(QUESTION, documents=docs)
