"""Old import paths of the flat 0.1 layout keep working for one release, each with a DeprecationWarning naming its
new path, and resolve to the very same module object; the test session turns that warning into an error anywhere
else (the plugin's filter), so the library, the integrations and the tests never use an old path themselves."""

from __future__ import annotations

import importlib
import sys
import warnings
from pathlib import Path

import pytest

import block_attention
from block_attention._moved import MOVED

PACKAGE = Path(block_attention.__file__).parent


def _forget(name: str) -> None:
    sys.modules.pop(name, None)
    parent, _, leaf = name.rpartition(".")
    if parent in sys.modules and leaf in vars(sys.modules[parent]):
        delattr(sys.modules[parent], leaf)


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_path_warns_and_is_the_new_module(old: str) -> None:
    _forget(old)
    with pytest.warns(DeprecationWarning) as caught:  # a shim's parent package may warn as well
        module = importlib.import_module(old)
    assert f"{old} moved to {MOVED[old]}; import {MOVED[old]} instead" in [str(w.message).split(" (")[0] for w in caught]
    new = importlib.import_module(MOVED[old])
    if old in ("block_attention.integration", "block_attention.server"):  # a package of aliases: names forward
        public = [n for n in getattr(new, "__all__", ()) if not n.startswith("_")]
        assert public and all(getattr(module, n) is getattr(new, n) for n in public)
    else:
        assert module is new
    _forget(old)


def test_from_import_of_an_old_path_gives_the_new_objects() -> None:
    _forget("block_attention.compat")
    with pytest.warns(DeprecationWarning, match="block_attention.hf.compat"):
        from block_attention.compat import cache_over  # noqa: F401  (the old spelling a user may have)
    from block_attention.hf import compat

    assert cache_over is compat.cache_over
    _forget("block_attention.compat")


def test_every_shim_file_is_listed_and_every_listed_path_has_a_shim() -> None:
    shims = set()
    for path in PACKAGE.rglob("*.py"):
        if "alias(__name__)" in path.read_text() or "package_getattr(__name__)" in path.read_text():
            rel = path.relative_to(PACKAGE.parent).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            shims.add(".".join(parts))
    assert shims == set(MOVED)


def test_the_session_turns_an_old_path_into_an_error() -> None:
    """The filter the plugin installs is active here: importing an old path outside pytest.warns fails."""
    _forget("block_attention.rope")
    with pytest.raises(DeprecationWarning, match="block_attention.rope moved to block_attention.hf.rope"):
        importlib.import_module("block_attention.rope")
    _forget("block_attention.rope")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert importlib.import_module("block_attention.rope") is importlib.import_module("block_attention.hf.rope")
    _forget("block_attention.rope")
