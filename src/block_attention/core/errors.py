"""Error hierarchy of the library: the one home of every error it raises on purpose.

Every error a user can trigger derives from :class:`BlockAttentionError` and carries a full sentence that
names the fix. Cache problems are *not* errors: a broken or stale cache entry is dropped and recomputed.
Invalid configuration values raise :class:`ConfigError`; malformed requests :class:`InvalidRequestError`;
retrieval problems a :class:`RetrievalError`; training data problems :class:`TrainingDataError`; a missing
optional dependency :class:`MissingExtraError` (naming the extra that installs it).
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


class SchedulerClosedError(BlockAttentionError):
    """A request reached a batch scheduler that is shut down (or was shut down while the request ran)."""


class RequestCancelledError(BlockAttentionError):
    """A request was cancelled (its client left) before it finished."""


class StoreError(BlockAttentionError):
    """The KV store was configured in a way that cannot work (e.g. an unwritable disk directory)."""


class ModelLoadError(BlockAttentionError):
    """The model could not be found or loaded."""


class MissingExtraError(BlockAttentionError, ImportError):
    """An optional dependency is not installed; the message names the ``pip install 'block-attention-rag[EXTRA]'``
    that installs it (:mod:`block_attention.core.extras`). ``extra`` and ``module`` say which."""

    def __init__(self, message: str, *, extra: str = "", module: str = "") -> None:
        super().__init__(message, name=module)
        self.extra = extra
        self.module = module


class TrainingDataError(BlockAttentionError, ValueError):
    """A training example or data file is malformed."""


class DataFormatError(BlockAttentionError, ValueError):
    """An evaluation data file is missing, unreadable or malformed."""


# -- retrieval --------------------------------------------------------------------------------------------------

class RetrievalError(BlockAttentionError):
    """Base class of every error raised on purpose by :mod:`block_attention.retrieval`."""


class CorpusNotFoundError(RetrievalError, FileNotFoundError):
    """The corpus path given to the loader does not exist."""


class EmptyCorpusError(RetrievalError, ValueError):
    """The corpus holds no document with text, so there is nothing to index."""


class CorpusFormatError(RetrievalError, ValueError):
    """A corpus file cannot be read: bad JSONL line, wrong field type, undecodable bytes, duplicate ids."""


class IndexNotFoundError(RetrievalError, FileNotFoundError):
    """No retrieval index exists at the given path."""


class IndexExistsError(RetrievalError, FileExistsError):
    """``Retriever.create`` was pointed at a folder that already holds an index."""


class IndexFormatError(RetrievalError, ValueError):
    """The index folder is damaged or was written by an incompatible version of the library."""


class EmbedderMismatchError(RetrievalError, ValueError):
    """The embedder differs from the one the index was built with (name or vector dimension)."""


class EmbedderLoadError(RetrievalError, RuntimeError):
    """The sentence-transformers model could not be loaded (missing files, offline without a local copy)."""


class CorruptEntryError(Exception):
    """Internal: a stored KV entry failed validation. Never escapes the store; it triggers a recompute."""
