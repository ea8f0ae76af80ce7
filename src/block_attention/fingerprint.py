"""Model fingerprint: everything besides a block's tokens that determines its KV.

Covers the model identity (name, revision), its config, a cheap strided digest of the weights (so a fine-tune or
a different random init never shares entries), the parameter dtype, the tokenizer (class, vocab digest, special
tokens), the rotary parameters and the doc-block template/marker. Two engines share cache entries only if all agree.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

from .prompt import PromptConfig
from .rope import RotaryInfo
from .store.keys import fingerprint

_SAMPLES_PER_TENSOR = 256


def weights_digest(model: torch.nn.Module) -> str:
    """Digest of every parameter's name, shape, dtype and a strided sample of its values (reads ~KBs, not GBs)."""
    h = hashlib.blake2b(digest_size=16)
    for name, p in sorted(model.state_dict().items()):
        flat = p.detach().reshape(-1)
        step = max(1, flat.numel() // _SAMPLES_PER_TENSOR)
        sample = flat[::step][:_SAMPLES_PER_TENSOR].to("cpu", torch.float32)
        h.update(f"{name}:{tuple(p.shape)}:{p.dtype};".encode())
        h.update(sample.numpy().tobytes())
    return h.hexdigest()


def tokenizer_digest(tokenizer: Any) -> dict[str, Any]:
    vocab = tokenizer.get_vocab()
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps(sorted(vocab.items())).encode())
    return {
        "class": type(tokenizer).__name__,
        "vocab": h.hexdigest(),
        "special": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
    }


def model_fingerprint(model: torch.nn.Module, tokenizer: Any, rotary: RotaryInfo | None,
                      prompt: PromptConfig) -> tuple[str, dict[str, Any]]:
    config = model.config
    config_json = config.to_json_string(use_diff=False)
    parts = {
        "name": getattr(config, "_name_or_path", ""),
        "revision": getattr(config, "_commit_hash", None),
        "config": hashlib.blake2b(config_json.encode(), digest_size=16).hexdigest(),
        "weights": weights_digest(model),
        "dtype": str(next(model.parameters()).dtype),
        "tokenizer": tokenizer_digest(tokenizer),
        "rotary": rotary.describe() if rotary is not None else None,
        "prompt": prompt.describe(),
    }
    return fingerprint(parts), parts
