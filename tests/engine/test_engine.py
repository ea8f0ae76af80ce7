"""Engine correctness against independent oracles.

Block path vs one masked forward (every family, sdpa and eager, every RoPE variant); full mode and single-block
requests vs plain ``model.generate``; streaming, stop strings, sampling, overflow policies.
"""

import pytest
import torch

from block_attention import Block, BlockAttentionEngine, EngineConfig, GenerationConfig, PromptConfig
from block_attention.core.errors import ConfigError, ContextTooLongError, UnsupportedModelError
from block_attention.testing import FAMILIES, ROPE_VARIANTS, refused_model, tiny_model
from block_attention.testing.oracle import reference_greedy, reference_logits

QUESTION = "Where did the lighthouse stand?"


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("family", FAMILIES)
def test_block_path_matches_masked_oracle(family, attn, tok, docs):
    model = tiny_model(family, seed=1, attn_implementation=attn)
    engine = BlockAttentionEngine(model, tok, store=False)
    out = engine.prefill(docs, QUESTION, all_logits=True)
    ref = reference_logits(model, out.layout)
    assert out.logits.shape == ref.shape == (len(out.layout.final_ids), model.config.vocab_size)
    assert (out.logits - ref).abs().max().item() <= 1e-4
    gen = engine.generate(docs, QUESTION, max_new_tokens=16)
    assert list(gen.token_ids) == reference_greedy(model, out.layout, 16, engine.eos_ids)
    # The oracle is not trivially equal to full attention: the block mask changes the logits.
    full = engine.prefill(docs, QUESTION, mode="full", all_logits=True)
    assert (full.logits - ref).abs().max().item() > 1e-3


@pytest.mark.parametrize("variant", sorted(ROPE_VARIANTS))
def test_rope_variants_match_oracle(variant, tok, docs):
    family, overrides = ROPE_VARIANTS[variant]
    model = tiny_model(family, seed=2, **overrides)
    engine = BlockAttentionEngine(model, tok, store=False)
    long_docs = [Block(d.text * 4, d.doc_id) for d in docs]  # offsets in the hundreds
    out = engine.prefill(long_docs, QUESTION, all_logits=True)
    assert out.layout.context_len > 300
    assert (out.logits - reference_logits(model, out.layout)).abs().max().item() <= 1e-4


def _plain_generate(model, ids, n):
    out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, len(ids):].tolist()


def test_full_mode_equals_model_generate(tok, docs, llama):
    engine = BlockAttentionEngine(llama, tok, EngineConfig(mode="full"), store=False)
    gen = engine.generate(docs, QUESTION, max_new_tokens=20, stop_on_eos=False)
    ids = engine.layout(docs, QUESTION).input_ids()
    assert list(gen.token_ids) == _plain_generate(llama, ids, 20)
    assert gen.stats.mode == "full" and gen.stats.hits == 0


def test_single_block_equals_model_generate(tok, llama):
    cfg = EngineConfig(prompt=PromptConfig(instruction=None, use_chat_template=False))
    engine = BlockAttentionEngine(llama, tok, cfg, store=False)
    doc = Block("Block attention caches every retrieved passage on its own and reuses it.", "only")
    layout = engine.layout([doc], QUESTION)
    assert len(layout.blocks) == 1
    gen = engine.generate([doc], QUESTION, max_new_tokens=20, stop_on_eos=False)
    assert list(gen.token_ids) == _plain_generate(llama, layout.input_ids(), 20)
    assert gen.token_ids == engine.generate([doc], QUESTION, mode="full", max_new_tokens=20,
                                            stop_on_eos=False).token_ids


