"""The library's modules import each other without a cycle (read with ``ast``: no module is imported here).

Every ``import`` statement counts, at module level or inside a function (a lazy import inside a function is how
the engine <-> models cycle of issue #25 hid), except those under ``if TYPE_CHECKING:`` (never executed). Package
``__init__`` files are not nodes: ``from pkg import name`` is followed to the submodule that the package's
``__init__`` re-exports ``name`` from (a ``from .x import name`` line or a ``{"name": "x"}`` lazy-export table).
The deprecation shims at the old import paths (:data:`block_attention._moved.MOVED`) are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import block_attention
from block_attention._moved import MOVED

ROOT = Path(block_attention.__file__).resolve().parent
PACKAGE = "block_attention"


def _modules(root: Path) -> dict[str, Path]:
    """Dotted name -> file of every module under ``root`` (a package's name maps to its ``__init__.py``)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement of ``tree`` (any depth) outside ``if TYPE_CHECKING:`` blocks."""
    out: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


class Graph:
    def __init__(self, root: Path) -> None:
        self.files = _modules(root)
        self.trees = {name: ast.parse(path.read_text(encoding="utf-8")) for name, path in self.files.items()}
        self.packages = {n for n, p in self.files.items() if p.name == "__init__.py"}
        self.shims = set(MOVED)

    def _reexport(self, package: str, name: str, seen: frozenset[str] = frozenset()) -> str | None:
        """The module that package ``package``'s ``__init__`` takes ``name`` from (None: defined there or unknown)."""
        if (package, name) in seen:
            return None
        seen = seen | {(package, name)}  # type: ignore[operator]
        tree = self.trees[package]
        for node in _imports(tree):
            if isinstance(node, ast.ImportFrom) and any((a.asname or a.name) == name for a in node.names):
                return self._resolve(_absolute(package, True, node), name, seen)
        for node in ast.walk(tree):  # a lazy-export table {"name": "submodule", ...}
            if isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values):
                    if isinstance(key, ast.Constant) and key.value == name and isinstance(value, ast.Constant) \
                            and isinstance(value.value, str):
                        target = value.value
                        target = f"{package}{target}" if target.startswith(".") else \
                            target if target.startswith(PACKAGE + ".") else f"{package}.{target}"
                        return self._resolve(target, None, seen)
        return None

    def _resolve(self, module: str, name: str | None, seen: frozenset = frozenset()) -> str | None:
        """The module node that ``from module import name`` (or ``import module``) depends on."""
        if name is not None and f"{module}.{name}" in self.files:
            module, name = f"{module}.{name}", None
        if module not in self.files:
            return None  # outside the library
        if module in self.packages:
            return self._reexport(module, name, seen) if name is not None else None
        return module

    def edges(self) -> dict[str, set[str]]:
        graph: dict[str, set[str]] = {}
        for module, tree in self.trees.items():
            if module in self.packages or module in self.shims:
                continue
            targets: set[str] = set()
            for node in _imports(tree):
                if isinstance(node, ast.Import):
                    found = [self._resolve(a.name, None) for a in node.names]
                else:
                    source = _absolute(module, False, node)
                    found = [self._resolve(source, a.name) for a in node.names]
                targets.update(t for t in found if t is not None and t not in self.shims)
            graph[module] = targets
        return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle ``[a, b, ..., a]`` of ``graph``, or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_library_has_no_import_cycle() -> None:
    graph = Graph(ROOT).edges()
    assert len(graph) > 50 and graph["block_attention.models"], "the import graph was not built"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_a_lazy_import_inside_a_function_closes_a_cycle(tmp_path: Path) -> None:
    pkg = tmp_path / PACKAGE
    (pkg / "engine").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "engine" / "__init__.py").write_text('_EXPORTS = {"Engine": "engine"}\n')
    (pkg / "engine" / "engine.py").write_text("def load():\n    from block_attention.models import f\n")
    (pkg / "models.py").write_text("from typing import TYPE_CHECKING\nfrom .engine import Engine\n"
                                   "if TYPE_CHECKING:\n    from . import other\n")
    (pkg / "other.py").write_text("from block_attention import models\n")
    graph = Graph(pkg).edges()
    assert graph["block_attention.other"] == {"block_attention.models"}
    assert find_cycle(graph) == ["block_attention.engine.engine", "block_attention.models",
                                 "block_attention.engine.engine"]
    (pkg / "engine" / "engine.py").write_text("def load():\n    from block_attention.hf import f\n")
    assert find_cycle(Graph(pkg).edges()) is None
