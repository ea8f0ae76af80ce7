"""A private ``redis-server`` process for tests, benchmarks and local demos (never for production).

:class:`RedisProcess` starts the system's ``redis-server`` on a free loopback port with persistence off
(``--save "" --appendonly no``), waits until it answers ``PING``, and stops it (``stop``, or as a context
manager). ``restart`` starts it again on the same port (used to show that the remote tier reconnects). Extra
server options (``maxmemory``, ``maxmemory-policy`` ...) pass through ``options``.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from types import TracebackType

from block_attention.core.errors import StoreError


def redis_server_path() -> str | None:
    """Path of the ``redis-server`` executable, or ``None`` when it is not installed."""
    return shutil.which("redis-server")


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisProcess:
    """One ``redis-server`` on ``127.0.0.1:port`` (see the module docstring)."""

    def __init__(self, port: int | None = None, options: Mapping[str, str] | None = None) -> None:
        exe = redis_server_path()
        if exe is None:
            raise StoreError("redis-server is not installed; install it (Debian: apt-get install -y redis-server).")
        self.executable = exe
        self.port = port or free_port()
        self.options = dict(options or {})
        self._dir = tempfile.mkdtemp(prefix="block-attention-redis-")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout_s: float = 10.0) -> "RedisProcess":
        args = [self.executable, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", self._dir]
        for name, value in self.options.items():
            args += [f"--{name}", str(value)]
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise StoreError(f"redis-server exited at start (status {self._proc.returncode}); is port "
                                 f"{self.port} taken? Pick another port.")
            if self._ping():
                return self
            time.sleep(0.02)
        self.stop()
        raise StoreError(f"redis-server did not answer on port {self.port} within {timeout_s} s; check the machine.")

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after 5 s) and wait for it."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def restart(self) -> "RedisProcess":
        self.stop()
        return self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> "RedisProcess":
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
