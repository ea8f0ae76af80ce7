"""Smoke test of benchmarks/recovery.py --quick: it runs, prints a final JSON line with one row per k, writes its
results file and plot; at the largest k (= the longest block) block mode equals full mode (KL ~ 0).

Timings and the small-k KL values are not asserted (noisy / meaningless after 20 training steps).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_recovery_quick(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MPLBACKEND": "Agg",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "recovery.py"), "--quick", "--out", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads([line for line in proc.stdout.splitlines() if line.strip()][-1])
    ks = [r["k"] for r in result["rows"]]
    assert ks[0] == 0 and ks[-1] == result["longest_block"] and ks == sorted(ks)
    assert result["rows"][0]["recomputed_tokens"] == 0
    assert result["rows"][-1]["kl_to_full"] < 1e-6 and result["rows"][-1]["agree_with_full"] == 1.0
    assert result["rows"][0]["kl_to_full"] > result["rows"][-1]["kl_to_full"]
    assert Path(result["results_file"]).is_file() and Path(result["plot_file"]).read_bytes()[:4] == b"\x89PNG"
