"""The recipes users copy from LangChain's docs keep one cached block per document (real LangChain objects).

Each recipe runs twice: the answer equals the engine's own answer for the same blocks, the second run is all
cache hits, and the KV store's miss counter agrees with the requests' misses.
"""

from __future__ import annotations

import copy
import logging
import pickle
from pathlib import Path
from typing import Any

import pytest
from langchain_core.documents import Document
from langchain_core.globals import set_llm_cache
from langchain_core.caches import InMemoryCache
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate, PromptTemplate
from langchain_core.runnables import RunnablePassthrough

from block_attention.frameworks.markers import split_prompt
from langchain_block_attention import (BlockAttentionLLM, BlockAttentionRetriever, ChatBlockAttention,
                                       create_stuff_documents_chain, format_docs, to_blocks)

N = 6
K = 3
QUESTION = "Who built the Bell Rock lighthouse?"
SYSTEM = "Answer the question from the context below."
CHAT_PROMPT = ChatPromptTemplate.from_messages([("system", SYSTEM + "\n\n{context}"), ("human", "{question}")])
TUTORIAL_PROMPT = PromptTemplate.from_template(  # the shape of the hub's rlm/rag-prompt
    "You are an assistant for question-answering tasks. Use the retrieved context to answer.\n"
    "Question: {question}\nContext: {context}\nAnswer:")


@pytest.fixture()
def engine(make_engine: Any) -> Any:
    return make_engine()


@pytest.fixture(scope="module")
def oracle(make_engine: Any) -> Any:
    """The engine's own answers, from a separate engine (its cache state never touches the one under test)."""
    return make_engine()


@pytest.fixture(scope="module")
def retriever(index: Any) -> BlockAttentionRetriever:
    return BlockAttentionRetriever(retriever=index, top_k=K)


def run_twice(engine: Any, call: Any) -> tuple[Any, Any, int, int]:
    """Run ``call`` twice; return both outputs and the store's miss/hit counts of the second run."""
    first = call()
    before = engine.store.stats()
    second = call()
    after = engine.store.stats()
    return first, second, after.misses - before.misses, after.hits - before.hits


def test_tutorial_lcel_chain_with_chat_model_keeps_blocks(oracle: Any, engine: Any,
                                                          retriever: BlockAttentionRetriever) -> None:
    chat = ChatBlockAttention(engine=engine, max_tokens=N)
    chain = {"context": retriever | format_docs, "question": RunnablePassthrough()} | CHAT_PROMPT | chat
    docs = retriever.invoke(QUESTION)
    want = oracle.generate(to_blocks(docs), QUESTION, system=SYSTEM, max_new_tokens=N)
    first, second, misses, hits = run_twice(engine, lambda: chain.invoke(QUESTION))
    assert first.content == second.content == want.text
    stats = second.response_metadata["block_attention"]
    assert stats["misses"] == misses == 0 and stats["hits"] == hits == K + 1  # every passage + the prefix block
    assert first.response_metadata["block_attention"]["misses"] == K + 1
    assert (chain | StrOutputParser()).invoke(QUESTION) == want.text


def test_tutorial_lcel_chain_with_llm_keeps_blocks(oracle: Any, engine: Any,
                                                   retriever: BlockAttentionRetriever) -> None:
    llm = BlockAttentionLLM(engine=engine, max_tokens=N)
    chain = ({"context": retriever | format_docs, "question": RunnablePassthrough()} | TUTORIAL_PROMPT | llm
             | StrOutputParser())
    docs = retriever.invoke(QUESTION)
    rest = TUTORIAL_PROMPT.format(question=QUESTION, context="").strip()
    want = oracle.generate(to_blocks(docs), rest, max_new_tokens=N).text
    first, second, misses, hits = run_twice(engine, lambda: chain.invoke(QUESTION))
    assert first == second == want
    assert misses == 0 and hits == K + 1
    assert "".join(chain.stream(QUESTION)) == want


