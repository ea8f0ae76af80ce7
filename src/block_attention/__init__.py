"""Block-Attention for RAG: cache each passage's KV once, reuse it in any order, prefill only the question.

Importing the package does no work; names are loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Block": "core.blocks",
    "BlockAttentionEngine": "engine.engine", "Generation": "engine.stages", "RequestStats": "engine.stages",
    "PrefillOutput": "engine.stages", "RequestPlan": "engine.stages", "TextStream": "engine.stages",
    "EngineConfig": "core.config", "GenerationConfig": "core.config",
    "PromptConfig": "core.prompt", "PromptBuilder": "core.prompt",
    "KVStore": "store", "StoreConfig": "store", "KVTier": "store",
    "BlockAttentionError": "core.errors", "UnsupportedModelError": "core.errors", "ContextTooLongError": "core.errors",
    "InvalidRequestError": "core.errors", "ConfigError": "core.errors", "StoreError": "core.errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'block_attention' has no attribute {name!r}")
