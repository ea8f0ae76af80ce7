"""The offline demo runs end to end with the built-in model and reports cache hits on the warm pass."""

from __future__ import annotations

import json
import re


from block_attention.demo import run_demo
from block_attention.models import BUILTIN_RANDOM


def test_demo_runs_offline_end_to_end(tmp_path, capsys, one_thread):
    assert run_demo(model=BUILTIN_RANDOM, workdir=str(tmp_path), questions=2) == 0
    out = capsys.readouterr().out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary == {"model": BUILTIN_RANDOM, "questions": 2, "warm_all_hits": True, "block_equals_warm": True}
    assert "generated text is gibberish" in out  # the demo says plainly what the model is
    assert len(re.findall(r"A \(block\): ", out)) == len(re.findall(r"A \(full\) : ", out)) == 2
    assert (tmp_path / "kv_cache").is_dir()
