"""Offline tiny models and tokenizer for tests, examples, benchmarks and the no-weights demo.

Nothing here downloads anything. :func:`tiny_tokenizer` trains a small byte-level BPE tokenizer (exact text
round trip, a ChatML chat template, BOS/EOS/pad) from built-in text; :func:`tiny_model` builds a randomly
initialised causal LM of a given family from its config with a fixed seed. Random weights produce fluent-looking
nonsense: they exercise every code path exactly, not answer quality.
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


def tiny_config(family: str = "llama", vocab_size: int | None = None, **overrides: Any) -> Any:
    """Config of a ~100k-parameter model of ``family`` (one of :data:`FAMILIES`)."""
    import transformers

    tok = tiny_tokenizer()
    base: dict[str, Any] = dict(
        vocab_size=vocab_size or len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    classes = {
        "llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config, "qwen3": transformers.Qwen3Config,
        "mistral": transformers.MistralConfig, "phi3": transformers.Phi3Config,
    }
    if family not in classes:
        raise ValueError(f"Unknown tiny family {family!r}; choose one of {FAMILIES}.")
    if family in ("qwen3",):
        base["head_dim"] = 16
    base.update(overrides)
    return classes[family](**base)


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
