"""Lazy re-exports of a package: a public name is imported from its submodule on first use, never at import.

Contract: ``__getattr__, __dir__, __all__ = lazy_exports(__name__, {"Name": "submodule", ...})`` in a package's
``__init__.py``. ``package.Name`` imports ``package.submodule`` (a path relative to the package, dots allowed) and
returns its attribute ``Name``, looked up anew on every access (no copy is kept, so a patched submodule is seen).
An unknown name raises :class:`AttributeError` exactly as Python's own lookup does. ``__dir__`` lists the
package's own globals and the lazy names; ``__all__`` is the sorted lazy names. Nothing is imported when
:func:`lazy_exports` is called.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(module_name: str, exports: Mapping[str, str]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """``(__getattr__, __dir__, __all__)`` for package ``module_name`` re-exporting ``{name: submodule}``."""
    table = dict(exports)
    for name, sub in table.items():
        if not name.isidentifier() or not sub or sub.startswith("."):
            raise ValueError(f"lazy export {name!r} -> {sub!r} of {module_name} is malformed; give a public name and "
                             "a submodule path relative to the package (e.g. 'engine' or 'core.blocks').")

    def __getattr__(name: str) -> Any:
        sub = table.get(name)
        if sub is None:
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f".{sub}", module_name), name)

    def __dir__() -> list[str]:
        module = sys.modules.get(module_name)
        own = vars(module) if module is not None else {}
        return sorted({*own, *table})

    return __getattr__, __dir__, sorted(table)
