"""Errors raised by the retrieval subpackage.

Every class derives from :class:`block_attention.errors.BlockAttentionError` (through :class:`RetrievalError`)
and is raised with a full sentence that names the fix. Invalid configuration values raise the library-wide
:class:`block_attention.errors.ConfigError`; bad search arguments raise
:class:`block_attention.errors.InvalidRequestError`.
"""

from __future__ import annotations

from ..errors import BlockAttentionError


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


__all__ = [
    "CorpusFormatError",
    "CorpusNotFoundError",
    "EmbedderLoadError",
    "EmbedderMismatchError",
    "EmptyCorpusError",
    "IndexExistsError",
    "IndexFormatError",
    "IndexNotFoundError",
    "RetrievalError",
]
