"""`block-attention serve` refuses bad options with one `error:` line (exit status 2), before loading a model;
served, it answers and stops cleanly on SIGTERM and SIGINT. (More of the served path runs as real subprocesses in
test_server_replicas.py.)"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
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


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_answers_and_stops_on_a_signal(sig: int, tmp_path: Path) -> None:
    """The served path: the model loop on the main thread, HTTP beside it; a signal stops both (exit status 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    log = tmp_path / "serve.log"
    proc = subprocess.Popen([sys.executable, "-m", "block_attention", "serve", "--model", "tiny-random", "--port",
                             str(port), "--no-disk-cache", "--log-level", "warning"],
                            env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            deadline = time.monotonic() + 120
            while True:
                assert proc.poll() is None, log.read_text()
                try:
                    if client.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
            body = {"messages": [{"role": "user", "content": "Where?"}], "max_tokens": 4,
                    "documents": [{"text": "The lighthouse stood on Pharos."}]}
            answer = client.post("/v1/chat/completions", json=body)
            assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] >= 1
        proc.send_signal(sig)
        assert proc.wait(30) == 0, log.read_text()
        assert "Traceback" not in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
