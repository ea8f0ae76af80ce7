"""Start ``vllm serve`` with the block-attention connector (the hook benchmarks and users call).

:func:`serve_command` returns ``(argv, env)`` for vLLM's OpenAI server in a vLLM venv: ``--kv-transfer-config``
names the connector (``kv_role="kv_both"``, ``kv_load_failure_policy="recompute"``) and its store, and ``env`` puts
this package on ``PYTHONPATH`` (the vLLM venv needs only ``xxhash`` and ``redis`` besides vLLM; installing this
package there would pull the library's own transformers pin over vLLM's). :func:`kv_transfer_config` is the JSON
value alone, for a command line of your own.

CLI (run from this library's venv; it replaces itself with the vLLM server)::

    python -m block_attention.vllm_connector.launch --vllm-python ~/.cache/block-attention/peers/vllm/bin/python \\
        --model DIR --port 8000 --disk-dir /var/cache/ba-kv --redis-url redis://10.0.0.5:6379/0 -- --dtype float32
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from block_attention.store import StoreConfig

CONNECTOR = "BlockAttentionConnector"
MODULE = "block_attention.vllm_connector.connector"
SRC = Path(__file__).resolve().parents[2]  # the folder that holds the block_attention package


def kv_transfer_config(store: Mapping[str, Any]) -> dict[str, Any]:
    """The ``--kv-transfer-config`` value for the connector with ``store`` (StoreConfig fields, validated here)."""
    StoreConfig(**store)  # a bad store config fails here, with its sentence, not inside vLLM's engine process
    return {"kv_connector": CONNECTOR, "kv_connector_module_path": MODULE, "kv_role": "kv_both",
            "kv_load_failure_policy": "recompute", "kv_connector_extra_config": {"store": dict(store)}}


def serve_command(vllm_python: str | os.PathLike[str], model: str | os.PathLike[str], *, store: Mapping[str, Any],
                  port: int = 8000, host: str = "127.0.0.1", extra_args: Sequence[str] = ()
                  ) -> tuple[list[str], dict[str, str]]:
    """``(argv, env additions)`` of ``vllm serve`` with the connector (prefix caching on, as vLLM's default)."""
    argv = [str(vllm_python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--host", host,
            "--port", str(port), "--enable-prefix-caching",
            "--kv-transfer-config", json.dumps(kv_transfer_config(store)), *extra_args]
    path = os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH", "")) if p)
    return argv, {"PYTHONPATH": path}


def cli_command(argv: Sequence[str] | None = None) -> tuple[list[str], dict[str, str]]:
    """``(argv, env additions)`` of the server the CLI starts (arguments after ``--`` go to vLLM)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vllm-python", required=True, help="python of the venv vLLM is installed in")
    ap.add_argument("--model", required=True, help="local checkpoint folder (the connector fingerprints its files)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--memory-mib", type=int, default=2048, help="memory tier of the worker's store (MiB)")
    ap.add_argument("--disk-dir", default=None, help="disk tier directory (shared by the engine's two processes)")
    ap.add_argument("--disk-gib", type=int, default=20)
    ap.add_argument("--redis-url", default=None, help="shared Redis tier (replicas share blocks through it)")
    args, extra = ap.parse_known_args(argv)
    store: dict[str, Any] = {"memory_bytes": args.memory_mib << 20, "disk_bytes": args.disk_gib << 30}
    if args.disk_dir:
        store["disk_dir"] = args.disk_dir
    if args.redis_url:
        store["remote_url"] = args.redis_url
    return serve_command(args.vllm_python, args.model, store=store, port=args.port, host=args.host,
                         extra_args=[a for a in extra if a != "--"])


def main(argv: Sequence[str] | None = None) -> int:
    command, env = cli_command(argv)
    os.execve(command[0], command, {**os.environ, **env})
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