def test_stuff_documents_drop_in_inside_create_retrieval_chain(oracle: Any, engine: Any,
                                                               retriever: BlockAttentionRetriever) -> None:
    from langchain_classic.chains import create_retrieval_chain

    chat = ChatBlockAttention(engine=engine, max_tokens=N)
    prompt = ChatPromptTemplate.from_messages([("system", SYSTEM + "\n\n{context}"), ("human", "{input}")])
    chain = create_retrieval_chain(retriever, create_stuff_documents_chain(chat, prompt, keep_message=True))
    docs = retriever.invoke(QUESTION)
    want = oracle.generate(to_blocks(docs), QUESTION, system=SYSTEM, max_new_tokens=N).text
    first, second, misses, _ = run_twice(engine, lambda: chain.invoke({"input": QUESTION}))
    assert first["answer"].content == second["answer"].content == want
    stats = second["answer"].response_metadata["block_attention"]
    assert stats["misses"] == misses == 0 and stats["memory_hits"] == K + 1 and stats["ttft_s"] > 0
    assert stats["hits_by_tier"] == {"memory": K + 1} and stats["dropped"] == []
    plain = create_retrieval_chain(retriever, create_stuff_documents_chain(chat, prompt))
    assert plain.invoke({"input": QUESTION})["answer"] == want


def test_stuff_documents_drop_in_with_llm_and_ids(oracle: Any, engine: Any) -> None:
    llm = BlockAttentionLLM(engine=engine, max_tokens=N)
    prompt = PromptTemplate.from_template("Context:\n{context}\n\nQuestion: {input}\nAnswer:")
    docs = [Document("Robert Stevenson built the Bell Rock lighthouse.", id="bell"),
            Document("Sostratus built the lighthouse of Alexandria.", id="pharos", metadata={"title": "Pharos"})]
    chain = create_stuff_documents_chain(llm, prompt)
    split = split_prompt(prompt.format(context=format_docs(docs), input=QUESTION))
    assert [(b.doc_id, b.title, b.text) for b in split.blocks] == [
        ("bell", None, docs[0].page_content), ("pharos", "Pharos", docs[1].page_content)]
    assert split.rest == f"Context:\n\nQuestion: {QUESTION}\nAnswer:"
    want = oracle.generate(to_blocks(docs), split.rest, max_new_tokens=N).text
    first, second, misses, hits = run_twice(engine, lambda: chain.invoke({"context": docs, "input": QUESTION}))
    assert first == second == want and misses == 0 and hits == len(docs) + 1


def test_flat_context_warns_once_per_model(engine: Any, caplog: pytest.LogCaptureFixture) -> None:
    from langchain_classic.chains.combine_documents import create_stuff_documents_chain as stock_chain

    chat = ChatBlockAttention(engine=engine, max_tokens=2)
    prompt = ChatPromptTemplate.from_messages([("system", "Use the context:\n\n{context}"), ("human", "{input}")])
    docs = [Document(f"Passage {i}: " + "the keeper lit the lamp every night " * 6) for i in range(4)]
    chain = stock_chain(chat, prompt)
    with caplog.at_level(logging.WARNING, logger="langchain_block_attention"):
        chain.invoke({"context": docs, "input": QUESTION})
        chain.invoke({"context": docs, "input": QUESTION})
    warnings = [r for r in caplog.records if "format_docs" in r.getMessage()]
    assert len(warnings) == 1
    with caplog.at_level(logging.WARNING, logger="langchain_block_attention"):
        create_stuff_documents_chain(chat, prompt).invoke({"context": docs, "input": QUESTION})
    assert len([r for r in caplog.records if "format_docs" in r.getMessage()]) == 1


DOCS_A = [Document("The Pharos lighthouse stood at Alexandria.", id="a1"),
          Document("Sostratus of Cnidus designed it.", id="a2")]
DOCS_B = [Document("Robert Stevenson built Bell Rock.", id="b1"),
          Document("It was finished in 1810 off Angus.", id="b2")]


