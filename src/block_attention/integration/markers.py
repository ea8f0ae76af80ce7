"""Deprecated alias of :mod:`block_attention.frameworks.markers` (removed in the next release)."""

from block_attention._moved import alias

alias(__name__)
