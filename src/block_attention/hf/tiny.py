"""Offline tiny models and tokenizer: the built-in ``tiny-random`` model, tests, examples and benchmarks.

Nothing here downloads anything. :func:`tiny_tokenizer` trains a small byte-level BPE tokenizer (exact text
round trip, a ChatML chat template, BOS/EOS/pad) from built-in text; :func:`tiny_model` builds a randomly
initialised causal LM of a given family from its config (:func:`tiny_config`) with a fixed seed. Random weights
produce fluent-looking nonsense: they exercise every code path exactly, not answer quality. The registry of
architectures the oracle tests prove exact lives in :mod:`block_attention.testing` (test-only).
"""

from __future__ import annotations

import functools
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
