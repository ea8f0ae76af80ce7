"""SmolLM2-135M-Instruct for real (the registry package, offline): block mode is exact against the masked oracle,
and the served answer follows an edited passage."""

from __future__ import annotations

import pytest

from block_attention.core.blocks import Block
from block_attention.finetune.facts import edited, make_examples
from block_attention.hf.registry import REAL_MODELS
from block_attention.models import load_engine, real_model_installed
from block_attention.testing.oracle import reference_greedy, reference_logits

pytestmark = pytest.mark.skipif(not real_model_installed("smollm2-135m"),
                                reason="install it with: " + REAL_MODELS["smollm2-135m"].install)


@pytest.fixture(scope="module")
def engine():
    with load_engine("smollm2-135m") as eng:
        yield eng


def _blocks(example):
    return [Block(b["text"], doc_id=b["id"], title=b["title"] or None) for b in example["blocks"]]


def test_loads_offline_in_float32_with_the_recommended_recovery(engine):
    import torch

    assert next(engine.model.parameters()).dtype == torch.float32
    assert engine.config.recompute_tokens == 16 and not engine.block_finetuned
    assert engine.model.config.num_hidden_layers == 30


def test_block_mode_matches_the_masked_oracle_cold_and_warm_in_any_order(engine):
    example = make_examples(1, split="test", seed=11, min_passages=4, max_passages=4)[0]
    blocks = _blocks(example)
    for order in (blocks, blocks[::-1]):
        for _ in ("cold", "warm"):
            out = engine.prefill(order, example["question"], recompute_tokens=0, all_logits=True)
            ref = reference_logits(engine.model, out.layout)
            # float32 through 30 layers: the block path and the one masked forward sum in different orders
            assert (out.logits - ref).abs().max().item() <= 2e-3
            gen = engine.generate(order, example["question"], recompute_tokens=0, max_new_tokens=8)
            assert list(gen.token_ids) == reference_greedy(engine.model, out.layout, 8, engine.eos_ids)
    full = engine.prefill(blocks, example["question"], mode="full", all_logits=True)
    assert (full.logits - ref).abs().max().item() > 1e-2  # block attention really differs from full attention


def test_an_edited_passage_changes_the_answer():
    # the shipped block fine-tune, in block mode, warm: where it answers the original right, it follows the edit
    followed = answered = 0
    with load_engine("smollm2-135m-block-ft") as tuned:
        for example in make_examples(8, split="test", seed=5):
            before = tuned.generate(_blocks(example), example["question"], max_new_tokens=32, stop=("\n",))
            if example["value"] not in before.text:
                continue
            answered += 1
            after_ex = edited(example)
            after = tuned.generate(_blocks(after_ex), after_ex["question"], max_new_tokens=32, stop=("\n",))
            followed += after_ex["value"] in after.text and example["value"] not in after.text
    assert answered >= 2 and followed >= answered - 1, f"followed the edit in {followed} of {answered}"
