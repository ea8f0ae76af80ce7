"""Smoke test of benchmarks/concurrency.py --quick (issue #19): the script runs, its final stdout line is JSON with
the expected structure, every batched and sequential output equals greedy decoding of the request alone, the
batched setting really decoded several requests per forward, and it writes its results file and plot.
Timings are not asserted (CI machines are noisy)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "concurrency.py"
FIELDS = {"requests", "tokens", "wall_s", "tokens_per_s", "ttft_p50_ms", "ttft_p95_ms", "latency_mean_ms",
          "identical", "max_batch_rows", "decode_forwards", "diverged"}


@pytest.mark.slow
def test_quick_concurrency_benchmark(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MPLBACKEND": "Agg",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    # float32: batched kernels round like one-row ones to ~1e-7 there, so identity is a property, not luck (bf16
    # near-ties can flip on another CPU's kernels; docs/benchmarks.md)
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--threads", "1", "--dtype", "float32",
                           "--out", str(tmp_path)],
                          cwd=REPO / "benchmarks", env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| clients | setting | tokens/s |" in proc.stdout
    result = json.loads([line for line in proc.stdout.splitlines() if line.strip()][-1])
    assert result["benchmark"] == "concurrency" and result["quick"] is True and result["clients"] == [1, 4]
    assert set(result["settings"]) == {"1", "4"} and set(result["speedup"]) == {"1", "4"}
    for clients, by_setting in result["settings"].items():
        assert set(by_setting) == {"sequential", "batched"}
        for setting, row in by_setting.items():
            assert set(row) == FIELDS
            assert row["requests"] == int(clients) and row["identical"] == row["requests"], (clients, setting)
            assert row["diverged"] == []
            assert row["tokens"] == row["requests"] * result["max_new_tokens"]  # EOS ignored: all tokens made
            assert row["tokens_per_s"] > 0 and 0 < row["ttft_p50_ms"] <= row["ttft_p95_ms"]
    assert result["all_identical"] is True
    margin = result["reference_top2_margin"]
    assert margin["steps"] == 4 * result["max_new_tokens"]  # 4 requests decoded alone, EOS ignored
    assert 0 <= margin["min"] <= margin["median"]
    assert result["settings"]["4"]["sequential"]["max_batch_rows"] == 1
    assert result["settings"]["4"]["batched"]["max_batch_rows"] > 1
    saved = json.loads(Path(result["results_file"]).read_text())
    assert saved["environment"]["cpu_cores"] and saved["prompt_tokens"] == result["prompt_tokens"]
    assert Path(result["plot_file"]).stat().st_size > 0
