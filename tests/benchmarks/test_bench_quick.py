"""Smoke test of benchmarks/ttft.py --quick (issue #5): the script runs, its final stdout line is JSON with the
expected structure, the warm runs hit the cache, and it writes its results file and plot.

Timings are deliberately not asserted (CI machines are noisy); only structure and cache behaviour are.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "ttft.py"
METHODS = {"full", "prefix_miss", "prefix_same_docs", "prefix_identical", "block_cold", "block_cold_fused",
           "block_warm_memory", "block_warm_disk", "block_warm_disk_cold", "lower_bound"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MPLBACKEND": "Agg",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return json.loads(lines[-1]), out, proc.stdout


@pytest.mark.slow
def test_quick_json_line_has_the_expected_structure(quick_run):
    result, _, _ = quick_run
    for key in ("benchmark", "model", "dtype", "device", "lengths", "prompt_tokens", "ttft_median_s", "ratios",
                "hits", "targets", "flops_reduction_pct", "kv_bytes_per_token", "cache_bytes", "store_MB_per_s",
                "peak_memory_bytes", "workload", "results_file", "plot_file", "elapsed_s"):
        assert key in result, key
    assert result["quick"] is True and result["device"] == "cpu"
    lengths = [str(n) for n in result["lengths"]]
    assert len(lengths) >= 2
    assert set(result["ttft_median_s"]) == METHODS
    for method in METHODS:
        assert set(result["ttft_median_s"][method]) == set(lengths)
        assert all(v > 0 for v in result["ttft_median_s"][method].values())
    for n in lengths:
        assert {"warm_speedup_vs_full", "warm_over_lower_bound", "cold_speed_vs_full",
                "disk_over_memory_warm"} <= set(result["ratios"][n])
    for name in ("warm_speedup_vs_full", "warm_over_lower_bound", "cold_speed_vs_full", "disk_over_memory_warm"):
        assert {"value", "target", "met"} <= set(result["targets"][name])
    assert result["kv_bytes_per_token"] > 0
    assert all(0 < v < 100 for v in result["flops_reduction_pct"].values())
    assert {"disk_put", "disk_get_page_cache_hot", "memory_get", "serialize_loads"} <= set(result["store_MB_per_s"])


@pytest.mark.slow
def test_quick_warm_runs_hit_the_cache(quick_run):
    result, _, _ = quick_run
    for n, hits in result["hits"].items():
        cold, mem = hits["block_cold"], hits["block_warm_memory"]
        disk, disk0 = hits["block_warm_disk"], hits["block_warm_disk_cold"]
        for c in (cold, hits["block_cold_fused"]):
            assert c["misses"] == c["blocks"] and c["encoded_tokens"] > 0, (n, c)
        assert mem["memory_hits"] == mem["blocks"] and mem["misses"] == 0, (n, mem)
        for d in (disk, disk0):  # a restarted store: every block read back from the disk tier
            assert d["disk_hits"] == d["blocks"] and d["misses"] == 0 and d["memory_hits"] == 0, (n, d)
    w = result["workload"]
    assert w["requests"] > 0 and 0 < w["block_hit_rate"] <= 1 and 0 <= w["prefix_token_reuse_rate"] < 1
    assert result["cache_bytes"]["memory_entries"] > 0 and result["cache_bytes"]["disk_entries"] > 0


@pytest.mark.slow
def test_quick_writes_results_and_plot(quick_run):
    result, out, stdout = quick_run
    results_file, plot_file = Path(result["results_file"]), Path(result["plot_file"])
    assert results_file.parent == out and results_file.is_file()
    full = json.loads(results_file.read_text())
    for key in ("python", "torch", "transformers", "cpu_model", "cpu_cores", "device"):
        assert key in full["environment"], key
    assert "random" in full["model"]["weights"]
    assert plot_file.is_file() and plot_file.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "random" in stdout  # the output says the weights are random