def test_batched_encoding_equals_one_block_per_pass(tok, docs, llama):
    varied = [Block(d.text * (i + 1), d.doc_id) for i, d in enumerate(docs)]  # different lengths -> padding
    one = BlockAttentionEngine(llama, tok, EngineConfig(max_batch_tokens=1), store=False)
    many = BlockAttentionEngine(llama, tok, EngineConfig(max_batch_tokens=100000), store=False)
    a = one.prefill(varied, QUESTION, all_logits=True).logits
    b = many.prefill(varied, QUESTION, all_logits=True).logits
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_streaming_matches_generate_and_stop_strings(tok, docs, llama):
    engine = BlockAttentionEngine(llama, tok, store=False)
    full = engine.generate(docs, QUESTION, max_new_tokens=24, stop_on_eos=False)
    stream = engine.stream(docs, QUESTION, max_new_tokens=24, stop_on_eos=False)
    pieces = list(stream)
    assert len(pieces) > 1 and "".join(pieces) == full.text == stream.result.text
    assert stream.result.stats.ttft_s > 0 and stream.result.stats.new_tokens == 24
    text = full.text
    stop = next(text[i:i + 3] for i in range(len(text) // 2, len(text) - 3) if "\ufffd" not in text[i:i + 3])
    cut = text.find(stop)
    stopped = engine.stream(docs, QUESTION, max_new_tokens=24, stop=(stop,), stop_on_eos=False)
    streamed = "".join(stopped)
    assert streamed == stopped.result.text == text[:cut]
    assert stopped.result.finish_reason == "stop" and stop not in streamed


def test_sampling_is_seeded(tok, docs, llama):
    engine = BlockAttentionEngine(llama, tok, store=False)
    runs = [engine.generate(docs, QUESTION, max_new_tokens=16, do_sample=True, temperature=1.5, top_k=50,
                            top_p=0.95, seed=s, stop_on_eos=False).token_ids for s in (7, 7, 8)]
    assert runs[0] == runs[1] and runs[0] != runs[2]


def test_overflow_error_and_drop_lowest(tok, docs):
    model = tiny_model("llama", max_position_embeddings=128)
    strict = BlockAttentionEngine(model, tok, EngineConfig(prompt=PromptConfig(instruction=None)), store=False)
    with pytest.raises(ContextTooLongError, match="drop_lowest"):
        strict.generate(docs, QUESTION, max_new_tokens=8)
    lenient = BlockAttentionEngine(model, tok, EngineConfig(overflow="drop_lowest",
                                                            prompt=PromptConfig(instruction=None)), store=False)
    gen = lenient.generate(docs, QUESTION, max_new_tokens=8)
    assert gen.stats.dropped[0] == "fox"  # lowest score goes first
    assert gen.stats.prompt_tokens + 8 <= 128


def test_position_dependent_rope_limit_is_enforced_in_block_mode_only(tok, docs):
    family, overrides = ROPE_VARIANTS["longrope"]
    engine = BlockAttentionEngine(tiny_model(family, **overrides), tok, store=False)
    long_docs = [Block(d.text * 12, d.doc_id) for d in docs]
    with pytest.raises(ContextTooLongError, match="LongRoPE"):
        engine.generate(long_docs, QUESTION, max_new_tokens=4)
    assert engine.generate(long_docs, QUESTION, max_new_tokens=4, mode="full").stats.mode == "full"


def test_engine_refuses_block_mode_only_for_models_without_rope(tok, docs):
    engine = BlockAttentionEngine(refused_model("GPT-2"), tok, store=False)  # construction succeeds
    with pytest.raises(UnsupportedModelError, match="absolute position"):
        engine.generate(docs, QUESTION, max_new_tokens=2)
    assert engine.generate(docs, QUESTION, mode="full", max_new_tokens=2).stats.mode == "full"


def test_bad_generation_options(tok, llama, docs):
    engine = BlockAttentionEngine(llama, tok, store=False)
    with pytest.raises(ConfigError, match="Unknown generation options"):
        engine.generate(docs, QUESTION, max_tokens=3)
    with pytest.raises(ConfigError, match="temperature"):
        GenerationConfig(temperature=0)
    with pytest.raises(ConfigError, match="mode"):
        engine.generate(docs, QUESTION, mode="sparse")  # type: ignore[arg-type]


def test_bf16_block_path_tracks_oracle(tok, docs):
    model = tiny_model("qwen2", seed=3, dtype=torch.bfloat16)
    engine = BlockAttentionEngine(model, tok, store=False)
    out = engine.prefill(docs, QUESTION, all_logits=True)
    assert out.logits.dtype == torch.bfloat16
    ref = reference_logits(model, out.layout)
    assert (out.logits.float() - ref.float()).abs().max().item() <= 5e-2  # bf16 rounding only


def test_import_does_no_work():
    import subprocess
    import sys

    code = "import sys, block_attention; print('torch' in sys.modules, 'transformers' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "False False"
