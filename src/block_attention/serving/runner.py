"""Running the app with uvicorn: in the foreground (the ``serve`` command) or on a background thread.

:class:`ServerThread` starts uvicorn on a daemon thread, waits until it accepts connections and stops it on
``stop()`` (or as a context manager): tests, benchmarks and notebooks use it to talk to a real HTTP server in
process. Both bind to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import Any

from block_attention.core.errors import BlockAttentionError
from block_attention.core.extras import require


def _uvicorn() -> Any:
    return require("serve", "uvicorn")


def run_server(app: Any, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Serve ``app`` until interrupted (Ctrl-C / SIGTERM)."""
    _uvicorn().run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)


class ServerThread:
    """uvicorn serving ``app`` on ``host:port`` in a background thread (``port=0``: any free port)."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> None:
        uvicorn = _uvicorn()
        self._server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                                     timeout_graceful_shutdown=2))
        self._thread = threading.Thread(target=self._server.run, name="block-attention-http", daemon=True)
        self.host = host
        self.port = port

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 30.0) -> "ServerThread":
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise BlockAttentionError(f"The HTTP server did not start on {self.host}:{self.port}; is the port "
                                          "taken? Pick another port.")
            time.sleep(0.01)
        sockets = [s for server in self._server.servers for s in server.sockets]
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
