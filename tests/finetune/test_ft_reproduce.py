"""The miniature reproduction (scripts/reproduce_finetune.py) runs end to end in --quick mode (CI), through the
engine, and saves a checkpoint the engine serves with the recorded prompt format."""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

import torch

from block_attention.engine import BlockAttentionEngine
from block_attention.finetune.synthetic import make_corpus, task_prompt_config

_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "reproduce_finetune.py"
_spec = importlib.util.spec_from_file_location("reproduce_finetune", _SCRIPT)
repro = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
sys.modules["reproduce_finetune"] = repro
_spec.loader.exec_module(repro)  # type: ignore[union-attr]
ReproConfig, ReproResult, Row, main, verdict = repro.ReproConfig, repro.ReproResult, repro.Row, repro.main, repro.verdict


def test_quick_reproduction_end_to_end(tmp_path, capsys):
    start = time.perf_counter()
    rc = main(["--quick", "--save", str(tmp_path / "ckpt"), "--write-docs", str(tmp_path / "results.md")])
    elapsed = time.perf_counter() - start
    assert rc == 0
    out = capsys.readouterr().out
    summary = json.loads(out.strip().splitlines()[-1])
    assert set(summary["exact_match"]) == {"1", "2", "3", "4", "5", "6"}
    assert all(0.0 <= v <= 1.0 for v in summary["exact_match"].values())
    assert "| 2 | full-attention model | block |" in out and "guessing among passages" in out
    assert 0.2 < summary["kind_guess_rate"] <= 0.5
    report = (tmp_path / "results.md").read_text()
    assert "| 3 | block fine-tuned (mixed) | block |" in report and "Verdict:" in report
    assert elapsed < 60, f"--quick took {elapsed:.1f} s; CI needs < 60 s"
    # the saved checkpoint is servable by the engine with the prompt format it was trained with
    engine = BlockAttentionEngine.from_pretrained(str(tmp_path / "ckpt"), dtype=torch.float32, store=False)
    assert engine.prompt_config == task_prompt_config()
    assert engine.model.config.block_attention["trained_with"] == "mixed"
    corpus = [json.loads(line) for line in (tmp_path / "ckpt" / "synthetic_corpus.jsonl").read_text().splitlines()]
    assert corpus == make_corpus(len(corpus), seed=0)


def _result(em: dict[str, float]) -> ReproResult:
    rows = [Row(k, "m", "full", v, round(200 * v), 200) for k, v in em.items()]
    return ReproResult(ReproConfig(), rows=rows, kind_guess=0.4)


def test_verdict_reads_the_numbers_against_the_claim():
    holds = verdict(_result({"1": 0.90, "2": 0.60, "3": 0.89, "4": 0.91}))
    assert holds[-1] == "Verdict: the claim holds at this scale."
    assert "a drop of 30.0 points" in holds[0]
    no_drop = verdict(_result({"1": 0.90, "2": 0.90, "3": 0.90, "4": 0.90}))
    assert no_drop[-1].startswith("Verdict: the claim is not reproduced")
    floor = verdict(_result({"1": 0.42, "2": 0.10, "3": 0.42, "4": 0.42}))
    assert "no better than guessing" in floor[0] and "not reproduced" in floor[-1]
    weak = verdict(_result({"1": 0.48, "2": 0.30, "3": 0.48, "4": 0.48}))
    assert "only partly learned" in weak[0] and "not reproduced" in weak[-1]
