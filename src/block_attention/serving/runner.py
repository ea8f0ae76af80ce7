"""Running the app with uvicorn: in the foreground (the ``serve`` command) or on a background thread.

:func:`run_server` (the ``serve`` command) runs the model on the main thread and uvicorn on a background one:
torch's CPU kernels run markedly slower when called from a thread other than the main one (measured in
:meth:`~block_attention.serving.batching.BatchScheduler.run_here`). SIGINT and SIGTERM stop uvicorn gracefully
(the app's shutdown then closes the model loop); a second signal stops the model loop at once.

:class:`ServerThread` starts uvicorn on a daemon thread, waits until it accepts connections and stops it on
``stop()`` (or as a context manager): tests, benchmarks and notebooks use it to talk to a real HTTP server in
process. Both bind to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import signal
import threading
import time
from types import TracebackType
from typing import Any

from block_attention.core.errors import BlockAttentionError
from block_attention.core.extras import require


def _uvicorn() -> Any:
    return require("serve", "uvicorn")


def run_server(app: Any, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Serve ``app`` until interrupted (Ctrl-C / SIGTERM): the app's model worker (``app.state.worker``, as
    :func:`~block_attention.serving.app.create_app` makes it) on the calling thread, uvicorn on a background one.
    Call it from the main thread; an app without a worker is served by uvicorn alone."""
    uvicorn = _uvicorn()
    worker = getattr(app.state, "worker", None)
    if worker is None or threading.current_thread() is not threading.main_thread():
        uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
        return
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                           timeout_graceful_shutdown=5))

    def serve_http() -> None:
        try:
            server.run()  # off the main thread uvicorn installs no signal handlers: the ones below stand in
        finally:  # stopped, or failed to start (a port in use): the model loop must not outlive it
            worker.shutdown(timeout=0)

    def stop(signum: int, _frame: Any) -> None:
        if server.should_exit:  # a second signal: stop the model loop now
            worker.shutdown(timeout=0)
        server.should_exit = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    http = threading.Thread(target=serve_http, name="block-attention-http")
    try:
        worker.run_here(ready=http.start)  # HTTP starts once the model loop is this thread's
    finally:
        server.should_exit = True
        if http.ident is not None:  # started
            http.join(30)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


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