@pytest.fixture(params=["memory", "sqlite"])
def llm_cache(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "memory":
        cache: Any = InMemoryCache()
    else:
        from langchain_community.cache import SQLiteCache

        cache = SQLiteCache(database_path=str(tmp_path / "llm_cache.db"))
    set_llm_cache(cache)
    yield cache
    set_llm_cache(None)


@pytest.fixture(scope="module")
def sensitive_llama() -> Any:
    """A tiny llama with larger random weights, whose greedy answers depend on the documents (the default tiny
    model's do not, which would make 'different documents, different answers' untestable)."""
    from block_attention.testing import tiny_model

    return tiny_model("llama", seed=0, initializer_range=0.2)


@pytest.mark.parametrize("kind", ["llm", "chat"])
def test_llm_cache_keys_on_documents(sensitive_llama: Any, tok: Any, llm_cache: Any, kind: str) -> None:
    from block_attention import BlockAttentionEngine

    engine, oracle = BlockAttentionEngine(sensitive_llama, tok), BlockAttentionEngine(sensitive_llama, tok)
    model: Any = (BlockAttentionLLM if kind == "llm" else ChatBlockAttention)(engine=engine, max_tokens=N)
    uncached = [oracle.generate(to_blocks(docs), QUESTION, max_new_tokens=N).text for docs in (DOCS_A, DOCS_B)]
    assert uncached[0] != uncached[1]

    def ask(docs: list[Document]) -> str:
        out = model.invoke(QUESTION, documents=docs)
        return out if isinstance(out, str) else out.content

    assert [ask(DOCS_A), ask(DOCS_B)] == uncached
    before = engine.store.stats()
    assert [ask(DOCS_A), ask(DOCS_B)] == uncached  # served by the LLM cache: the engine is not asked again
    after = engine.store.stats()
    assert (after.hits, after.misses) == (before.hits, before.misses)
    renamed = [Document(DOCS_A[0].page_content, id="other"), DOCS_A[1]]
    assert ask(renamed) == oracle.generate(to_blocks(renamed), QUESTION, max_new_tokens=N).text
    assert engine.store.stats().misses == after.misses + 1  # a new id is a new request, not a cache answer


def test_engine_tokenizer_counts_tokens(engine: Any) -> None:
    llm = BlockAttentionLLM(engine=engine, max_tokens=N)
    text = "The lighthouse of Alexandria"
    ids = engine.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert llm.get_token_ids(text) == ids and llm.get_num_tokens(text) == len(ids) > 0
    assert ChatBlockAttention(engine=engine).get_num_tokens(text) == len(ids)


def test_per_call_model_must_match(engine: Any) -> None:
    chat = ChatBlockAttention(engine=engine, model="tiny", max_tokens=2)
    assert isinstance(chat.invoke(QUESTION, model="tiny").content, str)
    with pytest.raises(ValueError, match="serves 'tiny'"):
        chat.invoke(QUESTION, model="gpt-4o")


def test_unloaded_models_survive_deepcopy_and_pickle(tiny_model_dir: Path, engine: Any) -> None:
    for cls in (BlockAttentionLLM, ChatBlockAttention):
        lazy = cls(model=str(tiny_model_dir), max_tokens=2)
        for twin in (copy.deepcopy(lazy), pickle.loads(pickle.dumps(lazy))):
            assert not twin.engine_loaded and twin.model == str(tiny_model_dir)
    lazy = BlockAttentionLLM(model="tiny-random", max_tokens=2)
    lazy.get_engine()
    twin = copy.deepcopy(lazy)
    assert twin.get_engine() is lazy.get_engine()  # deep copies share the loaded engine, never its weights
    revived = pickle.loads(pickle.dumps(lazy))
    assert not revived.engine_loaded and revived.invoke(QUESTION) == lazy.invoke(QUESTION)


def test_split_chunks_sharing_a_loader_id_are_keyed_apart(oracle: Any, engine: Any) -> None:
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    source = Document("The Bell Rock lighthouse is off Angus. " * 3 + "\n\n" + "Stevenson built it in 1810. " * 3,
                      metadata={"id": "bell.md"})
    chunks = RecursiveCharacterTextSplitter(chunk_size=120, chunk_overlap=0).split_documents([source])
    assert len(chunks) >= 2 and len({c.metadata["id"] for c in chunks}) == 1
    llm = BlockAttentionLLM(engine=engine, max_tokens=N)
    blocks = to_blocks(chunks)
    assert len({b.key for b in blocks}) == len(chunks) and all(b.key.startswith("bell.md#") for b in blocks)
    assert llm.invoke(QUESTION, documents=chunks) == oracle.generate(blocks, QUESTION, max_new_tokens=N).text
    assert to_blocks(chunks[::-1])[0].key == blocks[-1].key  # a chunk's key does not depend on the order


def test_chat_model_splits_separator_prompts(engine: Any, oracle: Any) -> None:
    from langchain_block_attention import BLOCK_SEPARATOR

    chat = ChatBlockAttention(engine=engine, max_tokens=N)
    texts = ["Robert Stevenson built Bell Rock.", "Smeaton built the third Eddystone tower."]
    reply = chat.invoke(BLOCK_SEPARATOR.join([*texts, QUESTION]))
    assert reply.content == oracle.generate(texts, QUESTION, max_new_tokens=N).text
    assert reply.response_metadata["block_attention"]["blocks"] == len(texts) + 1
