"""Smoke test of benchmarks/peers.py --quick (issue #24): the script runs transformers and the library in process
on a real MuSiQue stream (tiny random model, so it needs no GGUF), its final stdout line is JSON with every row and
request kind, the absent peers are reported as skipped (never faked), the caches behave as the rows claim (the
prefix cache reuses a repeated prompt, not a reordered one; the warm rows hit every block, the cold row none), the
library's outputs do not depend on where the KV came from, and it writes its results file and plot.
Timings are not asserted (CI machines are noisy)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "peers.py"
DATA = REPO.parent / "shared" / "data" / "musique_s.json"
ROWS = {"transformers_full", "transformers_prefix", "library_cold", "library_warm_memory", "library_warm_disk"}
KINDS = ("first", "same", "reordered")


@pytest.mark.slow
def test_quick_peers_benchmark(tmp_path: Path) -> None:
    if not DATA.is_file():
        pytest.skip(f"{DATA} (the shared MuSiQue sample) is not present in this checkout's parent")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MPLBACKEND": "Agg",
           "BA_PEERS_DIR": str(tmp_path / "no-peers"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--tiny-model", "--threads", "1",
                           "--data", str(DATA), "--out", str(tmp_path)],
                          cwd=REPO / "benchmarks", env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| method | first p50 / p95 ms |" in proc.stdout
    result = json.loads([line for line in proc.stdout.splitlines() if line.strip()][-1])
    assert result["benchmark"] == "peers" and result["quick"] is True
    assert set(result["ttft_p50_ms"]) == ROWS
    for row in result["ttft_p50_ms"].values():
        assert set(row) == set(KINDS) and all(v > 0 for v in row.values())
    assert set(result["skipped"]) == {"vllm", "llamacpp"}  # reported, never replaced by a stand-in

    saved = json.loads(Path(result["results_file"]).read_text())
    rows = saved["rows"]
    n = saved["requests"]
    assert n == 3 * saved["requests_per_kind"]
    kinds = [KINDS[i % 3] for i in range(n)]  # each question: first, same, reordered
    reused = rows["transformers_prefix"]["reused_tokens"]
    full_texts = rows["transformers_full"]["texts"]
    for i, kind in enumerate(kinds):
        if kind == "same":  # the repeated prompt is reused but its last token
            assert reused[i] > 0 and reused[i] >= reused[i - 1]
        if kind == "reordered":  # the first passage changed: only the shared system prefix can be reused
            assert reused[i] < reused[i - 1]
    blocks = 1 + 3  # the prompt prefix and three passages
    assert rows["library_cold"]["hits"] == [0] * n
    assert rows["library_warm_memory"]["hits"] == [blocks] * n
    assert rows["library_warm_disk"]["hits"] == [blocks] * n
    # where the KV came from (encoded now, memory, disk after a restart) does not change a greedy output
    assert rows["library_cold"]["texts"] == rows["library_warm_memory"]["texts"] == rows["library_warm_disk"]["texts"]
    assert rows["transformers_full"]["same_output_as_full"] == n and len(full_texts) == n
    for kind in KINDS:
        assert rows["library_warm_memory"][kind]["n"] == saved["requests_per_kind"]
    assert saved["environment"]["cpu_cores"] and saved["settings"]["threads"] == 1
    assert Path(result["plot_file"]).stat().st_size > 0
