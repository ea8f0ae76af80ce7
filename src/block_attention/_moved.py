"""Old import paths of the 0.1 flat layout, kept for one release: each warns once and aliases its new module.

Contract: :data:`MOVED` maps every old module path to its new one. A shim module at the old path calls
:func:`alias`, which raises a :class:`DeprecationWarning` naming the new path and makes the old name the very same
module object as the new one (so ``isinstance`` checks, ``monkeypatch`` and module state agree). A moved package
(``block_attention.integration``, ``block_attention.server``) keeps its old folder of shims and answers attribute
access through :func:`package_getattr`. Nothing global changes: no import hooks, only the modules named here.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import Any

_FLAT = {
    **{m: f"core.{m}" for m in ("blocks", "checks", "config", "errors", "kv", "layout", "packaged", "prompt",
                                 "quality")},
    **{m: f"hf.{m}" for m in ("compat", "fingerprint", "rope")},
    **{m: f"engine.{m}" for m in ("assemble", "decoding", "encode", "fused", "generation", "recovery", "sink",
                                   "stages")},
    "batching": "serving.batching", "pipeline": "retrieval.pipeline", "oracle": "testing.oracle",
    "integration": "frameworks", **{f"integration.{m}": f"frameworks.{m}" for m in ("documents", "markers",
                                                                                    "options", "runtime")},
    "server": "serving", **{f"server.{m}": f"serving.{m}" for m in ("app", "metrics", "openai_format", "runner",
                                                                   "schema", "settings", "worker")},
}
MOVED: dict[str, str] = {f"block_attention.{old}": f"block_attention.{new}" for old, new in _FLAT.items()}


def _warn(old: str) -> str:
    new = MOVED[old]
    # The message starts with the old path: pyproject's filterwarnings turns exactly these into errors in tests.
    warnings.warn(f"{old} moved to {new}; import {new} instead (the old path is removed in the next release).",
                  DeprecationWarning, stacklevel=4)
    return new


def alias(old: str) -> ModuleType:
    """Warn, then make module ``old`` the new module itself (called by the shim module at the old path)."""
    module = importlib.import_module(_warn(old))
    sys.modules[old] = module
    return module


def package_getattr(old: str) -> Callable[[str], Any]:
    """``__getattr__`` of a moved package's shim: warns on import, then forwards names to the new package."""
    new = importlib.import_module(_warn(old))

    def __getattr__(name: str) -> Any:
        return getattr(new, name)

    return __getattr__
