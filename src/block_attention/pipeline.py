"""Deprecated alias of :mod:`block_attention.retrieval.pipeline` (removed in the next release)."""

from block_attention._moved import alias

alias(__name__)
