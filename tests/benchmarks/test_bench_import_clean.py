"""Importing the benchmarks changes nothing (environment, sys.path); their main() sets the offline defaults, and the
CPU is read in one place (bench_common)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODULES = ("bench_common", "ttft", "server", "concurrency", "workload", "peers", "peer_servers", "dtype", "recovery",
           "vllm_connector", "fingerprint_cost")

PROBE = f"""
import json, os, sys
env, path = dict(os.environ), list(sys.path)
import importlib
for name in {MODULES!r}:
    importlib.import_module(name)
changed = sorted(k for k in set(env) | set(os.environ) if env.get(k) != os.environ.get(k))
import bench_common
bench_common.setup()
print(json.dumps({{"changed": changed, "added_paths": [p for p in sys.path if p not in path],
                  "after_setup": [os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE")]}}))
"""


def test_importing_the_benchmarks_changes_nothing() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO / "benchmarks", env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got == {"changed": [], "added_paths": [], "after_setup": ["1", "1"]}, got


def test_one_cpuinfo_reader() -> None:
    readers = [p.name for p in sorted((REPO / "benchmarks").glob("*.py")) if "/proc/cpuinfo" in p.read_text()]
    assert readers == ["bench_common.py"]
