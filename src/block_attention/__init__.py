"""Block-Attention for RAG: cache each passage's KV once, reuse it in any order, prefill only the question.

Importing the package does no work; names are loaded on first use.
"""

from __future__ import annotations

from block_attention.core.lazy import lazy_exports

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
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
