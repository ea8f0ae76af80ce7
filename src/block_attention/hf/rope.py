"""Exact RoPE re-encoding of cached keys, with the rotary geometry taken from (and checked against) the model.

A block encoded alone at positions ``0..n-1`` has keys ``k_i = s * R(i) k``, where ``R`` is the model's rotary
rotation and ``s`` its ``attention_scaling``. Placed at offset ``p`` it needs ``s * R(p + i) k = R(p) k_i``: one
rotation by ``p`` with *unscaled* cos/sin (scaling already sits in ``k_i``), computed and applied in float32 and
cast back once. Values are untouched; GQA needs nothing (cos/sin broadcast over heads).

The rotation acts on the leading ``rotary_dim`` dims of each key head (partial rotary leaves the rest alone),
either rotate-half (GPT-NeoX/Llama: dim ``j`` pairs with ``j + rotary_dim/2``) or interleaved (GPT-J/Cohere: dim
``2j`` pairs with ``2j+1``), with frequencies per layer (Gemma3 uses different bases for local and global layers).
Layers may attend within a sliding window: a block encoded alone under the model's own window mask is exactly the
windowed block-causal oracle, so windows only decide which cache layers keep just their last ``window - 1`` tokens.

:func:`inspect_model` decides support by capability, not by model type: it reads the rotary module and layer
types, then *measures* it on a short probe (keys cached at positions ``p..p+n-1`` must be the keys cached at
``0..n-1`` rotated by ``p``, values unchanged, on every layer) and raises :class:`UnsupportedModelError` naming the
reason otherwise (no RoPE, MLA, chunked/linear layers, position-dependent RoPE per layer type, failed probe).
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

import torch

from block_attention.core.errors import UnsupportedModelError
from .cache import layer_tensors, new_cache
from .compat import cache_kwargs
from .unwrap import base_model

# Rotary types whose frequencies do not depend on positions (or only beyond a limit we enforce).
STATIC_ROPE_TYPES = frozenset({"default", "linear", "llama3", "yarn"})
LIMITED_ROPE_TYPES = frozenset({"dynamic", "longrope"})
PROBE_TOKENS, PROBE_SHIFT = 6, 13
PROBE_TOLERANCE = {torch.float32: 1e-3, torch.float64: 1e-6}  # relative; half precision types get 5e-2


@dataclass(frozen=True)
class LayerRotary:
    """One decoder layer's rotary frequencies and attention window."""

    inv_freq: torch.Tensor  # [rotary_dim // 2] float32, the frequencies used within ``exact_limit``
    attention_scaling: float
    window: int | None  # sliding window (tokens a query sees, itself included); None = full attention


@dataclass(frozen=True)
class RotaryInfo:
    """What re-encoding and cache assembly need to know about a model's positions."""

    layers: tuple[LayerRotary, ...]
    rope_type: str
    head_dim: int
    rotary_dim: int  # leading dims of each head that are rotated (== head_dim unless partial rotary)
    interleaved: bool  # GPT-J style pairs (2j, 2j+1) instead of rotate-half pairs (j, j + rotary_dim/2)
    exact_limit: int | None  # total prompt length beyond which reuse would not be exact (None: no limit)
    limit_reason: str | None
    kv_heads: int = 0  # KV heads the model actually caches (measured by the probe; 0 = unknown)

    def __post_init__(self) -> None:
        assert self.layers and 0 < self.rotary_dim <= self.head_dim and self.rotary_dim % 2 == 0
        assert all(layer.inv_freq.numel() * 2 == self.rotary_dim for layer in self.layers)

    @property
    def inv_freq(self) -> torch.Tensor:
        """Frequencies of the first layer (all layers share them unless the model has per-layer-type RoPE)."""
        return self.layers[0].inv_freq

    @property
    def attention_scaling(self) -> float:
        return self.layers[0].attention_scaling

    @functools.cached_property
    def frequency_groups(self) -> tuple[tuple[torch.Tensor, tuple[int, ...]], ...]:
        """``(inv_freq, layer indices)`` per distinct frequency set, in first-layer order (one group unless the
        model has per-layer-type RoPE, like Gemma3's local and global layers)."""
        groups: dict[tuple[float, ...], list[int]] = {}
        for index, layer in enumerate(self.layers):
            groups.setdefault(tuple(layer.inv_freq.tolist()), []).append(index)
        return tuple((self.layers[members[0]].inv_freq, tuple(members)) for members in groups.values())

    @property
    def windows(self) -> tuple[int | None, ...]:
        return tuple(layer.window for layer in self.layers)

    def describe(self) -> dict[str, object]:
        """JSON-able summary for fingerprints and reports."""
        freqs = []
        for layer in self.layers:
            f = [float(x) for x in layer.inv_freq.tolist()]
            if f not in freqs:
                freqs.append(f)
        return {
            "rope_type": self.rope_type,
            "head_dim": self.head_dim,
            "rotary_dim": self.rotary_dim,
            "interleaved": self.interleaved,
            "attention_scaling": sorted({float(layer.attention_scaling) for layer in self.layers}),
            "inv_freq": freqs,
            "windows": list(self.windows),
            "exact_limit": self.exact_limit,
        }


