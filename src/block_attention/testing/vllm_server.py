"""A ``vllm serve`` process with the block-attention connector, for tests and benchmarks (stopped on exit).

:class:`VLLMServer` starts :func:`block_attention.vllm_connector.launch.serve_command` in its own session, logs
to a file, waits until ``/health`` answers (or the process dies: its log tail is in the error), and stops the
whole process group on exit. Settings that keep it small on a CPU machine: float32, eager mode, a 1 GiB KV space.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from block_attention.testing.redis_server import free_port
from block_attention.vllm_connector.launch import serve_command

SERVED_NAME = "model"


class VLLMServer:
    name = "vllm+connector"  # how benchmark logs name it (as benchmarks/peer_servers.Server.name)

    def __init__(self, vllm_python: str | os.PathLike[str], model: str | os.PathLike[str], *,
                 store: Mapping[str, Any], log_path: Path, threads: int = 2, kv_space_gib: int = 1,
                 max_model_len: int = 8192, extra_args: Sequence[str] = (), extra_env: Mapping[str, str] | None = None,
                 startup_timeout_s: float = 1800.0) -> None:
        self.port = free_port()
        args = ["--served-model-name", SERVED_NAME, "--dtype", "float32", "--enforce-eager", "--seed", "0",
                "--max-model-len", str(max_model_len), *extra_args]
        self.argv, env = serve_command(vllm_python, model, store=store, port=self.port, extra_args=args)
        self.env = {**os.environ, **env, "VLLM_CPU_KVCACHE_SPACE": str(kv_space_gib),
                    "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
                    "PYTHONUNBUFFERED": "1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0", **(extra_env or {})}
        self.env.pop("VIRTUAL_ENV", None)
        self.log_path = log_path
        self.startup_timeout_s = startup_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def start(self) -> "VLLMServer":
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                         start_new_session=True)
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vllm serve exited with {self.proc.returncode} while starting:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.base_url + "/health", timeout=2) as resp:  # noqa: S310 - loopback
                    if resp.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(1.0)
        self.stop()
        raise RuntimeError(f"vllm serve did not answer /health within {self.startup_timeout_s:.0f} s:\n"
                           f"{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: the server and the engine processes it spawned
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def __enter__(self) -> "VLLMServer":
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
