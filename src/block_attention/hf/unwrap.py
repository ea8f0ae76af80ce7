"""Reaching the transformers model inside a wrapper: the one PEFT unwrap of the library.

Contract: :func:`unwrap_peft` returns the transformers model a PEFT wrapper holds (adapter layers are injected in
place, so the inner model runs with the adapters) and any other model unchanged; :func:`base_model` returns the
decoder stack of that model (its ``base_model_prefix`` attribute: the layers without the LM head), which is what
block encoding, recovery and the rotary probe run. Nothing else in the library calls ``get_base_model``.
"""

from __future__ import annotations

import torch

__all__ = ["base_model", "unwrap_peft"]


def unwrap_peft(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a PEFT wrapper (which forwards ``**kwargs`` to it), else ``model``."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The decoder stack of ``model`` (PEFT-unwrapped): ``model.<base_model_prefix>``, or the model itself when it
    has no such attribute."""
    model = unwrap_peft(model)
    prefix = getattr(model, "base_model_prefix", "model")
    return getattr(model, prefix, model)