def _no_rope_reason(model: torch.nn.Module, config: object) -> str:
    """Why a model without a rotary module cannot have its cached keys moved."""
    try:
        source = inspect.getsource(inspect.getmodule(type(base_model(model))))
    except (OSError, TypeError):
        source = ""
    if getattr(config, "alibi", False) or getattr(getattr(config, "attn_config", None), "alibi", False) \
            or "alibi" in source.lower():
        return "it encodes positions as ALiBi attention biases, not as a rotation of the cached keys"
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Embedding) and any(k in name.lower() for k in ("wpe", "position", "pos_emb")):
            return f"it adds learned absolute position embeddings (`{name}`) to its inputs"
    return "it has no rotary embedding module, so its cached keys carry no rotation that could be moved"


def _rotary_module(model: torch.nn.Module) -> torch.nn.Module | None:
    base = base_model(model)
    rotary = getattr(base, "rotary_emb", None)
    if rotary is not None:
        return rotary
    found = [m for name, m in model.named_modules() if name.endswith("rotary_emb")]
    return found[0] if len(found) == 1 else None


def _layer_windows(model: torch.nn.Module, text_config: object, n_layers: int) -> list[int | None]:
    """Per-layer sliding windows that the model's own mask construction applies (None = full attention)."""
    layer_types = list(getattr(text_config, "layer_types", None) or [])
    window = getattr(text_config, "sliding_window", None)
    if layer_types:
        odd = sorted(set(layer_types) - {"full_attention", "sliding_attention"})
        if odd:
            raise UnsupportedModelError(
                f"The model has {odd} layers; block re-encoding is exact only for full and sliding-window "
                "attention layers (chunked or linear attention cannot hold concatenated block caches)."
            )
        if len(layer_types) != n_layers:
            raise UnsupportedModelError(f"config.layer_types lists {len(layer_types)} layers but the model has "
                                        f"{n_layers}; fix the config.")
        if "sliding_attention" in layer_types and not window:
            raise UnsupportedModelError("config.layer_types has sliding layers but config.sliding_window is unset; "
                                        "set sliding_window or make every layer full attention.")
        return [int(window) if t == "sliding_attention" else None for t in layer_types]
    if getattr(text_config, "attention_chunk_size", None):
        raise UnsupportedModelError("The model uses chunked attention (attention_chunk_size); block re-encoding "
                                    "is exact only for full and sliding-window attention.")
    if not window:
        return [None] * n_layers
    # Without layer types a config's sliding_window is used only if the model's mask construction reads it
    # (Mistral, Mixtral, Phi-3, Starcoder2 do; Llama ignores an extra `sliding_window` attribute).
    try:
        source = inspect.getsource(type(base_model(model)).forward)
    except (OSError, TypeError):
        source = ""
    applied = "create_sliding_window_causal_mask" in source and getattr(text_config, "use_sliding_window", True)
    return [int(window) if applied else None] * n_layers


def _rope_params(text_config: object, layer_type: str | None) -> dict:
    params = dict(getattr(text_config, "rope_parameters", None) or {})
    if layer_type is not None and isinstance(params.get(layer_type), dict):
        return dict(params[layer_type])
    return params


def _position_limit(rope_type: str, rotary: torch.nn.Module, params: dict, text_config: object,
                    ) -> tuple[int | None, str | None]:
    if rope_type == "dynamic":
        limit = int(getattr(rotary, "original_max_seq_len", text_config.max_position_embeddings))
        return limit, f"dynamic-NTK RoPE changes its frequencies beyond {limit} tokens"
    if rope_type == "longrope":
        limit = int(params.get("original_max_position_embeddings",
                               getattr(text_config, "original_max_position_embeddings", None)
                               or text_config.max_position_embeddings))
        return limit, f"LongRoPE switches to its long factors beyond {limit} tokens"
    return None, None


