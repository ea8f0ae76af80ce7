"""Training-time masked forward over a collator batch == the engine's inference, row for row (float32)."""

from __future__ import annotations

import pytest
import torch

from block_attention.core.blocks import Block
from block_attention.core.config import EngineConfig, GenerationConfig
from block_attention.core.prompt import PromptConfig
from block_attention.engine import BlockAttentionEngine
from block_attention.finetune.collator import BlockCollator
from block_attention.finetune.synthetic import SyntheticConfig, make_task, task_prompt_config, task_tokenizer
from block_attention.testing import tiny_model, tiny_tokenizer

ATOL = 1e-4


def _blocks(example):
    return [Block(b["text"], doc_id=b.get("id"), title=b.get("title")) for b in example["blocks"]]


def _task_model(seed: int = 0):
    from transformers import AutoModelForCausalLM, LlamaConfig

    tok = task_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval(), tok


def _cases():
    tok = tiny_tokenizer()
    examples = [
        {"blocks": [{"text": "The lighthouse stood on Pharos.", "title": "Pharos", "id": "a"},
                    {"text": "Block attention caches each passage.", "id": "b"},
                    {"text": "The quick brown fox jumps.", "id": "c"}],
         "question": "Where did the lighthouse stand?", "answer": "On Pharos."},
        {"blocks": [{"text": "Users ask questions about documents.", "id": "d"}],
         "question": "Who asks?", "answer": "Users.", "system": "Be brief."},
    ]
    return [
        ("llama-chatml", lambda: (tiny_model("llama", seed=1), tok), PromptConfig(), examples),
        ("qwen2-plain", lambda: (tiny_model("qwen2", seed=2), tok),
         PromptConfig(use_chat_template=False, block_marker="[Block-Attention]"), examples),
        ("task-llama", _task_model, task_prompt_config(), list(make_task(SyntheticConfig(n_train=3, n_test=0)).train)),
    ]


@pytest.mark.parametrize("name,make,prompt,examples", _cases(), ids=[c[0] for c in _cases()])
@pytest.mark.parametrize("mode", ["block", "full"])
def test_final_block_logits_match_engine(name, make, prompt, examples, mode):
    model, tok = make()
    collator = BlockCollator(tok, prompt, mode=mode)
    encoded = [collator.encode(ex) for ex in examples]
    batch = collator.collate(encoded)  # padded: rows of different lengths
    with torch.no_grad():
        train_logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             position_ids=batch["position_ids"]).logits  # [B, T, V]
    engine = BlockAttentionEngine(model, tok, EngineConfig(prompt=prompt), store=False)
    for row, (ex, enc) in enumerate(zip(examples, encoded)):
        out = engine.prefill(_blocks(ex), ex["question"], system=ex.get("system"), mode=mode, all_logits=True)
        assert out.layout == enc.layout
        start, stop = enc.layout.context_len, enc.layout.total_len
        expected = train_logits[row, start:stop]  # [F, V]
        assert out.logits.shape == expected.shape
        torch.testing.assert_close(out.logits.float(), expected, atol=ATOL, rtol=0)


def test_teacher_forced_response_matches_engine_greedy():
    """Where the masked forward's argmax reproduces the response, the engine's greedy decode returns it too."""
    model, tok = _task_model(seed=5)
    ex = make_task(SyntheticConfig(n_train=1, n_test=0, seed=7)).train[0]
    collator = BlockCollator(tok, task_prompt_config(), mode="block")
    enc = collator.encode(ex)
    engine = BlockAttentionEngine(model, tok, EngineConfig(prompt=task_prompt_config()), store=False)
    gen = engine.generate(_blocks(ex), ex["question"], mode="block",
                          generation=GenerationConfig(max_new_tokens=4, stop_on_eos=False))
    # feed the engine's own tokens back through the training mask: the argmax chain must agree step by step
    tokens = list(gen.token_ids)
    ids = enc.layout.input_ids() + tokens
    from block_attention.core.layout import additive_mask, block_causal_mask
    mask = additive_mask(block_causal_mask(enc.layout.block_lengths, len(enc.layout.final_ids) + len(tokens)),
                         torch.float32)  # [1, 1, T, T]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids]), attention_mask=mask,
                       position_ids=torch.arange(len(ids))[None]).logits[0]  # [T, V]
    P = enc.layout.total_len
    assert logits[P - 1: P - 1 + len(tokens)].argmax(-1).tolist() == tokens
