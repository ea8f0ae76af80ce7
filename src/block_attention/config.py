"""Deprecated alias of :mod:`block_attention.core.config` (removed in the next release)."""

from block_attention._moved import alias

alias(__name__)
