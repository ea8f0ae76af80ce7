"""Offline tiny models and tokenizer for tests, examples, benchmarks and the no-weights demo.

Nothing here downloads anything. :func:`tiny_tokenizer` trains a small byte-level BPE tokenizer (exact text
round trip, a ChatML chat template, BOS/EOS/pad) from built-in text; :func:`tiny_model` builds a randomly
initialised causal LM of a given family from its config with a fixed seed. Random weights produce fluent-looking
nonsense: they exercise every code path exactly, not answer quality. :data:`ARCHITECTURES` is the registry of
tiny models the oracle tests prove exact (and the README table lists); :data:`REFUSED` the models whose block mode
must be refused.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
FAMILIES = ("llama", "qwen2", "qwen3", "mistral", "phi3")

_TRAINING_TEXT = """
Block attention splits a retrieval augmented prompt into blocks. Each retrieved passage is encoded on its own,
its key and value states are cached by document, and only the final block with the question is prefilled.
The lighthouse at Alexandria stood on the island of Pharos. Question: Answer: Title: system user assistant
The quick brown fox jumps over the lazy dog. 0123456789 - , . ; : ! ? ( ) [ ] { } " ' / \\ @ # % & * + = < >
Users ask questions about documents, and the model answers with facts copied from the right passage.
"""


@functools.lru_cache(maxsize=4)
def tiny_tokenizer(vocab_size: int = 600) -> Any:
    """A deterministic byte-level BPE ``PreTrainedTokenizerFast`` with a ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_TRAINING_TEXT] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


# Config class per tiny family; each entry is a RoPE decoder (the non-RoPE ones are there to test refusals).
_CONFIG_CLASSES = {
    "llama": "LlamaConfig", "qwen2": "Qwen2Config", "qwen3": "Qwen3Config", "mistral": "MistralConfig",
    "phi3": "Phi3Config", "qwen2_moe": "Qwen2MoeConfig", "qwen3_moe": "Qwen3MoeConfig", "mixtral": "MixtralConfig",
    "gemma2": "Gemma2Config", "gemma3_text": "Gemma3TextConfig", "olmo2": "Olmo2Config", "granite": "GraniteConfig",
    "gpt_neox": "GPTNeoXConfig", "stablelm": "StableLmConfig", "cohere": "CohereConfig",
}
# Per-family settings that keep the model tiny (experts, head sizes) on top of the shared base.
_FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "qwen3": dict(head_dim=16),
    "qwen2_moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                      shared_expert_intermediate_size=32),
    "qwen3_moe": dict(head_dim=16, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32),
    "mixtral": dict(num_local_experts=4, num_experts_per_tok=2),
    "gemma2": dict(head_dim=16, query_pre_attn_scalar=16),
    "gemma3_text": dict(head_dim=16, query_pre_attn_scalar=16),
}
WINDOW = 16  # sliding window of the windowed test architectures: test prompts are several windows long
# Further RoPE decoders of transformers 5.24 that the capability check admits and the oracle tests prove exact,
# each built from a generic tiny config. Left out: multimodal wrappers (got_ocr2) and lfm2, whose generic tiny
# config has attention layers only while real LFM2 checkpoints mix in conv layers (which the check refuses).
DISCOVERED_MODEL_TYPES = (
    "afmoe", "apertus", "arcee", "aria_text", "bitnet", "cohere2", "cohere2_moe", "cwm", "diffllama", "doge",
    "ernie4_5", "ernie4_5_moe", "exaone", "exaone4", "exaone_moe", "flex_olmo", "fuyu", "gemma", "glm", "glm4",
    "glm4_moe", "gpt_neox_japanese", "gpt_oss", "granite_swa", "granitemoe", "granitemoe_swa", "granitemoeshared",
    "helium", "hrm_text", "hunyuan_v1_dense", "hunyuan_v1_moe", "hy_v3", "hyperclovax", "internlm3", "iquestcoder",
    "jais2", "jetmoe", "kolibri1", "laguna", "mellum", "minimax_m2", "minimax_m3_vl_text", "ministral",
    "ministral3", "modernbert-decoder", "nemotron", "olmo", "olmo3", "olmoe", "persimmon", "phi", "phimoe",
    "sarvam_moe", "seed_oss", "smollm3", "solar_open", "starcoder2", "vaultgemma",
)
# A generic tiny config gets these on top of the shared base: small heads, a window the prompts exceed, and
# larger initial weights so that random attention mixes tokens enough for the oracle to tell block from full.
_GENERIC_DEFAULTS: dict[str, Any] = dict(head_dim=16, sliding_window=WINDOW, initializer_range=0.1)


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
# Every architecture the block path is proven exact on (tests/test_architectures.py) and the README table lists.
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


def tiny_config(family: str = "llama", vocab_size: int | None = None, **overrides: Any) -> Any:
    """Config of a ~100k-parameter model of ``family`` (a key of the config-class table, e.g. :data:`FAMILIES`)."""
    import transformers

    tok = tiny_tokenizer()
    base: dict[str, Any] = dict(
        vocab_size=vocab_size or len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    if family in _CONFIG_CLASSES:
        base.update(_FAMILY_DEFAULTS.get(family, {}))
        base.update(overrides)
        return getattr(transformers, _CONFIG_CLASSES[family])(**base)
    if family not in DISCOVERED_MODEL_TYPES:
        raise ValueError(f"Unknown tiny family {family!r}; choose one of "
                         f"{sorted(_CONFIG_CLASSES) + sorted(DISCOVERED_MODEL_TYPES)}.")
    base.update(_GENERIC_DEFAULTS)
    base.update(overrides)
    return transformers.AutoConfig.for_model(family, **base)


def architecture_model(name: str, seed: int = 0, attn_implementation: str = "sdpa") -> Any:
    """The tiny model of :data:`ARCHITECTURES` entry ``name``."""
    arch = ARCHITECTURES[name]
    return tiny_model(arch.family, seed=seed, attn_implementation=attn_implementation, **arch.overrides)


def tiny_model(family: str = "llama", seed: int = 0, attn_implementation: str = "sdpa", dtype: Any = None,
               **overrides: Any) -> Any:
    """A randomly initialised causal LM of ``family`` built offline from :func:`tiny_config` (eval mode)."""
    import torch
    from transformers import AutoModelForCausalLM

    config = tiny_config(family, **overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation,
                                             dtype=dtype or torch.float32)
    return model.eval()


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
    from block_attention.blocks import Block

    return [
        Block("The lighthouse of Alexandria stood on the island of Pharos for sixteen centuries.", "pharos"),
        Block("Block attention caches each retrieved passage separately and reuses it in any order.", "blocks"),
        Block("The quick brown fox jumps over the lazy dog; it did so in 1999 and again in 2004.", "fox"),
        Block("Users ask questions about documents, and the model answers with facts from the passage.", "users"),
        Block("Rock lighthouses were built on reefs far from shore, lit by oil lamps and later by electricity.", "rock"),
    ]
