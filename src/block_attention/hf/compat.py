"""Version differences of transformers that the library bridges, in one place.

transformers 5.2x renamed the forward argument ``past_key_values`` to ``cache`` (the old name warns on every call
and is removed in 5.40) and the output field likewise. :func:`cache_kwargs` names the cache the way the model's
``forward`` accepts it (inspected once per model class) and :func:`output_cache` reads it back from either field,
so the oldest supported release (5.0) and the newest both work without warnings. The cache's internals (its
layers and constructors) live in :mod:`.cache` alone; ``cache_over`` and ``empty_cache`` are re-exported here for
the old ``block_attention.compat`` import path.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch

from .cache import cache_over, empty_cache  # noqa: F401  (re-exported: the old block_attention.compat path)
from .unwrap import unwrap_peft


@functools.lru_cache(maxsize=None)
def _cache_argument(model_class: type) -> str:
    try:
        params = inspect.signature(model_class.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def cache_argument(model: torch.nn.Module) -> str:
    """``"cache"`` when ``model.forward`` takes that argument (newer transformers), else ``"past_key_values"``."""
    return _cache_argument(type(unwrap_peft(model)))


def cache_kwargs(model: torch.nn.Module, cache: Any) -> dict[str, Any]:
    """``{name: cache}`` for ``model(**cache_kwargs(model, cache), ...)``."""
    return {cache_argument(model): cache}


def output_cache(output: Any) -> Any:
    """The cache a forward call returned, from ``output.cache`` (newer) or ``output.past_key_values`` (older)."""
    keys = output.keys() if hasattr(output, "keys") else ()
    if "cache" in keys:
        return output["cache"]
    return output["past_key_values"] if "past_key_values" in keys else getattr(output, "past_key_values", None)
