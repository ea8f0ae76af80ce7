"""Test-only registries and helpers (not needed at run time): the architectures the oracle tests prove exact.

:data:`ARCHITECTURES` is the registry of tiny models the oracle tests prove exact (and the README table lists);
:data:`REFUSED` the models whose block mode must be refused; :data:`ROPE_VARIANTS` the RoPE scalings covered;
:data:`INVENTED_FACTS` a corpus no model can know. The tiny models themselves are built by
:mod:`block_attention.hf.tiny` (re-exported here for the tests). Submodules: :mod:`.plugin` (the pytest plugin),
:mod:`.redis_server` (a throwaway Redis), :mod:`.oracle` (the masked-forward reference), :mod:`.rope` (the
per-token RoPE oracle), :mod:`.kv` (KV helpers of the tests).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from block_attention.hf.tiny import (CHATML_TEMPLATE, DISCOVERED_MODEL_TYPES, FAMILIES, SPECIAL_TOKENS, WINDOW,
                                     tiny_config, tiny_model, tiny_tokenizer)

__all__ = ["ARCHITECTURES", "CHATML_TEMPLATE", "DISCOVERED_MODEL_TYPES", "FAMILIES", "INVENTED_FACTS", "REFUSED",
           "ROPE_VARIANTS", "SAMPLE_QUESTION", "SPECIAL_TOKENS", "WINDOW", "Architecture", "Refused",
           "architecture_model", "refused_model", "sample_blocks", "tiny_config", "tiny_model", "tiny_tokenizer"]


@dataclass(frozen=True)
class Architecture:
    """A tiny test model of one architecture: the family's config plus overrides, and what it exercises.

    ``discovered``: not named in the issue list but admitted by the capability check on a generic tiny config
    (``scripts/architectures_table.py --discover`` finds them); proven by the same oracle tests.
    """

    name: str
    family: str
    overrides: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    discovered: bool = False

    @property
    def model_type(self) -> str:
        return str(tiny_config(self.family, **self.overrides).model_type)

    def attn_implementations(self) -> tuple[str, ...]:
        """Implementations the oracle tests run: ``("sdpa", "eager")`` (``("eager",)`` where transformers offers no
        SDPA for the model class); discovered architectures run the first of these only."""
        import transformers
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        cls = getattr(transformers, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[self.model_type])
        offered = ("sdpa", "eager") if getattr(cls, "_supports_sdpa", False) else ("eager",)
        return offered[:1] if self.discovered else offered  # the long tail: one implementation keeps CI fast


def _arch(name: str, family: str, note: str = "", **overrides: Any) -> Architecture:
    return Architecture(name, family, overrides, note)


_SLIDING_3 = ["sliding_attention", "full_attention", "sliding_attention"]
# Every architecture the block path is proven exact on (tests/engine/test_architectures.py) and the README table lists.
ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in (
    _arch("Llama", "llama"),
    _arch("Llama (unused sliding_window)", "llama", "config carries `sliding_window`; Llama ignores it",
          sliding_window=WINDOW),
    _arch("Qwen2", "qwen2"),
    _arch("Qwen2 (hybrid layers)", "qwen2", "layer 0 full, layers 1-2 sliding", num_hidden_layers=3,
          use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1),
    _arch("Qwen2-MoE", "qwen2_moe"),
    _arch("Qwen3", "qwen3", "QK norm"),
    _arch("Qwen3-MoE", "qwen3_moe", "QK norm"),
    _arch("Mistral", "mistral", "sliding window on every layer", sliding_window=WINDOW, num_hidden_layers=3),
    _arch("Mixtral", "mixtral", "sliding window on every layer", sliding_window=WINDOW, num_hidden_layers=3),
    _arch("Phi-3", "phi3"),
    _arch("Phi-3 (partial rotary)", "phi3", "", partial_rotary_factor=0.5),
    _arch("Gemma2", "gemma2", "soft-capping, query scaling", num_hidden_layers=3, sliding_window=WINDOW,
          layer_types=_SLIDING_3),
    _arch("Gemma3 (text)", "gemma3_text", "QK norm, local/global RoPE bases", num_hidden_layers=3,
          sliding_window=WINDOW, layer_types=_SLIDING_3,
          rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                           "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}),
    _arch("OLMo2", "olmo2", "QK norm"),
    _arch("Granite", "granite", "multipliers"),
    _arch("GPT-NeoX", "gpt_neox", "parallel residual"),
    _arch("StableLM", "stablelm"),
    _arch("Cohere", "cohere", "parallel block, logit scale"),
)} | {t: Architecture(t, t, discovered=True) for t in DISCOVERED_MODEL_TYPES}


@dataclass(frozen=True)
class Refused:
    """A tiny causal LM whose block mode must be refused, and a word the refusal must contain."""

    name: str
    config_class: str
    config: dict[str, Any]
    reason_keyword: str
    why: str
    positions: str  # how the model encodes positions, for the README table


REFUSED: dict[str, Refused] = {r.name: r for r in (
    Refused("GPT-2", "GPT2Config", dict(n_layer=2, n_head=4, n_embd=64, n_positions=512),
            "absolute position", "learned absolute position embeddings", "learned absolute"),
    Refused("Bloom", "BloomConfig", dict(n_layer=2, n_head=4, hidden_size=64), "ALiBi", "ALiBi biases", "ALiBi"),
    Refused("MPT", "MptConfig", dict(n_layers=2, n_heads=4, d_model=64, max_seq_len=512), "ALiBi", "ALiBi biases",
            "ALiBi"),
    Refused("DeepSeek-V3 (MLA)", "DeepseekV3Config", dict(
        hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, kv_lora_rank=16, q_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=8,
        v_head_dim=16, n_routed_experts=4, num_experts_per_tok=2, first_k_dense_replace=1, n_group=1, topk_group=1,
        max_position_embeddings=4096), "latent attention",
        "multi-head latent attention: decoupled rotary keys, value head size differs", "decoupled RoPE (MLA)"),
)}


def refused_model(name: str, seed: int = 0) -> Any:
    """The tiny model of :data:`REFUSED` entry ``name`` (eval mode, float32)."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    tok = tiny_tokenizer()
    entry = REFUSED[name]
    config = getattr(transformers, entry.config_class)(
        vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, tie_word_embeddings=False, **entry.config)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32).eval()