def inspect_model(model: torch.nn.Module) -> RotaryInfo:
    """Return the model's rotary geometry, or raise :class:`UnsupportedModelError` saying why it cannot be served."""
    config = getattr(model, "config", None)
    if config is None:
        raise UnsupportedModelError("The model has no `.config`; pass a transformers PreTrainedModel (AutoModelForCausalLM).")
    text_config = config.get_text_config(decoder=True)
    model_type = getattr(text_config, "model_type", "?")
    if getattr(text_config, "qk_rope_head_dim", None) or getattr(text_config, "kv_lora_rank", None):
        raise UnsupportedModelError(
            f"Model type {model_type!r} uses multi-head latent attention with decoupled rotary keys (only the "
            "trailing qk_rope_head_dim dims rotate, after a pair permutation, and values have another head size); "
            "block KV storage assumes keys and values of one head size. Use mode='full' for this model."
        )
    rotary = _rotary_module(model)
    if rotary is None:
        raise UnsupportedModelError(
            f"Block mode cannot serve model type {model_type!r}: {_no_rope_reason(model, text_config)}. "
            "Block attention needs RoPE; use mode='full' for this model."
        )
    n_layers = int(text_config.num_hidden_layers)
    windows = _layer_windows(model, text_config, n_layers)
    layer_types = list(getattr(text_config, "layer_types", None) or [None] * n_layers)
    per_type = hasattr(rotary, "layer_types") and not hasattr(rotary, "inv_freq")
    layers: list[LayerRotary] = []
    rope_types: set[str] = set()
    limit: int | None = None
    reason: str | None = None
    for i in range(n_layers):
        prefix = f"{layer_types[i]}_" if per_type else ""
        inv = getattr(rotary, f"{prefix}original_inv_freq", None)
        if inv is None:
            inv = getattr(rotary, f"{prefix}inv_freq", None)
        if inv is None:
            raise UnsupportedModelError(f"Model type {model_type!r}: its rotary module exposes no `inv_freq`; "
                                        "block re-encoding needs the model's RoPE frequencies.")
        kind = getattr(rotary, "rope_type", None)
        kind = kind.get(layer_types[i]) if isinstance(kind, dict) else kind
        params = _rope_params(text_config, layer_types[i] if per_type else None)
        kind = str(kind or params.get("rope_type", "default"))
        if kind not in STATIC_ROPE_TYPES | LIMITED_ROPE_TYPES:
            raise UnsupportedModelError(f"RoPE type {kind!r} is not supported; supported types: "
                                        f"{sorted(STATIC_ROPE_TYPES | LIMITED_ROPE_TYPES)}.")
        if kind in LIMITED_ROPE_TYPES and per_type:
            raise UnsupportedModelError(f"Position-dependent RoPE type {kind!r} per layer type is not verified; "
                                        "use a static RoPE type or mode='full'.")
        this_limit, this_reason = _position_limit(kind, rotary, params, text_config)
        if this_limit is not None and (limit is None or this_limit < limit):
            limit, reason = this_limit, this_reason
        rope_types.add(kind)
        scaling = getattr(rotary, f"{prefix}attention_scaling", 1.0)
        layers.append(LayerRotary(inv.detach().to("cpu", torch.float32).clone(), float(scaling), windows[i]))
    rotary_dim = layers[0].inv_freq.numel() * 2
    if any(layer.inv_freq.numel() * 2 != rotary_dim for layer in layers):
        raise UnsupportedModelError(f"Model type {model_type!r} rotates different numbers of dims per layer; "
                                    "block re-encoding assumes one rotary width.")
    head_dim, kv_heads, interleaved = _probe(model, layers, rotary_dim, model_type)
    return RotaryInfo(tuple(layers), "+".join(sorted(rope_types)), head_dim, rotary_dim, interleaved, limit, reason,
                      kv_heads)


