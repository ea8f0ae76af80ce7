"""Importing the library changes nothing global: every module of ``block_attention`` is imported in a fresh
subprocess and the process's environment, ``sys.path``, import hooks, torch's thread counts, default dtype, RNG
state and grad mode, the warning filters and the root logger are exactly what they were before."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import block_attention
from block_attention._moved import MOVED

PACKAGE = Path(block_attention.__file__).parent
OPTIONAL_OUTSIDE = {"vllm"}  # vllm_connector.connector runs inside vLLM's own environment


def _modules() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if name in MOVED or parts[-1] == "__main__":  # shims warn by design; __main__ runs the program
            continue
        names.append(name)
    return names


_PROBE = """
import importlib, json, logging, os, sys, warnings
import torch, transformers  # what these two do at import is theirs, not the library's

def snapshot():
    root = logging.getLogger()
    return {"environ": sorted(os.environ.items()), "sys.path": list(sys.path),
            "meta_path": [repr(f) for f in sys.meta_path], "path_hooks": [repr(h) for h in sys.path_hooks],
            "threads": [torch.get_num_threads(), torch.get_num_interop_threads()],
            "default dtype": str(torch.get_default_dtype()), "rng": torch.random.get_rng_state().tolist(),
            "grad": torch.is_grad_enabled(), "warning filters": [repr(f) for f in warnings.filters],
            "root logger": [root.level, [repr(h) for h in root.handlers]], "recursion": sys.getrecursionlimit()}

before = snapshot()
imported, skipped = [], {}
for name in json.loads(sys.argv[1]):
    try:
        importlib.import_module(name)
        imported.append(name)
    except ModuleNotFoundError as exc:
        skipped[name] = exc.name
after = snapshot()
changed = {key: {"before": str(before[key])[:500], "after": str(after[key])[:500]}
           for key in before if before[key] != after[key]}
print(json.dumps({"imported": imported, "skipped": skipped, "changed": changed}))
"""


def test_importing_every_module_changes_no_global_state(tmp_path: Path) -> None:
    modules = _modules()
    assert len(modules) > 50 and "block_attention.engine.fused" in modules and "block_attention.cli" in modules
    out = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(modules)], capture_output=True, text=True,
                         cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["changed"] == {}, json.dumps(report["changed"], indent=1)
    assert {missing.partition(".")[0] for missing in report["skipped"].values()} <= OPTIONAL_OUTSIDE, report["skipped"]
    assert len(report["imported"]) + len(report["skipped"]) == len(modules)
