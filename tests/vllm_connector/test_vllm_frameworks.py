"""The LangChain and LlamaIndex integrations pointed at a real ``vllm serve`` with the connector (its own venv):
real LangChain ``Document``s and LlamaIndex nodes, sent as block-structured requests.

* The first call of a passage set is a miss (every block reported missing; vLLM answers with full attention and
  the client encodes the blocks); the same passages in another order then hit (every block token loaded from the
  store), and the greedy answer equals this library's engine in block mode on the same blocks.
* ``mode="full"`` sends the same tokens as one plain prompt: the answer equals the engine in full mode.
"""

from __future__ import annotations

import pytest
import torch

from block_attention import BlockAttentionEngine, StoreConfig
from block_attention.testing.vllm_server import SERVED_NAME, VLLMServer

from vllm_helpers import require_vllm, smollm2_folder, vllm_env

pytestmark = pytest.mark.slow

NEW_TOKENS = 8
QUESTION = "Which river does the Harrow ferry cross?"
TEXTS = [
    ("harrow", "The Harrow ferry has crossed the river Tamsel since 1870, carrying carts between Bree and Oakum."),
    ("bree", "Bree is a market village famous for its cheese fair, held every October on the green."),
    ("oakum", "Oakum lies on the west bank of the Tamsel and has a rope works that closed in 1961."),
]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    vllm_python = require_vllm()
    folder = smollm2_folder()
    work = tmp_path_factory.mktemp("vllm-frameworks")
    mp = pytest.MonkeyPatch()
    for key, value in vllm_env().items():
        mp.setenv(key, value)
    try:
        with VLLMServer(vllm_python, folder, store={"memory_bytes": 1 << 28, "disk_dir": str(work / "kv")},
                        log_path=work / "vllm.log") as server:
            yield server, folder
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def engine(served):
    _, folder = served
    eng = BlockAttentionEngine.from_pretrained(str(folder), dtype=torch.float32,
                                               store=StoreConfig(memory_bytes=1 << 27))
    yield eng
    eng.close()


def _oracle(engine, blocks, mode="block") -> str:
    return engine.generate(blocks, QUESTION, mode=mode, max_new_tokens=NEW_TOKENS).text


def test_langchain_llm_on_vllm(served, engine):
    from langchain_core.documents import Document

    from langchain_block_attention import BlockAttentionVLLM
    from langchain_block_attention.documents import to_blocks

    server, folder = served
    docs = [Document(page_content=text, id=f"lc-{key}") for key, text in TEXTS]
    llm = BlockAttentionVLLM(base_url=server.base_url, model=SERVED_NAME, tokenizer=str(folder),
                             max_tokens=NEW_TOKENS)

    def ask(documents, **kwargs):
        generation = llm.generate([QUESTION], documents=documents, **kwargs).generations[0][0]
        return generation.text, generation.generation_info["block_attention"]

    _, first = ask(docs)
    passages = {m for m in first["missing"] if not m.startswith("prefix:")}  # the instruction block is one too
    assert first["hit"] is False and passages == {f"lc-{key}" for key, _ in TEXTS}, server.log_tail()
    reordered = docs[::-1]
    text, outcome = ask(reordered)
    assert outcome["hit"] is True and outcome["loaded_tokens"] > 0, server.log_tail()
    assert text == _oracle(engine, to_blocks(reordered))
    assert llm.invoke(QUESTION, documents=reordered) == text  # invoke: the same request as a string
    full, full_outcome = ask(reordered, mode="full")
    assert full_outcome == {}  # a plain prompt: the connector did nothing
    assert full == _oracle(engine, to_blocks(reordered), mode="full")


def test_llamaindex_llm_on_vllm(served, engine):
    from llama_index.core.schema import NodeWithScore, TextNode

    from llama_index.llms.block_attention import BlockAttentionVLLM
    from llama_index.llms.block_attention.blocks import to_blocks

    server, folder = served
    nodes = [NodeWithScore(node=TextNode(text=text, id_=f"li-{key}"), score=1.0) for key, text in TEXTS]
    llm = BlockAttentionVLLM(base_url=server.base_url, served_model=SERVED_NAME, model_name=str(folder),
                             max_new_tokens=NEW_TOKENS)
    assert llm.metadata.context_window == engine.max_positions
    first = llm.complete(QUESTION, nodes=nodes)
    assert first.additional_kwargs["stats"]["hit"] is False, server.log_tail()
    reordered = [nodes[1], nodes[2], nodes[0]]
    answer = llm.complete(QUESTION, nodes=reordered)
    assert answer.additional_kwargs["stats"]["hit"] is True, server.log_tail()
    assert answer.text == _oracle(engine, to_blocks(reordered))
    again = [nodes[2], nodes[0], nodes[1]]  # a new layout (a repeated one is vLLM's own prefix-cache hit)
    pieces = list(llm.stream_complete(QUESTION, nodes=again))
    assert pieces[-1].text == _oracle(engine, to_blocks(again)) and pieces[-1].additional_kwargs["stats"]["hit"]
