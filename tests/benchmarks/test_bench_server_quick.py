"""Smoke test of benchmarks/server.py --quick (issue #14): it runs against a real redis-server and a real HTTP
server, its final stdout line is JSON with the expected structure, each method hit the tier it is meant to, and it
writes its results file. Timings are not asserted (CI machines are noisy)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from block_attention.testing.redis_server import redis_server_path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "server.py"
METHODS = {"full", "block_cold", "warm_remote", "warm_memory"}


@pytest.mark.slow
def test_quick_server_benchmark(tmp_path: Path) -> None:
    if redis_server_path() is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install -y redis-server; .ci/run installs it)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path)], cwd=REPO / "benchmarks",
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads([line for line in proc.stdout.splitlines() if line.strip()][-1])
    assert result["benchmark"] == "server" and result["quick"] is True
    for key in ("ttft_median_ms", "http_ttft_median_ms", "overhead_median_ms", "hits"):
        assert set(result[key]) == METHODS
    assert all(v > 0 for v in result["ttft_median_ms"].values())
    assert all(result["http_ttft_median_ms"][m] >= result["ttft_median_ms"][m] for m in METHODS)
    blocks = result["passages"] + 1  # the passages and the prompt prefix
    assert result["hits"]["warm_remote"] == {"remote": blocks, "misses": 0}
    assert result["hits"]["warm_memory"] == {"memory": blocks, "misses": 0}
    assert result["hits"]["block_cold"] == {"misses": blocks}
    saved = json.loads(Path(result["results_file"]).read_text())
    assert saved["tiers"]["remote"]["entries"] >= blocks and saved["environment"]["cpu_cores"]
