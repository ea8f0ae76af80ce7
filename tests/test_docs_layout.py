"""The README's Layout section and docs/architecture.md name every folder of the package, and name no folder or
top-level module that does not exist (the layout stays true as the tree changes)."""

from __future__ import annotations

import re
from pathlib import Path

import block_attention

PACKAGE = Path(block_attention.__file__).parent
REPO = PACKAGE.parents[1]
DEPRECATED = {"server", "integration"}  # packages of 0.1 aliases (block_attention._moved)


def _folders() -> set[str]:
    return {p.name for p in PACKAGE.iterdir() if p.is_dir() and any(p.glob("*.py"))}


def _layout_block() -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Layout"):]
    start = section.index("```\nsrc/block_attention/")
    return section[start:section.index("\n```", start + 3)]


def test_the_readme_layout_lists_every_folder_and_only_real_ones() -> None:
    block = _layout_block().split("\nscripts/")[0]  # the package part of the tree
    named = set(re.findall(r"(?:^|\s)([a-z_]+)/(?=[,\s])", block, flags=re.M)) - {"src", "block_attention"}
    assert _folders() - DEPRECATED <= named, sorted(_folders() - DEPRECATED - named)
    assert {m for m in named if not (PACKAGE / m).is_dir()} == set()
    for module in re.findall(r"\b([a-z_]+\.py)\b", block):
        hits = list(PACKAGE.rglob(module))
        assert hits or module in _pending(), f"the README layout names {module}, which is not in the package"
    assert "docs/architecture.md" in (REPO / "README.md").read_text(encoding="utf-8")


def test_the_architecture_doc_gives_each_folder_a_purpose() -> None:
    doc = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    first_cells = re.findall(r"^\| ([^|]*`[a-z_]+/`[^|]*) \|", doc, flags=re.M)  # the folder table's first column
    rows = {name for cell in first_cells for name in re.findall(r"`([a-z_]+)/`", cell)}
    assert _folders() - DEPRECATED <= rows, sorted(_folders() - DEPRECATED - rows)
    for stage in ("plan", "lookup", "encode", "assemble", "prefill", "decode"):
        assert f"| {stage} |" in doc, stage


def _pending() -> set[str]:
    """Modules the #25 redesign adds on its sibling branches (hf/, store/, frameworks/); empty once merged."""
    return {"cache.py", "loading.py", "disk_index.py", "disk_files.py", "chat.py"} - {
        p.name for p in PACKAGE.rglob("*.py")}
