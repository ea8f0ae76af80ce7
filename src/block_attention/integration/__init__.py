"""Deprecated: moved to :mod:`block_attention.frameworks` (this package of aliases is removed in the next release)."""

from block_attention._moved import package_getattr

__getattr__ = package_getattr(__name__)
