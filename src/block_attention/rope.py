"""Exact RoPE re-encoding of cached keys, with the rotary parameters taken from the model itself.

A block encoded alone at positions ``0..n-1`` has keys ``k_i = s * R(i) k``, where ``R`` is the model's rotary
rotation and ``s`` its ``attention_scaling``. Placed at offset ``p`` it needs ``s * R(p + i) k = R(p) k_i``: one
rotation by ``p`` with *unscaled* cos/sin (scaling already sits in ``k_i``), computed and applied in float32 and
cast back once. Values are untouched; GQA needs nothing (cos/sin broadcast over heads).

:func:`inspect_model` decides at engine construction whether a model can be served exactly, and raises
:class:`UnsupportedModelError` naming the reason otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import UnsupportedModelError

# Families whose attention applies RoPE with the rotate-half (GPT-NeoX) convention to the full head dim, and whose
# cache holds post-RoPE keys. Each is covered by the oracle tests (or shares its attention code with one that is).
VERIFIED_MODEL_TYPES = frozenset({"llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "phi3"})
# Rotary types whose frequencies do not depend on positions (or only beyond a limit we enforce).
STATIC_ROPE_TYPES = frozenset({"default", "linear", "llama3", "yarn"})
LIMITED_ROPE_TYPES = frozenset({"dynamic", "longrope"})


@dataclass(frozen=True)
class RotaryInfo:
    """What re-encoding needs to know about a model's RoPE."""

    inv_freq: torch.Tensor  # [head_dim // 2] float32, the frequencies used within ``exact_limit``
    attention_scaling: float
    rope_type: str
    head_dim: int
    exact_limit: int | None  # total prompt length beyond which reuse would not be exact (None: no limit)
    limit_reason: str | None

    def describe(self) -> dict[str, object]:
        """JSON-able summary for fingerprints and reports."""
        return {
            "rope_type": self.rope_type,
            "head_dim": self.head_dim,
            "attention_scaling": float(self.attention_scaling),
            "inv_freq": [float(x) for x in self.inv_freq.tolist()],
            "exact_limit": self.exact_limit,
        }


def _base_model(model: torch.nn.Module) -> torch.nn.Module:
    get_base = getattr(model, "get_base_model", None)
    if callable(get_base):  # a PEFT wrapper: the transformers model inside (adapter layers are injected in place)
        model = get_base()
    prefix = getattr(model, "base_model_prefix", "model")
    return getattr(model, prefix, model)


def inspect_model(model: torch.nn.Module) -> RotaryInfo:
    """Return the model's rotary parameters, or raise :class:`UnsupportedModelError` saying why it cannot be served."""
    config = getattr(model, "config", None)
    if config is None:
        raise UnsupportedModelError("The model has no `.config`; pass a transformers PreTrainedModel (AutoModelForCausalLM).")
    text_config = config.get_text_config(decoder=True)
    model_type = getattr(text_config, "model_type", "?")
    if model_type not in VERIFIED_MODEL_TYPES:
        raise UnsupportedModelError(
            f"Model type {model_type!r} is not supported: exact block re-encoding is verified only for "
            f"{sorted(VERIFIED_MODEL_TYPES)} (standard rotate-half RoPE on the full head, full-attention cache). "
            "Use mode='full' through plain transformers for this model, or open an issue to add it."
        )
    layer_types = getattr(text_config, "layer_types", None) or []
    if any(t != "full_attention" for t in layer_types):
        kinds = sorted(set(layer_types))
        raise UnsupportedModelError(
            f"Model type {model_type!r} has non-full attention layers {kinds}; sliding-window/hybrid layers cannot "
            "hold concatenated block caches exactly. Load the model with full attention on every layer."
        )
    rotary = getattr(_base_model(model), "rotary_emb", None)
    if rotary is None or not hasattr(rotary, "inv_freq"):
        raise UnsupportedModelError(
            f"Model type {model_type!r} exposes no rotary embedding (`model.model.rotary_emb`); block re-encoding "
            "needs RoPE positions."
        )
    rope_params = dict(getattr(text_config, "rope_parameters", None) or {})
    rope_type = str(getattr(rotary, "rope_type", rope_params.get("rope_type", "default")))
    if rope_type not in STATIC_ROPE_TYPES | LIMITED_ROPE_TYPES:
        raise UnsupportedModelError(
            f"RoPE type {rope_type!r} is not supported; supported types: "
            f"{sorted(STATIC_ROPE_TYPES | LIMITED_ROPE_TYPES)}."
        )
    partial = float(rope_params.get("partial_rotary_factor", getattr(text_config, "partial_rotary_factor", 1.0)) or 1.0)
    head_dim = int(getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads)
    inv_freq = getattr(rotary, "original_inv_freq", rotary.inv_freq).detach().to("cpu", torch.float32).clone()
    if partial != 1.0 or inv_freq.numel() * 2 != head_dim:
        raise UnsupportedModelError(
            f"Model type {model_type!r} uses partial rotary embeddings (factor {partial}, "
            f"{inv_freq.numel() * 2} of {head_dim} dims); only full-head RoPE is implemented."
        )

    limit: int | None = None
    reason: str | None = None
    if rope_type == "dynamic":
        limit = int(getattr(rotary, "original_max_seq_len", text_config.max_position_embeddings))
        reason = f"dynamic-NTK RoPE changes its frequencies beyond {limit} tokens"
    elif rope_type == "longrope":
        limit = int(rope_params.get("original_max_position_embeddings", text_config.max_position_embeddings))
        reason = f"LongRoPE switches to its long factors beyond {limit} tokens"
    window = getattr(text_config, "sliding_window", None)
    if window and getattr(text_config, "use_sliding_window", True) and not layer_types:
        if limit is None or window < limit:
            limit, reason = int(window), f"the model's sliding window is {window} tokens"
    return RotaryInfo(inv_freq, float(getattr(rotary, "attention_scaling", 1.0)), rope_type, head_dim, limit, reason)


def rotation(offsets: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unscaled float32 ``cos, sin`` of shape ``[T, head_dim]`` for per-token position offsets ``[T]``."""
    freqs = offsets.to(torch.float32)[:, None] * inv_freq.to(offsets.device, torch.float32)[None, :]  # [T, D/2]
    emb = torch.cat((freqs, freqs), dim=-1)  # [T, D]
    return emb.cos(), emb.sin()


def rotate_keys_(keys: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``keys [..., T, D]`` in place by ``cos/sin [T, D]`` (float32 math, one cast back). Returns ``keys``."""
    k = keys.to(torch.float32)
    half = k.shape[-1] // 2
    rotated = torch.cat((-k[..., half:], k[..., :half]), dim=-1)  # rotate_half(k)
    keys.copy_(k * cos + rotated * sin)
    return keys
