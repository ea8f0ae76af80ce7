"""Real OpenAI-compatible clients against the server: the official openai client, LangChain's ChatOpenAI and
LlamaIndex's OpenAILike, each sending documents through its extra-body hook; answers equal the engine's."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from block_attention.serving import ServerSettings, ServerThread, create_app
from server_helpers import DOCS, QUESTION, as_blocks

KEY = "client-key"


@pytest.fixture(scope="module")
def url(reference: Any) -> Iterator[str]:
    from block_attention.models import load_engine

    engine = load_engine("tiny-random")
    with ServerThread(create_app(engine, ServerSettings(model_name="tiny-random", api_key=KEY))) as thread:
        yield thread.base_url + "/v1"
    engine.close()


def test_openai_client_chat_stream_and_completions(url: str, reference: Any) -> None:
    from openai import OpenAI

    want = reference.generate(as_blocks(DOCS), QUESTION, system="Be brief.", max_new_tokens=10)
    client = OpenAI(base_url=url, api_key=KEY, max_retries=0)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}]
    reply = client.chat.completions.create(model="tiny-random", messages=messages, max_tokens=10, temperature=0,
                                           extra_body={"documents": DOCS})
    assert reply.choices[0].message.content == want.text
    assert reply.usage.completion_tokens == len(want.token_ids)
    assert reply.model_extra["block_attention"]["misses"] + reply.model_extra["block_attention"]["hits"] == 4
    stream = client.chat.completions.create(model="tiny-random", messages=messages, max_tokens=10, temperature=0,
                                            stream=True, extra_body={"documents": DOCS})
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == want.text
    plain = reference.generate(as_blocks(DOCS), "What is cached?", max_new_tokens=6)
    completion = client.completions.create(model="tiny-random", prompt="What is cached?", max_tokens=6,
                                           extra_body={"documents": DOCS})
    assert completion.choices[0].text == plain.text
    assert [m.id for m in client.models.list()] == ["tiny-random"]


def test_openai_client_sees_api_errors(url: str) -> None:
    import openai

    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url, api_key="wrong", max_retries=0).models.list()
    client = openai.OpenAI(base_url=url, api_key=KEY, max_retries=0)
    with pytest.raises(openai.BadRequestError, match="context_length_exceeded|context window"):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], max_tokens=5000)


def test_langchain_chat_openai(url: str, reference: Any) -> None:
    from langchain_core.messages import HumanMessage, SystemMessage
    from langchain_openai import ChatOpenAI

    want = reference.generate(as_blocks(DOCS), QUESTION, system="Be brief.", max_new_tokens=8)
    llm = ChatOpenAI(model="tiny-random", base_url=url, api_key=KEY, temperature=0, max_tokens=8, max_retries=0,
                     extra_body={"documents": DOCS})
    messages = [SystemMessage("Be brief."), HumanMessage(QUESTION)]
    assert llm.invoke(messages).content == want.text
    assert "".join(chunk.content for chunk in llm.stream(messages)) == want.text


def test_llama_index_openai_like(url: str, reference: Any) -> None:
    pytest.importorskip("llama_index.llms.openai_like")
    from llama_index.core.llms import ChatMessage
    from llama_index.llms.openai_like import OpenAILike

    want = reference.generate(as_blocks(DOCS), QUESTION, max_new_tokens=8)
    llm = OpenAILike(model="tiny-random", api_base=url, api_key=KEY, is_chat_model=True, temperature=0,
                     max_tokens=8, max_retries=0, additional_kwargs={"extra_body": {"documents": DOCS}})
    assert llm.chat([ChatMessage(role="user", content=QUESTION)]).message.content == want.text
    assert llm.complete(QUESTION).text == want.text
