"""BlockAttentionLLM (LlamaIndex CustomLLM) with the tiny offline model (greedy decoding)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from llama_index.core.llms import ChatMessage
from llama_index.core.schema import NodeWithScore, TextNode

from llama_index.llms.block_attention import BlockAttentionLLM, node_key

N = 6
QUESTION = "Who built the lighthouse?"


@pytest.fixture(scope="module")
def engine(make_engine: Any) -> Any:
    return make_engine()


@pytest.fixture(scope="module")
def llm(engine: Any) -> BlockAttentionLLM:
    return BlockAttentionLLM(engine=engine, max_new_tokens=N)


@pytest.fixture(scope="module")
def nodes() -> list[NodeWithScore]:
    return [NodeWithScore(node=TextNode(id_="pharos", text="The lighthouse of Alexandria stood on Pharos."), score=0.9),
            NodeWithScore(node=TextNode(id_="bell", text="Robert Stevenson built the Bell Rock lighthouse."),
                          score=0.4)]


def node_blocks(nodes: list[NodeWithScore]) -> list[Any]:
    from block_attention import Block

    return [Block(n.node.get_content(metadata_mode="llm"), f"{n.node.node_id}:{n.node.hash}") for n in nodes]


def test_metadata(llm: BlockAttentionLLM, engine: Any) -> None:
    meta = llm.metadata
    assert meta.context_window == engine.max_positions == 4096
    assert meta.num_output == N and meta.model_name == "block-attention" and not meta.is_chat_model
    named = BlockAttentionLLM(engine=engine, model_name="tiny", max_new_tokens=9, context_window=1000).metadata
    assert (named.model_name, named.num_output, named.context_window) == ("tiny", 9, 1000)


def test_metadata_of_a_lazy_model_does_not_load_it(tiny_model_dir: Any, llm: BlockAttentionLLM,
                                                   nodes: list[NodeWithScore]) -> None:
    lazy = BlockAttentionLLM(model_name=str(tiny_model_dir), max_new_tokens=N)
    assert lazy.metadata.context_window == 4096 and lazy.metadata.model_name == str(tiny_model_dir)
    assert not lazy.engine_loaded
    assert lazy.complete(QUESTION, nodes=nodes).text == llm.complete(QUESTION, nodes=nodes).text
    assert lazy.engine_loaded


def test_complete_with_nodes_matches_engine_and_hits_cache(llm: BlockAttentionLLM, engine: Any,
                                                           nodes: list[NodeWithScore]) -> None:
    want = engine.generate(node_blocks(nodes), QUESTION, max_new_tokens=N).text
    first = llm.complete(QUESTION, nodes=nodes)
    second = llm.complete(QUESTION, nodes=nodes)
    assert first.text == second.text == want
    stats = second.additional_kwargs["stats"]
    assert stats["misses"] == 0 and stats["hits"] == len(nodes) + 1
    assert node_key(nodes[0].node) == f"pharos:{nodes[0].node.hash}"


def test_edited_node_gets_a_new_cache_key(llm: BlockAttentionLLM, nodes: list[NodeWithScore]) -> None:
    llm.complete(QUESTION, nodes=nodes)
    edited = NodeWithScore(node=TextNode(id_="pharos", text="The Pharos lighthouse fell in an earthquake."))
    stats = llm.complete(QUESTION, nodes=[edited, nodes[1]]).additional_kwargs["stats"]
    assert stats["misses"] == 1 and stats["hits"] == 2


def test_blocks_and_plain_prompt(llm: BlockAttentionLLM, engine: Any) -> None:
    texts = ["Foxes jump.", "Dogs sleep."]
    assert llm.complete(QUESTION, blocks=texts).text == engine.generate(texts, QUESTION, max_new_tokens=N).text
    assert llm.complete(QUESTION).text == engine.generate([], QUESTION, system="", max_new_tokens=N).text


def test_stream_complete_equals_complete(llm: BlockAttentionLLM, nodes: list[NodeWithScore]) -> None:
    want = llm.complete(QUESTION, nodes=nodes).text
    responses = list(llm.stream_complete(QUESTION, nodes=nodes))
    assert len(responses) > 2 and "".join(r.delta for r in responses) == want == responses[-1].text
    assert responses[-1].additional_kwargs["finish_reason"] == "length"


def test_async_complete_and_stream(llm: BlockAttentionLLM, nodes: list[NodeWithScore]) -> None:
    want = llm.complete(QUESTION, nodes=nodes).text

    async def run() -> tuple[str, str]:
        done = await llm.acomplete(QUESTION, nodes=nodes)
        stream = await llm.astream_complete(QUESTION, nodes=nodes)
        return done.text, "".join([r.delta async for r in stream])

    assert asyncio.run(run()) == (want, want)


def test_chat_maps_roles(llm: BlockAttentionLLM, engine: Any, nodes: list[NodeWithScore]) -> None:
    messages = [ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="Hi"),
                ChatMessage(role="assistant", content="Hello"), ChatMessage(role="user", content=QUESTION)]
    want = engine.generate(node_blocks(nodes), QUESTION, system="Be brief.", max_new_tokens=N,
                           history=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}])
    reply = llm.chat(messages, nodes=nodes)
    assert reply.message.content == want.text
    assert "".join(r.delta for r in llm.stream_chat(messages, nodes=nodes)) == want.text
    with pytest.raises(ValueError, match="ending with a user message"):
        llm.chat(messages[:-1])


def test_errors_name_the_fix(llm: BlockAttentionLLM) -> None:
    with pytest.raises(ValueError, match="model_name="):
        BlockAttentionLLM()
    with pytest.raises(ValueError, match="nodes"):
        llm.complete(QUESTION, node=[])


def test_builtin_offline_model_by_name(llm: BlockAttentionLLM, nodes: list[NodeWithScore]) -> None:
    named = BlockAttentionLLM(model_name="tiny-random", max_new_tokens=N)
    assert named.metadata.context_window == 4096 and named.metadata.model_name == "tiny-random"
    assert named.complete(QUESTION, nodes=nodes).text == llm.complete(QUESTION, nodes=nodes).text
