"""Loading a checkpoint with transformers: the one place the library calls transformers' loaders.

Contract: :func:`load_pretrained` returns ``(model, tokenizer)`` of a local folder or hub id, the model in eval
mode on ``device``. It is imported by the engine (``BlockAttentionEngine.from_pretrained``), by
:mod:`block_attention.models` (which re-exports it as the public path), by the adapter loader and by fine-tuning;
it imports nothing of the library but its errors, so none of those callers closes an import cycle. Importing
this module does no work (transformers is imported on the first call).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from block_attention.core.errors import ModelLoadError

__all__ = ["load_pretrained"]


def load_pretrained(name_or_path: str, *, dtype: Any = "auto", device: str | None = None,
                    model_kwargs: Mapping[str, Any] | None = None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of a local folder or hub id: the one place the library calls transformers' loaders.

    ``model_kwargs`` are extra keyword arguments of ``AutoModelForCausalLM.from_pretrained`` (e.g.
    ``attn_implementation``, ``revision``, ``trust_remote_code``, ``quantization_config``); nothing else.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = dict(model_kwargs or {})
    if "dtype" in kwargs or "device" in kwargs:
        raise ModelLoadError("Pass dtype= and device= as their own arguments, not inside model_kwargs (model_kwargs "
                             "are extra keyword arguments of AutoModelForCausalLM.from_pretrained).")
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype, **kwargs)
    if device:
        model = model.to(device)
    return model.eval(), tokenizer
