"""Error hierarchy of the library.

Every error a user can trigger derives from :class:`BlockAttentionError` and carries a full sentence that
names the fix. Cache problems are *not* errors: a broken or stale cache entry is dropped and recomputed.
"""

from __future__ import annotations


class BlockAttentionError(Exception):
    """Base class of every error raised on purpose by this library."""


class ConfigError(BlockAttentionError, ValueError):
    """A configuration value is invalid (raised when the frozen config is constructed)."""


class InvalidRequestError(BlockAttentionError, ValueError):
    """A request is malformed: empty block text, duplicate doc ids with different text, non-string input, ..."""


class UnsupportedModelError(BlockAttentionError):
    """The model cannot be served exactly by block attention (no RoPE, partial/interleaved rotary, sliding window...)."""


class ContextTooLongError(BlockAttentionError):
    """The assembled prompt (plus the tokens to generate) does not fit the model's context window."""


class StoreError(BlockAttentionError):
    """The KV store was configured in a way that cannot work (e.g. an unwritable disk directory)."""


class CorruptEntryError(Exception):
    """Internal: a stored KV entry failed validation. Never escapes the store; it triggers a recompute."""
