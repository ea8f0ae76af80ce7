"""`block-attention serve` refuses bad options with one `error:` line (exit status 2), before loading a model.
(The served path itself runs as real subprocesses in test_server_replicas.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.mark.parametrize(("args", "fragment"), [
    (["--kv-remote", "http://127.0.0.1:6379"], "remote_url"),
    (["--kv-ttl", "0", "--kv-remote", "redis://127.0.0.1:1/0"], "remote_ttl_s"),
    (["--max-batch", "0"], "max_batch"),
])
def test_serve_rejects_bad_options(args: list[str], fragment: str) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "block_attention", "serve", "--model", "tiny-random", *args],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.startswith("error: ") and fragment in result.stderr and "Traceback" not in result.stderr
