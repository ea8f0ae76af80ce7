"""``core.lazy.lazy_exports``: the one lazy re-export mechanism of the package ``__init__`` files.

A synthetic package proves the contract (nothing imported until first use, attribute looked up anew, Python's own
AttributeError sentence, ``__dir__``/``__all__``); real subprocesses prove that importing each re-exporting package
of the library imports none of its lazy submodules and that every exported name resolves to its submodule's object.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import block_attention
from block_attention.core.lazy import lazy_exports

PACKAGE = Path(block_attention.__file__).parent
# The public names each lazily re-exporting package had before the helper replaced its hand-written table.
PUBLIC = {
    "block_attention": [
        "Block", "BlockAttentionEngine", "BlockAttentionError", "ConfigError", "ContextTooLongError", "EngineConfig",
        "Generation", "GenerationConfig", "InvalidRequestError", "KVStore", "KVTier", "PrefillOutput", "PromptBuilder",
        "PromptConfig", "RequestPlan", "RequestStats", "StoreConfig", "StoreError", "TextStream",
        "UnsupportedModelError"],
    "block_attention.engine": [
        "Assembled", "BlockAttentionEngine", "BlockKVs", "Generation", "Lookup", "PrefillOutput", "Prefilled",
        "RequestPlan", "RequestStats", "TextStream", "WarmReport"],
    "block_attention.serving": [
        "BatchScheduler", "RequestRejected", "ServerSettings", "ServerThread", "create_app", "run_server"],
    "block_attention.frameworks": [
        "BLOCK_SEPARATOR", "ChatParts", "ChatShapeError", "DocumentRef", "DuplicateKeyPolicy", "FLAT_CONTEXT_HINT",
        "LazyEngine", "ROLE_NAMES", "SplitPrompt", "documents_to_blocks", "engine_role", "format_blocks",
        "iterate_in_thread", "looks_like_flat_context", "mark_block", "sampling_from", "split_chat",
        "split_prompt", "stats_metadata"],
}


@pytest.fixture()
def fake_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    root = tmp_path / "lazyfake"
    (root / "deep").mkdir(parents=True)
    (root / "__init__.py").write_text(textwrap.dedent("""
        from block_attention.core.lazy import lazy_exports

        OWN = 1
        __getattr__, __dir__, __all__ = lazy_exports(__name__, {"Thing": "things", "Deep": "deep.inner"})
    """))
    (root / "things.py").write_text("Thing = object()\n")
    (root / "deep" / "__init__.py").write_text("")
    (root / "deep" / "inner.py").write_text("Deep = 'deep'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "lazyfake"
    for name in [m for m in sys.modules if m == "lazyfake" or m.startswith("lazyfake.")]:
        del sys.modules[name]


def test_nothing_is_imported_until_first_use(fake_package: str) -> None:
    import importlib

    pkg = importlib.import_module(fake_package)
    assert "lazyfake.things" not in sys.modules and "lazyfake.deep.inner" not in sys.modules
    assert pkg.Thing is sys.modules["lazyfake.things"].Thing
    assert "lazyfake.deep.inner" not in sys.modules  # one name imports its own submodule only
    assert pkg.Deep == "deep"


def test_each_access_looks_the_name_up_anew(fake_package: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    pkg = importlib.import_module(fake_package)
    things = importlib.import_module("lazyfake.things")
    replacement = object()
    monkeypatch.setattr(things, "Thing", replacement)
    assert pkg.Thing is replacement


def test_unknown_names_raise_pythons_attribute_error(fake_package: str) -> None:
    import importlib

    pkg = importlib.import_module(fake_package)
    with pytest.raises(AttributeError) as caught:
        pkg.Missing  # noqa: B018
    assert str(caught.value) == "module 'lazyfake' has no attribute 'Missing'"
    assert not hasattr(pkg, "Missing")
    with pytest.raises(ImportError, match="cannot import name 'Missing'"):
        exec("from lazyfake import Missing", {})


def test_dir_and_all(fake_package: str) -> None:
    import importlib

    pkg = importlib.import_module(fake_package)
    assert pkg.__all__ == ["Deep", "Thing"]
    listed = dir(pkg)
    assert {"Deep", "Thing", "OWN", "__all__"} <= set(listed) and listed == sorted(listed)
    assert "lazyfake.things" not in sys.modules  # dir() imports nothing


@pytest.mark.parametrize("table", [{"Thing": ".things"}, {"Thing": ""}, {"not a name": "things"}])
def test_a_malformed_table_is_refused(table: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="relative to the package"):
        lazy_exports("lazyfake", table)


_PROBE = """
import importlib, json, sys
pkg = sys.argv[1]
before = set(sys.modules)
module = importlib.import_module(pkg)
loaded = sorted(m for m in set(sys.modules) - before)
names = list(module.__all__)
resolved = {}
for name in names:
    value = getattr(module, name)
    owners = [m for m in list(sys.modules) if m.startswith(pkg + ".") and getattr(sys.modules[m], name, None) is value]
    resolved[name] = bool(owners)
print(json.dumps({"loaded": loaded, "all": names, "resolved": resolved, "dir_ok": set(names) <= set(dir(module))}))
"""


@pytest.mark.parametrize("package", sorted(PUBLIC))
def test_real_packages_stay_lazy_and_keep_their_names(package: str) -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE, package], capture_output=True, text=True, check=True)
    report = json.loads(out.stdout)
    assert report["all"] == PUBLIC[package]
    assert report["dir_ok"]
    assert all(report["resolved"].values()), report["resolved"]
    heavy = [m for m in report["loaded"] if m.split(".")[0] in ("torch", "transformers", "fastapi", "faiss")]
    assert not heavy, f"importing {package} imported {heavy[:5]}"
    own = [m for m in report["loaded"] if m.startswith(package + ".")]
    assert own == ([] if package != "block_attention" else ["block_attention.core", "block_attention.core.lazy"])


def test_no_package_init_writes_its_own_lazy_getattr() -> None:
    """Every lazy re-export goes through ``lazy_exports`` (the deprecation shims forward through ``_moved``)."""
    offenders = []
    for init in PACKAGE.rglob("__init__.py"):
        tree = ast.parse(init.read_text())
        if any(isinstance(node, ast.FunctionDef) and node.name in ("__getattr__", "__dir__") for node in tree.body):
            offenders.append(str(init.relative_to(PACKAGE)))
    assert not offenders, f"hand-written lazy re-exports in {offenders}; use block_attention.core.lazy.lazy_exports"
