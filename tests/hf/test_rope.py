"""RoPE re-encoding is exact, takes parameters from the model, and unsupported models are refused."""

import pytest
import torch

from block_attention.core.errors import UnsupportedModelError
from block_attention.hf.rope import inspect_model, rotate_block_into
from block_attention.testing import ROPE_VARIANTS, WINDOW, architecture_model, tiny_model
from block_attention.testing.rope import shift_keys_reference

@pytest.mark.parametrize("variant", sorted(ROPE_VARIANTS))
def test_rotation_by_offset_equals_model_rotary_at_global_position(variant):
    family, overrides = ROPE_VARIANTS[variant]
    model = tiny_model(family, **overrides)
    info = inspect_model(model)
    assert info.rope_type == variant
    rotary = model.model.rotary_emb
    torch.manual_seed(0)
    raw = torch.randn(2, 10, info.head_dim)  # [H, n, D] pre-RoPE keys
    n, offset = 10, 37

    def apply(positions):
        cos, sin = rotary(raw, positions[None])  # [1, n, D], scaled by attention_scaling
        half = info.head_dim // 2
        rot = torch.cat((-raw[..., half:], raw[..., :half]), dim=-1)
        return raw * cos[0] + rot * sin[0]

    canonical = apply(torch.arange(n))
    moved = rotate_block_into(torch.empty_like(canonical), canonical, offset, info.inv_freq)
    torch.testing.assert_close(moved, apply(torch.arange(offset, offset + n)), rtol=0, atol=2e-5)


def test_yarn_scaling_is_not_applied_twice():
    info = inspect_model(tiny_model(*ROPE_VARIANTS["yarn"][:1], **ROPE_VARIANTS["yarn"][1]))
    assert info.attention_scaling > 1.05  # the case that would break a naive composition
    torch.manual_seed(0)
    keys = torch.randn(2, 3, info.head_dim)  # [H, n, D]
    unmoved = rotate_block_into(torch.empty_like(keys), keys, 0, info.inv_freq)
    assert torch.equal(unmoved, keys)  # cos 1, sin 0: no attention_scaling on the shift


def test_limits_for_position_dependent_rope():
    family, overrides = ROPE_VARIANTS["longrope"]
    assert inspect_model(tiny_model(family, **overrides)).exact_limit == 1024
    family, overrides = ROPE_VARIANTS["dynamic"]
    assert inspect_model(tiny_model(family, **overrides)).exact_limit == 4096
    # A sliding window is not a limit: the window-aware mask serves prompts of any length exactly.
    mistral = inspect_model(tiny_model("mistral", sliding_window=512))
    assert mistral.exact_limit is None and mistral.windows == (512, 512)
    assert inspect_model(tiny_model("llama", sliding_window=512)).windows == (None, None)  # Llama ignores it
    assert inspect_model(tiny_model("llama")).exact_limit is None


@pytest.mark.parametrize("name,interleaved,rotary_dim", [
    ("Cohere", True, 16), ("GPT-NeoX", False, 4), ("Phi-3 (partial rotary)", False, 8), ("StableLM", False, 4),
])
def test_partial_and_interleaved_rotation_equals_the_models_own(name, interleaved, rotary_dim):
    """Moving keys by an offset equals the model's own RoPE at the global position, rotary dims only."""
    import sys

    model = architecture_model(name)
    info = inspect_model(model)
    assert (info.interleaved, info.rotary_dim, info.head_dim) == (interleaved, rotary_dim, 16)
    apply_rope = sys.modules[type(model).__module__].apply_rotary_pos_emb
    torch.manual_seed(0)
    raw = torch.randn(1, 2, 10, info.head_dim)  # [B, H, n, D] pre-RoPE keys
    n, offset = 10, 41

    def apply(positions):
        cos, sin = model.base_model.rotary_emb(raw, positions[None])  # [1, n, R]
        rot, rest = raw[..., :cos.shape[-1]], raw[..., cos.shape[-1]:]
        return torch.cat((apply_rope(rot, rot, cos, sin)[1], rest), dim=-1)

    canonical = apply(torch.arange(n))
    moved = rotate_block_into(torch.empty_like(canonical), canonical, offset, info.inv_freq, info.interleaved)
    torch.testing.assert_close(moved, apply(torch.arange(offset, offset + n)), rtol=0, atol=2e-5)
    assert torch.equal(moved[..., rotary_dim:], raw[..., rotary_dim:])  # pass-through dims untouched


def test_per_layer_type_rope_of_gemma3():
    info = inspect_model(architecture_model("Gemma3 (text)"))
    local, global_, local2 = (layer.inv_freq for layer in info.layers)
    assert torch.equal(local, local2) and not torch.allclose(local, global_)
    assert info.windows == (WINDOW, None, WINDOW)


def test_unsupported_models_are_refused_with_reason():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=50))
    with pytest.raises(UnsupportedModelError, match="absolute position embeddings"):
        inspect_model(gpt2)
    with pytest.raises(UnsupportedModelError, match="chunked"):
        inspect_model(tiny_model("llama", attention_chunk_size=32))


def test_probe_refuses_frequencies_the_model_does_not_apply():
    """The capability check measures the model: declared frequencies that disagree with its keys are refused."""
    model = tiny_model("llama")
    model.model.rotary_emb.original_inv_freq.mul_(1.5)  # the model keeps rotating with inv_freq
    with pytest.raises(UnsupportedModelError, match="not the model's RoPE rotation"):
        inspect_model(model)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("rotary_dim", [16, 8])  # 8 of 16 dims: partial rotary
def test_block_rotation_equals_the_per_token_table(dtype, interleaved, rotary_dim):
    torch.manual_seed(0)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, rotary_dim, 2, dtype=torch.float32) / rotary_dim))
    src = torch.randn(3, 2, 20, 16).to(dtype)  # [L, H, n, D]
    ulp = 2e-6 if dtype == torch.float32 else 8e-3  # one float32 rounding apart, then one cast back
    for delta in (5, 1234, -77):
        want = shift_keys_reference(src, torch.full((20,), delta), inv_freq, interleaved)
        into = torch.empty_like(src)
        assert rotate_block_into(into, src, delta, inv_freq, interleaved) is into
        torch.testing.assert_close(into.float(), want.float(), rtol=0, atol=ulp * float(src.abs().max()))
        assert torch.equal(into[..., rotary_dim:], src[..., rotary_dim:])
        same = src.clone()
        rotate_block_into(same, same, delta, inv_freq, interleaved)  # in place
        assert torch.equal(same, into)
        back = rotate_block_into(torch.empty_like(src), into.float(), -delta, inv_freq, interleaved)
        torch.testing.assert_close(back.float(), src.float(), rtol=0, atol=4 * ulp * float(src.abs().max()))
