"""Prompt rendering: blocks tokenized alone, chat templates split at the documents, markers, errors."""

import pytest

from block_attention import Block
from block_attention.core.blocks import as_blocks, check_unique_ids
from block_attention.core.errors import ConfigError, InvalidRequestError
from block_attention.core.prompt import PromptBuilder, PromptConfig, recorded_prompt_config


def test_chat_template_split_keeps_history_in_final_block(tok, docs):
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    r = PromptBuilder(tok).render(docs, "Where?", history=history)
    assert r.prefix.startswith("<|im_start|>system\n") and "Answer the question" in r.prefix
    assert r.docs[0] == "- Title: Pharos\n" + docs[0].text + "\n"
    assert r.docs[1] == "- " + docs[1].text + "\n"
    assert "hi" in r.final and "hello" in r.final and r.final.endswith("<|im_start|>assistant\n")
    assert r.prefix + "".join(r.docs) + r.final == tok.apply_chat_template(
        [{"role": "system", "content": PromptConfig().instruction + "\n\n" + "".join(r.docs)}, *history,
         {"role": "user", "content": "Question: Where?"}], tokenize=False, add_generation_prompt=True)


def test_docs_in_user_turn_and_marker(tok, docs):
    cfg = PromptConfig(docs_in="user", block_marker="[Block-Attention]", instruction="Use the docs.")
    r = PromptBuilder(tok, cfg).render(docs, "Where?")
    assert r.prefix.startswith("[Block-Attention]<|im_start|>user\nUse the docs.")
    assert r.final.startswith("\nQuestion: Where?<|im_end|>")


def test_plain_prompt_with_bos(tok, docs):
    b = PromptBuilder(tok, PromptConfig(use_chat_template=False, add_bos=True, block_marker="[M]"))
    layout = b.layout(docs, "Where?")
    assert layout.blocks[0].token_ids[0] == tok.bos_token_id
    assert tok.decode(layout.blocks[0].token_ids).startswith("<s>[M]You are")
    assert all(tok.bos_token_id not in blk.token_ids for blk in layout.blocks[1:])
    assert tok.decode(layout.final_ids) == "\nQuestion: Where?\nAnswer:"
    assert [blk.doc_id for blk in layout.blocks[1:]] == ["pharos", "blocks", "fox"]


def test_each_block_is_tokenized_alone(tok, docs):
    layout = PromptBuilder(tok).layout(docs, "Where?")
    for blk, doc in zip(layout.blocks[1:], docs):
        text = PromptBuilder(tok).render_doc(doc)
        assert list(blk.token_ids) == tok(text, add_special_tokens=False)["input_ids"]


def test_request_errors(tok):
    with pytest.raises(InvalidRequestError, match="empty text"):
        Block("   ", "x")
    with pytest.raises(InvalidRequestError, match="must be a str"):
        Block(123, "x")  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError, match="share doc_id"):
        check_unique_ids([Block("a", "same"), Block("b", "same")])
    check_unique_ids([Block("a", "same"), Block("a", "same")])  # same text twice is fine
    with pytest.raises(InvalidRequestError, match="not a single string"):
        as_blocks("just a string")  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError, match="question must be a str"):
        PromptBuilder(tok).layout([], None)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError, match="history turn"):
        PromptBuilder(tok).layout([], "q", history=[("user", "hi")])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="docs_in"):
        PromptConfig(docs_in="middle")  # type: ignore[arg-type]
    assert as_blocks(["plain text"])[0].key.startswith("text:")


def test_recorded_prompt_config_round_trips_and_rejects_foreign_records():
    class Model:
        class config:  # noqa: N801 - stands in for a transformers config
            block_attention = {"prompt_config": {"instruction": None, "add_bos": True}}

    assert recorded_prompt_config(Model()) == PromptConfig(instruction=None, add_bos=True)
    Model.config.block_attention = {"prompt_config": {"instruction": None, "no_such_field": 1}}
    with pytest.raises(ConfigError, match="EngineConfig\\(prompt="):
        recorded_prompt_config(Model())
    Model.config.block_attention = None
    assert recorded_prompt_config(Model()) is None


def test_block_ids_are_remembered_and_forgotten_when_the_tokenizer_grows(docs):
    import copy

    from block_attention.testing import tiny_tokenizer

    tok = copy.deepcopy(tiny_tokenizer())  # the shared one must not grow
    builder = PromptBuilder(tok, PromptConfig(use_chat_template=False))
    text = builder.render_doc(as_blocks(docs)[0])
    first = builder.block_ids(text)
    assert first == tuple(builder.tokenize(text)) and builder.block_ids(text) is first  # served from the LRU
    tok.add_tokens([text.split()[1]])  # a word of the block becomes one token
    again = builder.block_ids(text)
    assert again == tuple(builder.tokenize(text)) and again != first
