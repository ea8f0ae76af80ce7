"""Capability probe of vLLM's rotary embedding: may cached block keys be moved by :func:`rotate_block_into`?

The probe builds the rotary module the model's attention uses (``get_rope`` with the model's head size, position
limit and ``rope_parameters``; vLLM caches the module, so the Llama-family models listed in :data:`ARCHITECTURES`
get the very same instance) and measures, on seeded random keys, that keys rotated by vLLM at positions
``p..p+n-1`` equal the keys rotated at ``0..n-1`` moved by ``p`` with the library's one float32 rotation (rotate-half
or interleaved, whichever fits; within the engine's probe tolerance, since vLLM's float32 angle ``(t + p) * f`` and
the composed ``t * f + p * f`` round differently at large positions; a wrong layout or frequency is off by O(1)).
Architectures outside the list, rotary types that depend on the sequence length,
and a probe error above tolerance are refused: the connector then serves nothing (every request is a miss).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from block_attention.core.errors import UnsupportedModelError
from block_attention.hf.rope import PROBE_TOLERANCE, rotate_block_into

# Architectures whose vLLM attention builds its rotary exactly as the probe does (get_rope(head_dim,
# max_position_embeddings, rope_parameters, is_neox_style=True)); checked in vLLM 0.32.0's model files.
ARCHITECTURES = frozenset({"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"})
POSITION_DEPENDENT = frozenset({"dynamic", "longrope"})
PROBE_TOKENS, PROBE_SHIFTS = 6, (1, 37, 1021)


@dataclass(frozen=True)
class Rotary:
    """What moving a block needs: the rotary frequencies (float32 ``[R/2]``) and the pair layout."""

    inv_freq: torch.Tensor
    interleaved: bool


def probe(vllm_config: Any) -> Rotary:
    """The rotation of the engine's model, measured; raises :class:`UnsupportedModelError` when refused."""
    from vllm.config import set_current_vllm_config

    with set_current_vllm_config(vllm_config):  # vLLM's custom ops dispatch on the current config
        return _probe(vllm_config.model_config)


def _probe(model_config: Any) -> Rotary:
    from vllm.model_executor.layers.rotary_embedding import get_rope

    archs = set(getattr(model_config.hf_config, "architectures", None) or [])
    if not archs & ARCHITECTURES:
        raise UnsupportedModelError(f"Architectures {sorted(archs)} are not verified for block KV in vLLM (verified: "
                                    f"{sorted(ARCHITECTURES)}); requests are computed by vLLM itself.")
    text = model_config.hf_text_config
    params = getattr(text, "rope_parameters", None)
    kind = (params or {}).get("rope_type", "default")
    if kind in POSITION_DEPENDENT:
        raise UnsupportedModelError(f"RoPE type {kind!r} depends on the sequence length; block KV cannot be moved.")
    head = int(model_config.get_head_size())
    rope = get_rope(head, max_position=int(text.max_position_embeddings), rope_parameters=params, is_neox_style=True)
    inv_freq = rope._compute_inv_freq(rope.base).to(torch.float32)  # [R/2]
    dtype = model_config.dtype
    gen = torch.Generator().manual_seed(0)
    keys = torch.randn(PROBE_TOKENS, head, generator=gen).to(dtype)  # [n, D] one kv head

    def rotated(start: int) -> torch.Tensor:
        positions = torch.arange(start, start + PROBE_TOKENS)  # [n]
        query = keys.clone()  # [n, D] (the op rotates in place)
        _, key = rope(positions, query, keys.clone())
        return key.view(PROBE_TOKENS, 1, head).transpose(0, 1)  # [1, n, D]

    at_zero = rotated(0)
    worst = {False: 0.0, True: 0.0}
    for shift in PROBE_SHIFTS:
        target = rotated(shift)
        scale = max(float(target.abs().max()), 1e-6)
        for interleaved in worst:
            moved = rotate_block_into(torch.empty_like(at_zero), at_zero, shift, inv_freq, interleaved)  # [1, n, D]
            worst[interleaved] = max(worst[interleaved], float((moved - target).abs().max()) / scale)
    tol = PROBE_TOLERANCE.get(dtype, 5e-2)  # the engine's probe tolerance: float32 angles of large positions
    for interleaved in (False, True):
        if worst[interleaved] <= tol:
            return Rotary(inv_freq, interleaved)
    raise UnsupportedModelError(f"vLLM's rotary embedding is not the library's rotation of cached keys (relative "
                                f"error {min(worst.values()):.2g}, tolerance {tol:g}); block KV cannot be moved.")