@torch.inference_mode()
def _probe_cache(model: torch.nn.Module, ids: torch.Tensor, start: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    cache = new_cache()
    positions = torch.arange(start, start + ids.shape[1], device=ids.device)[None]  # [1, n]
    base = base_model(model)
    base(input_ids=ids, position_ids=positions, **cache_kwargs(base, cache), use_cache=True)
    return layer_tensors(cache)


def _probe(model: torch.nn.Module, layers: list[LayerRotary], rotary_dim: int,
           model_type: str) -> tuple[int, int, bool]:
    """Measure the rotation: keys cached at ``p..p+n-1`` must be those at ``0..n-1`` rotated by ``p``.

    Returns ``(head_dim, kv_heads, interleaved)`` (what the cache really holds: GPT-NeoX ignores a configured
    ``num_key_value_heads``); raises :class:`UnsupportedModelError` when no supported layout fits.
    """
    param = next(model.parameters())
    vocab = int(model.get_input_embeddings().num_embeddings)
    ids = ((torch.arange(PROBE_TOKENS) * 7919 + 17) % vocab)[None].to(param.device)  # [1, n] fixed probe tokens
    try:
        at_zero = _probe_cache(model, ids, 0)
        shifted = _probe_cache(model, ids, PROBE_SHIFT)
    except Exception as exc:  # noqa: BLE001 - any failure of a plain forward means we cannot serve the model
        raise UnsupportedModelError(f"Model type {model_type!r}: a cached forward with explicit position_ids "
                                    f"failed ({type(exc).__name__}: {exc}); use mode='full'.") from exc
    if len(at_zero) != len(layers) or any(k is None or v is None for k, v in at_zero):
        raise UnsupportedModelError(f"Model type {model_type!r} does not cache keys and values on each of its "
                                    f"{len(layers)} layers (KV sharing or non-attention layers); use mode='full'.")
    head_dim = int(at_zero[0][0].shape[-1])
    if any(k.shape != v.shape or k.shape[-1] != head_dim for k, v in at_zero):
        raise UnsupportedModelError(f"Model type {model_type!r} caches keys and values of different shapes; "
                                    "block KV storage needs one head size for both. Use mode='full'.")
    if rotary_dim > head_dim:
        raise UnsupportedModelError(f"Model type {model_type!r}: its rotary module has {rotary_dim} dims but heads "
                                    f"have {head_dim}; the rotary layout is not understood.")
    tol = PROBE_TOLERANCE.get(param.dtype, 5e-2)

    def error(interleaved: bool) -> float:  # the probe checks the very rotation assembly uses
        worst = 0.0
        for layer, (k0, v0), (kp, vp) in zip(layers, at_zero, shifted):
            moved = rotate_block_into(torch.empty_like(k0), k0, PROBE_SHIFT, layer.inv_freq.to(param.device),
                                      interleaved)  # [1, H, n, D]
            scale = max(float(kp.abs().max()), 1e-6)
            worst = max(worst, float((moved - kp).abs().max()) / scale,
                        float((v0 - vp).abs().max()) / max(float(vp.abs().max()), 1e-6))
        return worst

    errors = {False: error(False), True: error(True)}
    for interleaved in (False, True):
        if errors[interleaved] <= tol:
            return head_dim, int(at_zero[0][0].shape[1]), interleaved
    raise UnsupportedModelError(
        f"Model type {model_type!r}: keys cached at shifted positions are not the model's RoPE rotation of the "
        f"keys at 0..n-1 on the leading {rotary_dim} of {head_dim} dims (relative error {min(errors.values()):.2g} "
        f"rotate-half or interleaved, tolerance {tol:g}), so cached blocks cannot be moved exactly. Use mode='full'."
    )


def rotate_block_into(dest: torch.Tensor, src: torch.Tensor, delta: int, inv_freq: torch.Tensor,
                      interleaved: bool = False) -> torch.Tensor:
    """Write ``src [..., n, D]`` keys rotated by ``delta`` positions into ``dest`` (same shape; may be ``src``).

    Every token of a block moves by the same ``delta``, so one ``cos/sin`` pair per frequency serves the whole
    block: ``[x1, x2] -> [x1 cos - x2 sin, x2 cos + x1 sin]`` over the rotated pairs (rotate-half halves or
    interleaved even/odd dims), in float32 with one cast back. ``src`` is cast to float32 once (same-dtype
    elementwise math is the fast path on CPU); temporaries are at most two float32 copies of one block. Dims past
    the rotary width move unchanged. The capability probe measures this function against the model's own caches.
    """
    width = inv_freq.numel() * 2
    freqs = torch.tensor([float(delta)], dtype=torch.float32, device=src.device) \
        * inv_freq.to(src.device, torch.float32)  # [R/2]
    cos, sin = freqs.cos(), freqs.sin()  # [R/2] each
    x = src.to(torch.float32)  # [..., n, D] (src itself when already float32: only read)
    out = torch.empty_like(x)  # [..., n, D] float32
    if interleaved:
        x1, x2, o1, o2 = x[..., 0:width:2], x[..., 1:width:2], out[..., 0:width:2], out[..., 1:width:2]
    else:
        half = width // 2
        x1, x2, o1, o2 = x[..., :half], x[..., half:width], out[..., :half], out[..., half:width]
    torch.mul(x1, cos, out=o1).addcmul_(x2, sin, value=-1)  # [..., n, R/2]
    torch.mul(x2, cos, out=o2).addcmul_(x1, sin)  # [..., n, R/2]
    if width < x.shape[-1]:
        out[..., width:] = x[..., width:]  # partial rotary: the rest of each head is not rotated
    dest.copy_(out)
    return dest
