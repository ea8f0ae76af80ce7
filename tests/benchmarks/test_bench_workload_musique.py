"""The workload benchmark runs on real passages (MuSiQue, read from ../shared; never copied into the repo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MUSIQUE = REPO.parent / "shared" / "data" / "musique_s.json"


@pytest.mark.skipif(not MUSIQUE.is_file(), reason="../shared/data/musique_s.json is not beside this checkout")
def test_quick_workload_on_musique_passages():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "workload.py"), "--quick", "--musique",
                           str(MUSIQUE), "--requests", "6", "--k", "2"], cwd=REPO / "benchmarks", env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    w = result["workload"]
    assert w["requests"] == 6 and w["k"] == 2 and "MuSiQue" in w["data"]
    assert w["block"]["encoded_tokens"] > 0 and 0 <= w["block"]["doc_hit_rate"] <= 1
    assert w["block"]["mean_ttft_s"] > 0 and w["prefix"]["mean_ttft_s"] > 0
