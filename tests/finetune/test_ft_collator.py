"""The collator's tokens, labels, positions and mask are the engine's inference layout."""

from __future__ import annotations

import pytest
import torch

from block_attention.core.blocks import Block
from block_attention.core.errors import BlockAttentionError, ConfigError
from block_attention.core.layout import block_causal_mask
from block_attention.core.prompt import PromptBuilder, PromptConfig
from block_attention.finetune.collator import IGNORE_INDEX, BlockCollator, CollatorConfig, TrainingDataError
from block_attention.finetune.synthetic import SyntheticConfig, make_task, task_prompt_config, task_tokenizer
from block_attention.testing import tiny_tokenizer

EXAMPLES = [
    {"blocks": [{"text": "The lighthouse stood on Pharos.", "title": "Pharos", "id": "d1"},
                {"text": "The fox jumps over the lazy dog.", "id": "d2"}],
     "question": "Where did the lighthouse stand?", "answer": "On Pharos."},
    {"blocks": [{"text": "Block attention caches passages."}],
     "question": "What is cached?", "answer": "Passages.", "system": "Answer briefly."},
]


def _setups():
    return [
        ("chatml", tiny_tokenizer(), PromptConfig()),
        ("plain", tiny_tokenizer(), PromptConfig(use_chat_template=False, block_marker="[Block-Attention]")),
        ("task", task_tokenizer(), task_prompt_config()),
    ]


def _blocks(example):
    return [Block(b["text"], doc_id=b.get("id"), title=b.get("title")) for b in example["blocks"]]


@pytest.mark.parametrize("name,tok,prompt", _setups(), ids=[s[0] for s in _setups()])
def test_block_mode_matches_inference_layout(name, tok, prompt):
    examples = EXAMPLES if name != "task" else list(make_task(SyntheticConfig(n_train=2, n_test=0)).train)
    collator = BlockCollator(tok, prompt, mode="block", max_len=512)
    batch = collator(examples)
    builder = PromptBuilder(tok, prompt)
    B, T = batch["input_ids"].shape
    assert batch["attention_mask"].shape == (B, 1, T, T)
    assert batch["attention_mask"].dtype == torch.float32
    allowed = batch["attention_mask"][:, 0] == 0  # [B, T, T]
    for row, ex in enumerate(examples):
        layout = builder.layout(_blocks(ex), ex["question"], ex.get("system"))
        response = builder.tokenize(collator.response_prefix + ex["answer"]) + [tok.eos_token_id]
        n = layout.total_len + len(response)
        assert batch["input_ids"][row, :n].tolist() == layout.input_ids() + response
        expected = block_causal_mask(layout.block_lengths, len(layout.final_ids) + len(response))
        assert torch.equal(allowed[row, :n, :n], expected)
        # over the prompt alone it is the engine's mask of the layout
        P = layout.total_len
        assert torch.equal(allowed[row, :P, :P], block_causal_mask(layout.block_lengths, len(layout.final_ids)))
        labels = batch["labels"][row]
        assert (labels[:P] == IGNORE_INDEX).all()
        assert labels[P:n].tolist() == response
        assert (labels[n:] == IGNORE_INDEX).all()
        assert batch["position_ids"][row].tolist() == list(range(T))
        # padding: pad ids, pad columns masked for every row, pad rows see only themselves
        assert (batch["input_ids"][row, n:] == collator.pad_id).all()
        assert torch.equal(allowed[row, n:, n:], torch.eye(T - n, dtype=torch.bool))
        assert not allowed[row, :n, n:].any()
        assert not allowed[row, n:, :n].any()


def test_full_mode_is_causal_and_mixed_is_seeded():
    tok = task_tokenizer()
    examples = list(make_task(SyntheticConfig(n_train=40, n_test=0, seed=3)).train)
    full = BlockCollator(tok, task_prompt_config(), mode="full")
    enc = full.encode(examples[0])
    assert torch.equal(enc.allowed(), torch.ones(len(enc.input_ids), len(enc.input_ids), dtype=torch.bool).tril())

    def modes(seed, fraction):
        c = BlockCollator(tok, task_prompt_config(), mode="mixed", full_fraction=fraction, seed=seed)
        return [c.encode(ex).attention for ex in examples]

    assert modes(0, 0.5) == modes(0, 0.5)
    assert {"block", "full"} == set(modes(0, 0.5))
    assert set(modes(0, 0.0)) == {"block"} and set(modes(0, 1.0)) == {"full"}
    forced = BlockCollator(tok, task_prompt_config(), mode="block").encode({**examples[0], "attention": "full"})
    assert forced.attention == "full"


def test_label_scopes():
    tok = task_tokenizer()
    ex = make_task(SyntheticConfig(n_train=1, n_test=0)).train[0]
    encs = {s: BlockCollator(tok, task_prompt_config(), label_scope=s).encode(ex) for s in ("response", "final", "all")}
    layout = encs["response"].layout
    n_labelled = {s: sum(t != IGNORE_INDEX for t in e.labels) for s, e in encs.items()}
    assert n_labelled["response"] == len(encs["response"].response_ids)
    assert n_labelled["final"] == n_labelled["response"] + len(layout.final_ids)
    assert n_labelled["all"] == len(encs["all"].input_ids) - 1


def test_errors_name_the_fix():
    tok = task_tokenizer()
    ex = make_task(SyntheticConfig(n_train=1, n_test=0)).train[0]
    with pytest.raises(TrainingDataError, match="max_len"):
        BlockCollator(tok, task_prompt_config(), max_len=10)([ex])
    with pytest.raises(BlockAttentionError, match="answer"):
        BlockCollator(tok, task_prompt_config())([{**ex, "answer": ""}])
    with pytest.raises(TrainingDataError, match="'attention'"):
        BlockCollator(tok, task_prompt_config())([{**ex, "attention": "sliding"}])
    with pytest.raises(ConfigError, match="mode"):
        CollatorConfig(mode="blocky")
    with pytest.raises(ConfigError, match="full_fraction"):
        CollatorConfig(full_fraction=1.5)
    with pytest.raises(TrainingDataError, match="empty batch"):
        BlockCollator(tok, task_prompt_config()).collate([])
