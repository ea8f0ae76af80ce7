"""Decoding settings and chat roles from framework knobs, the same way for every integration and the server.

* :func:`sampling_from`: ``temperature`` ``None`` or ``0`` means greedy decoding (``top_p``/``top_k`` ignored);
  ``> 0`` means seeded sampling with ``top_p`` (default 1) and ``top_k`` (default 0, off). ``max_new_tokens`` is
  the number of new tokens; ``stop`` a string or strings (the output is cut before the first one).
* :func:`engine_role`: a framework role name (``human``/``user``, ``ai``/``assistant``/``chatbot``/``model``,
  ``system``/``developer``) as the engine's ``user``/``assistant``/``system``; ``None`` for anything else (tool or
  function messages, which the engine does not support).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from block_attention.core.errors import ConfigError

if TYPE_CHECKING:
    from block_attention.core.config import GenerationConfig

ROLE_NAMES = {"human": "user", "user": "user", "ai": "assistant", "assistant": "assistant", "chatbot": "assistant",
              "model": "assistant", "system": "system", "developer": "system"}


def sampling_from(*, max_new_tokens: int, temperature: float | None = None, top_p: float | None = None,
                  top_k: int | None = None, seed: int | None = None,
                  stop: str | Sequence[str] | None = None) -> GenerationConfig:
    """The engine's :class:`GenerationConfig` for framework-style decoding knobs (see the module docstring)."""
    from block_attention.core.config import GenerationConfig

    if temperature is not None and temperature < 0:
        raise ConfigError(f"temperature must be >= 0 (0 or None: greedy decoding), got {temperature}.")
    sample = temperature is not None and temperature > 0
    return GenerationConfig(
        max_new_tokens=int(max_new_tokens), do_sample=sample,
        temperature=float(temperature) if sample else 1.0,
        top_p=float(top_p) if sample and top_p is not None else 1.0,
        top_k=int(top_k) if sample and top_k else 0,
        seed=seed, stop=(stop,) if isinstance(stop, str) else tuple(stop or ()),
    )


def engine_role(name: object) -> str | None:
    """The engine role of a framework role name (enum values are read through ``.value``)."""
    value = getattr(name, "value", name)
    return ROLE_NAMES.get(str(value).lower()) if value is not None else None


__all__ = ["ROLE_NAMES", "engine_role", "sampling_from"]