def architecture_model(name: str, seed: int = 0, attn_implementation: str = "sdpa") -> Any:
    """The tiny model of :data:`ARCHITECTURES` entry ``name``."""
    arch = ARCHITECTURES[name]
    return tiny_model(arch.family, seed=seed, attn_implementation=attn_implementation, **arch.overrides)


# RoPE scaling variants the oracle tests cover: name -> (family, config overrides of tiny_config)
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


# An invented corpus (file name -> Markdown) whose facts no model can know: retrieval and pipeline tests.
INVENTED_FACTS = {
    "zarnok.md": "# Zarnok\nThe Zarnok bridge in Velmora is 812 metres long and was opened in 1931.",
    "quillan.md": "# Quillan\nQuillan pears ripen in late October and are grown on the slopes of Mount Ostrel.",
    "teodra.md": "# Teodra\nThe composer Teodra Vask wrote eleven symphonies, the last in a lighthouse at Cape Fenn.",
    "mirrow.md": "# Mirrow\nMirrow station is the coldest weather station of the Hallet archipelago, at minus 61 degrees.",
    "pellin.md": "# Pellin\nThe Pellin ferry crosses the Dusk strait four times a day with up to 90 cars.",
}

SAMPLE_QUESTION = "Where did the lighthouse stand?"


def sample_blocks() -> list[Any]:
    """Five short passages with doc ids (store fault and concurrency tests)."""
    from block_attention.core.blocks import Block

    return [
        Block("The lighthouse of Alexandria stood on the island of Pharos for sixteen centuries.", "pharos"),
        Block("Block attention caches each retrieved passage separately and reuses it in any order.", "blocks"),
        Block("The quick brown fox jumps over the lazy dog; it did so in 1999 and again in 2004.", "fox"),
        Block("Users ask questions about documents, and the model answers with facts from the passage.", "users"),
        Block("Rock lighthouses were built on reefs far from shore, lit by oil lamps and later by electricity.", "rock"),
    ]
