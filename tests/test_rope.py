"""RoPE re-encoding is exact, takes parameters from the model, and unsupported models are refused."""

import pytest
import torch

from block_attention.errors import UnsupportedModelError
from block_attention.rope import inspect_model, rotate_keys_, rotation
from block_attention.testing import tiny_model

ROPE_VARIANTS = {
    "default": ("llama", {}),
    "linear": ("llama", dict(rope_parameters={"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0})),
    "dynamic": ("llama", dict(rope_parameters={"rope_type": "dynamic", "factor": 4.0, "rope_theta": 10000.0})),
    "llama3": ("llama", dict(rope_parameters={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                              "high_freq_factor": 4.0, "original_max_position_embeddings": 64,
                                              "rope_theta": 500000.0})),
    "yarn": ("qwen2", dict(rope_parameters={"rope_type": "yarn", "factor": 4.0,
                                            "original_max_position_embeddings": 1024, "rope_theta": 10000.0})),
    "longrope": ("phi3", dict(original_max_position_embeddings=1024, rope_parameters={
        "rope_type": "longrope", "short_factor": [1.0 + 0.1 * i for i in range(8)],
        "long_factor": [2.0 + 0.1 * i for i in range(8)], "rope_theta": 10000.0})),
}


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
    cos, sin = rotation(torch.full((n,), offset), info.inv_freq)
    moved = rotate_keys_(canonical.clone(), cos, sin)
    torch.testing.assert_close(moved, apply(torch.arange(offset, offset + n)), rtol=0, atol=2e-5)


def test_yarn_scaling_is_not_applied_twice():
    info = inspect_model(tiny_model(*ROPE_VARIANTS["yarn"][:1], **ROPE_VARIANTS["yarn"][1]))
    assert info.attention_scaling > 1.05  # the case that would break a naive composition
    cos, sin = rotation(torch.zeros(3, dtype=torch.long), info.inv_freq)
    assert torch.equal(cos, torch.ones_like(cos)) and torch.equal(sin, torch.zeros_like(sin))


def test_limits_for_position_dependent_rope():
    family, overrides = ROPE_VARIANTS["longrope"]
    assert inspect_model(tiny_model(family, **overrides)).exact_limit == 1024
    family, overrides = ROPE_VARIANTS["dynamic"]
    assert inspect_model(tiny_model(family, **overrides)).exact_limit == 4096
    assert inspect_model(tiny_model("mistral", sliding_window=512)).exact_limit == 512
    assert inspect_model(tiny_model("llama")).exact_limit is None


def test_unsupported_models_are_refused_with_reason():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=50))
    with pytest.raises(UnsupportedModelError, match="not supported"):
        inspect_model(gpt2)
    with pytest.raises(UnsupportedModelError, match="partial rotary"):
        inspect_model(tiny_model("phi3", partial_rotary_factor=0.5))
    hybrid = tiny_model("qwen2", use_sliding_window=True, sliding_window=64, max_window_layers=1)
    with pytest.raises(UnsupportedModelError, match="sliding"):
        inspect_model(hybrid)
