"""The fingerprint follows the weights (issue #15, class 7): an in-place edit at an element a strided sample would
skip, ``load_state_dict``, an optimizer step and real PEFT LoRA adapter switches, disables and merges all change
the cache key before the next request; answers always equal an uncached engine's on the current weights."""

from __future__ import annotations

import pytest
import torch

from block_attention import BlockAttentionEngine, EngineConfig, PromptConfig, StoreConfig
from block_attention.hf.fingerprint import WeightsWatch, weights_digest
from block_attention.testing import tiny_model
from block_attention.testing.oracle import reference_logits

QUESTION = "Where did the lighthouse stand?"


def _engine(model, tok, **kw):
    return BlockAttentionEngine(model, tok, EngineConfig(prompt=PromptConfig()),
                                store=StoreConfig(memory_bytes=64 << 20, **kw))


def _check_fresh(engine, model, docs):
    """A request after a weight change: every block recomputed, logits equal the oracle on the current weights."""
    out = engine.prefill(docs, QUESTION, all_logits=True)
    assert out.stats.hits == 0 and out.stats.misses == len(docs) + 1
    assert (out.logits - reference_logits(model, out.layout)).abs().max().item() <= 1e-4
    return out


def test_in_place_edit_anywhere_changes_the_key_and_undoing_it_hits_again(tok, docs):
    model = tiny_model("llama", seed=0)
    engine = _engine(model, tok)
    engine.prefill(docs, QUESTION)
    before = engine.fingerprint
    weight = model.model.layers[0].self_attn.k_proj.weight  # 64*32 elements: a 256-sample stride skips index 1
    old = weight.view(-1)[1].item()
    with torch.no_grad():
        weight.view(-1)[1] += 0.5
    _check_fresh(engine, model, docs)
    assert engine.fingerprint != before
    with torch.no_grad():
        weight.view(-1)[1] = old
    again = engine.prefill(docs, QUESTION)
    assert engine.fingerprint == before and again.stats.misses == 0  # the original weights' KV is still valid


def test_every_element_of_every_weight_is_hashed():
    model = tiny_model("llama", seed=0)
    base = weights_digest(model)
    for name, p in model.named_parameters():
        for index in (0, 1, p.numel() // 2 + 1, p.numel() - 1):
            with torch.no_grad():
                old = p.view(-1)[index].item()
                p.view(-1)[index] = old + 1.0
            assert weights_digest(model) != base, (name, index)
            with torch.no_grad():
                p.view(-1)[index] = old
    assert weights_digest(model) == base


def test_load_state_dict_and_an_optimizer_step_change_the_key(tok, docs):
    model = tiny_model("llama", seed=0)
    engine = _engine(model, tok)
    seen = {engine.fingerprint}
    engine.prefill(docs, QUESTION)
    model.load_state_dict(tiny_model("llama", seed=1).state_dict())
    out = _check_fresh(engine, model, docs)
    plain = BlockAttentionEngine(tiny_model("llama", seed=1), tok, EngineConfig(prompt=PromptConfig()), store=False)
    assert torch.equal(out.logits, plain.prefill(docs, QUESTION, all_logits=True).logits)
    seen.add(engine.fingerprint)

    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    ids = torch.tensor([tok("training text about lighthouses").input_ids])
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    model.eval()
    _check_fresh(engine, model, docs)
    assert engine.fingerprint not in seen


def test_nothing_changed_means_no_rehash(tok, docs, llama):
    engine = _engine(llama, tok)
    for _ in range(3):
        engine.generate(docs, QUESTION, max_new_tokens=3)
        assert engine.refresh_fingerprint() is False  # forward passes bump no weight version counter
    watch = WeightsWatch(llama)
    assert not watch.changed()


def test_lora_adapter_switch_disable_and_merge_change_the_key(tok, docs):
    peft = pytest.importorskip("peft")
    model = tiny_model("llama", seed=0)
    lora = dict(r=4, target_modules=["q_proj", "k_proj", "v_proj"], init_lora_weights=False)
    torch.manual_seed(0)
    peft_model = peft.get_peft_model(model, peft.LoraConfig(**lora))
    peft_model.add_adapter("second", peft.LoraConfig(**lora))
    peft_model.eval()
    engine = _engine(peft_model, tok)
    plain = BlockAttentionEngine(peft_model, tok, EngineConfig(prompt=PromptConfig()), store=False)

    def answer_matches_uncached():
        out = engine.prefill(docs, QUESTION, all_logits=True)
        assert torch.equal(out.logits, plain.prefill(docs, QUESTION, all_logits=True).logits)
        return out

    first = answer_matches_uncached()
    seen = {engine.fingerprint}
    assert first.stats.misses == len(docs) + 1
    peft_model.set_adapter("second")
    assert answer_matches_uncached().stats.hits == 0 and engine.fingerprint not in seen
    seen.add(engine.fingerprint)
    peft_model.set_adapter("default")
    back = answer_matches_uncached()
    assert back.stats.misses == 0 and engine.fingerprint in seen  # switching back reuses the first adapter's KV
    with peft_model.disable_adapter():
        assert answer_matches_uncached().stats.hits == 0 and engine.fingerprint not in seen
        seen.add(engine.fingerprint)
    peft_model.merge_adapter()
    merged = answer_matches_uncached()
    assert merged.stats.hits == 0 and engine.fingerprint not in seen


def test_a_replaced_module_is_seen_and_a_non_persistent_buffer_is_not():
    model = tiny_model("llama", seed=0)
    watch = WeightsWatch(model)
    attn = model.model.layers[0].self_attn
    old = attn.k_proj
    torch.manual_seed(1)
    attn.k_proj = torch.nn.Linear(old.in_features, old.out_features, bias=old.bias is not None)  # same names, shapes
    assert watch.changed() and not watch.changed()
    rotary = model.model.rotary_emb
    rotary.register_buffer("inv_freq", rotary.inv_freq * 1.0, persistent=False)  # what dynamic RoPE does per call
    assert not watch.changed()
    torch.manual_seed(2)
    attn.k_proj.weight.data = torch.randn_like(attn.k_proj.weight)  # a new storage behind the same parameter
    assert watch.changed()
