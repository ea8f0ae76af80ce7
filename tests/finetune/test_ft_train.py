"""Trainer-based fine-tuning: the loss goes down, the checkpoint carries the prompt record, the CLI works."""

from __future__ import annotations

import json

import pytest
import torch

from block_attention.core.config import EngineConfig
from block_attention.core.errors import ConfigError
from block_attention.core.prompt import PromptConfig, recorded_prompt_config
from block_attention.engine import BlockAttentionEngine
from block_attention.finetune.collator import BlockCollator, TrainingDataError
from block_attention.finetune.synthetic import SyntheticConfig, make_task, task_prompt_config, task_tokenizer
from block_attention.finetune.train import TrainConfig, load_examples, main, save_finetuned, train
from block_attention.testing import tiny_model, tiny_tokenizer


def _task_model(seed: int = 0, attn: str = "sdpa"):
    from transformers import AutoModelForCausalLM, LlamaConfig

    tok = task_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn).eval(), tok


def _loss(model, batch) -> float:
    with torch.no_grad():
        return float(model(**batch).loss)


def test_a_few_block_steps_reduce_the_loss():
    model, tok = _task_model()
    examples = list(make_task(SyntheticConfig(n_train=16, n_test=0, seed=1)).train)
    batch = BlockCollator(tok, task_prompt_config(), mode="block")(examples)
    before = _loss(model, batch)
    result = train(model, tok, examples, TrainConfig(mode="mixed", lr=3e-3, batch_size=8, max_steps=12,
                                                     logging_steps=4, num_threads=1), task_prompt_config())
    after = _loss(result.model, batch)
    assert result.steps == 12 and not result.model.training
    assert after < before - 0.5, (before, after)
    assert result.losses and result.losses[-1][1] < result.losses[0][1]


def test_save_records_the_prompt_for_the_engine(tmp_path):
    model, tok = tiny_model("llama", seed=0), tiny_tokenizer()
    prompt = PromptConfig(block_marker="[Block-Attention]", instruction="Answer from the documents.")
    save_finetuned(model, tok, tmp_path / "ckpt", prompt, "mixed")
    engine = BlockAttentionEngine.from_pretrained(str(tmp_path / "ckpt"), dtype=torch.float32,
                                                  attn_implementation="sdpa", store=False)
    assert engine.prompt_config == prompt
    assert engine.model.config.block_attention["trained_with"] == "mixed"
    assert recorded_prompt_config(engine.model) == prompt
    assert BlockAttentionEngine(engine.model, engine.tokenizer, EngineConfig()).prompt_config == prompt


def test_cli_end_to_end(tmp_path, capsys):
    model, tok = _task_model(seed=3)
    save_finetuned(model, tok, tmp_path / "base", task_prompt_config(), "full")
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps(ex) for ex in make_task(SyntheticConfig(n_train=6, n_test=0)).train) + "\n")
    assert len(load_examples(data)) == 6
    rc = main(["--model", str(tmp_path / "base"), "--data", str(data), "--out", str(tmp_path / "out"),
               "--mode", "block", "--max-steps", "2", "--batch-size", "3", "--lr", "1e-3", "--threads", "1"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["steps"] == 2
    engine = BlockAttentionEngine.from_pretrained(str(tmp_path / "out"), dtype=torch.float32, store=False)
    assert engine.prompt_config == task_prompt_config()
    assert engine.model.config.block_attention["trained_with"] == "block"


def test_errors_name_the_fix(tmp_path):
    model, tok = _task_model(attn="eager")
    model.config._attn_implementation = "flash_attention_2"  # pretend: only the check is exercised
    with pytest.raises(ConfigError, match="attn_implementation='sdpa'"):
        train(model, tok, [{"blocks": ["x"], "question": "q", "answer": "a"}], TrainConfig(max_steps=1))
    with pytest.raises(ConfigError, match="max_steps"):
        TrainConfig(max_steps=0)
    with pytest.raises(ConfigError, match="lr"):
        TrainConfig(lr=-1.0)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"blocks": []}\nnot json\n')
    with pytest.raises(TrainingDataError, match=r"bad.jsonl:2"):
        load_examples(bad)
    with pytest.raises(TrainingDataError, match="does not exist"):
        load_examples(tmp_path / "missing.jsonl")
