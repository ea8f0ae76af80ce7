"""The ``block-attention eval`` harness end to end on the offline tiny model: structure, ``--limit``, determinism,
files written, recovery modes, user errors.

Runs on the real MuSiQue sample in ``../shared/data`` when present (else on a small JSONL written here). Only
structure and determinism are asserted: the tiny random model's answers are meaningless and timings are noisy.
"""

import json
from pathlib import Path

import pytest

from block_attention.cli import main

MUSIQUE = Path(__file__).resolve().parents[3] / "shared" / "data" / "musique_s.json"
MODES = ["full", "block", "block-k4", "block-sink"]
TIMING_KEYS = {"ttft_s", "ttft_ms_mean", "ttft_ms_median"}


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    if MUSIQUE.exists():
        return MUSIQUE
    path = tmp_path_factory.mktemp("evaldata") / "data.jsonl"
    rows = [{"question": f"Who keeps lighthouse {i}?", "answers": [f"keeper {i}"],
             "blocks": [{"text": f"Lighthouse {i} is kept by keeper {i}."}, {"text": "Lamps burn oil at night."}]}
            for i in range(4)]
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    return path


def _run(data_file, out, capsys, *extra):
    argv = ["eval", "--data", str(data_file), "--model", "tiny-random", "--modes", ",".join(MODES), "--limit", "2",
            "--max-blocks", "1", "--max-new-tokens", "4", "--out", str(out), "--quiet", *extra]
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads((out / "eval.json").read_text()), captured.out


def _strip_timings(obj):
    if isinstance(obj, dict):
        return {k: _strip_timings(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [_strip_timings(v) for v in obj]
    return obj


@pytest.fixture(scope="module")
def two_runs(data_file, tmp_path_factory):
    return data_file, tmp_path_factory.mktemp("eval1"), tmp_path_factory.mktemp("eval2")


def test_eval_structure_limit_determinism_and_files(two_runs, capsys):
    data_file, out1, out2 = two_runs
    first, stdout = _run(data_file, out1, capsys)
    second, _ = _run(data_file, out2, capsys, "--no-plot")
    # structure
    assert first["n_examples"] == 2 and len(first["examples"]) == 2  # --limit
    assert first["config"]["modes"] == MODES and first["config"]["max_blocks"] == 1
    for mode in MODES:
        s = first["summary"][mode]
        for key in ("n", "em", "f1", "contains", "gold_nll", "kl_to_full", "agree_with_full", "ttft_ms_median"):
            assert key in s, (mode, key)
        assert s["n"] == 2 and 0.0 <= s["em"] <= 1.0 and 0.0 <= s["f1"] <= 1.0 and s["kl_to_full"] >= 0.0
    assert first["summary"]["full"]["kl_to_full"] == 0.0 and first["summary"]["full"]["agree_with_full"] == 1.0
    assert first["summary"]["block"]["recomputed_tokens_mean"] == 0
    assert first["summary"]["block-k4"]["recomputed_tokens_mean"] == 4 * 1  # one passage after the prefix block
    assert first["summary"]["block-sink"]["recomputed_tokens_mean"] == 0
    assert first["agreement"]["block"]["full"] == first["agreement"]["full"]["block"]
    ex = first["examples"][0]
    assert set(ex["scores"]) == set(MODES) and ex["question"] and ex["answers"]
    # the table on stdout
    assert "agree w/ full" in stdout and all(m in stdout for m in MODES) and "eval.json" in stdout
    # files
    assert (out1 / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out2 / "eval.png").exists()
    # determinism: everything but the timings is identical across two runs
    assert _strip_timings(first) == _strip_timings(second)


def test_eval_user_errors_exit_2(tmp_path, capsys):
    assert main(["eval", "--data", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"question": "q", "answers": ["a"], "blocks": [{"text": "t"}]}))
    assert main(["eval", "--data", str(path), "--modes", "full,block-x", "--out", str(tmp_path)]) == 2
    assert "Unknown evaluation mode 'block-x'" in capsys.readouterr().err
