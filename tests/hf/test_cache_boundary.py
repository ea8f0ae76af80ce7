"""Only block_attention/hf/cache.py touches transformers' cache internals (issue #25).

A cache's layer list, its layers' ``keys``/``values``, its layer classes and its ``ddp_cache_data`` constructor
argument changed between transformers releases; everything else must go through :mod:`block_attention.hf.cache`.
The patterns are read as words: ``per_layer.keys()`` (a dict) is not ``layer.keys``, and ``self.layers[i]`` of
:class:`~block_attention.hf.rope.RotaryInfo` (a tuple of rotary facts) is not a cache's layer list.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

import block_attention
from block_attention.hf import cache as hf_cache

ROOT = Path(block_attention.__file__).resolve().parent
ALLOWED = ROOT / "hf" / "cache.py"
PATTERNS = {
    ".layers[": r"(?<!self)\.layers\[",
    "ddp_cache_data": r"\bddp_cache_data\b",
    "DynamicLayer": r"\bDynamicLayer\b",
    "layer.keys": r"\blayer\.keys\b",
    "layer.values": r"\blayer\.values\b",
    "cache.layers": r"\bcache\.layers\b",
}


def offenders(root: Path) -> list[str]:
    """``path:line: pattern`` for every use of a cache internal outside hf/cache.py under ``root``."""
    found = []
    for path in sorted(root.rglob("*.py")):
        if path.resolve() == ALLOWED:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for name, pattern in PATTERNS.items():
                if re.search(pattern, line):
                    found.append(f"{path.relative_to(root.parent)}:{number}: {name}")
    return found


def test_no_module_but_hf_cache_touches_cache_internals() -> None:
    bad = offenders(ROOT)
    assert not bad, "cache internals outside block_attention/hf/cache.py:\n" + "\n".join(bad)


def test_the_check_finds_each_pattern(tmp_path: Path) -> None:
    pkg = tmp_path / "block_attention"
    pkg.mkdir()
    (pkg / "bad.py").write_text("x = cache.layers[0].keys\nfor layer in c: y = layer.values\n"
                                "from transformers.cache_utils import DynamicLayer\nDynamicCache(ddp_cache_data=d)\n"
                                "ok = per_layer.keys(); ok = self.layers[0]\n")
    assert [b.split(": ")[1] for b in offenders(pkg)] == [".layers[", "cache.layers", "layer.values",
                                                          "DynamicLayer", "ddp_cache_data"]


def test_cache_functions_are_views_or_copies_as_documented() -> None:
    keys = torch.arange(3 * 5 * 4, dtype=torch.float32).reshape(1, 3, 5, 4)  # [1, H_kv, T, D]
    pairs = [(keys, -keys), (keys + 1, -keys - 1)]
    copied = hf_cache.cache_from(pairs)
    own = hf_cache.layer_tensors(copied)
    assert all(torch.equal(k, a) and torch.equal(v, b) and k.data_ptr() != a.data_ptr()
               for (k, v), (a, b) in zip(own, pairs))
    stacked_k, stacked_v = hf_cache.stack_layers(copied, 1, 4)  # [L, 1, H_kv, 3, D]
    assert stacked_k.shape == (2, 1, 3, 3, 4) and torch.equal(stacked_k[1], keys[:, :, 1:4] + 1)
    assert torch.equal(stacked_v[0], -keys[:, :, 1:4])
    view_k, _ = hf_cache.layer_views(copied, 2)[0]
    view_k.zero_()  # a view: writes the cache
    assert not own[0][0][:, :, 2:].any() and own[0][0][:, :, :2].any()
    assert hf_cache.cache_device(copied) == keys.device and hf_cache.is_plain_cache(copied)
    assert not hf_cache.is_plain_cache(hf_cache.new_cache()) and not hf_cache.is_plain_cache(object())
    adopted = hf_cache.cache_over([(keys, -keys, None)])
    assert hf_cache.layer_tensors(adopted)[0][0] is keys
    hf_cache.empty_cache(adopted)
    assert adopted.get_seq_length() == 0
