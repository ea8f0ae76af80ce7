"""Deprecated alias of :mod:`block_attention.core.prompt` (removed in the next release)."""

from block_attention._moved import alias

alias(__name__)
