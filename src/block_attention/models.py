"""Resolving a model name for the CLI, pipeline and examples into a ready engine.

Built-in offline names (no download): ``tiny-random`` (a seeded random tiny Llama: every code path is real, the
answers are gibberish) and ``tiny-block-ft`` (a tiny model block-fine-tuned by ``block_attention.finetune`` on a
synthetic corpus, shipped in the package when present). Anything else is a local directory or a Hugging Face id
loaded with transformers (online, or from the local HF cache).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from .config import EngineConfig
from .engine import BlockAttentionEngine
from .errors import BlockAttentionError, ConfigError
from .store import StoreConfig

BUILTIN_RANDOM = "tiny-random"
BUILTIN_FINETUNED = "tiny-block-ft"


class ModelLoadError(BlockAttentionError):
    """The model could not be found or loaded."""


def check_device(device: str | None) -> str | None:
    """``device`` when it names a usable torch device (or None); else a :class:`ConfigError` naming the fix."""
    if device is None:
        return None
    import torch

    if not isinstance(device, str) or not device.strip():
        raise ConfigError(f"device must be a device name such as 'cpu' or 'cuda:0', got {device!r}.")
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"Unknown device {device!r}; pass 'cpu', 'cuda', 'cuda:N' or 'mps' "
                          "(or leave it out to load on the default device).") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"Device {device!r} was requested but CUDA is not available on this machine (no GPU "
                              "or a CPU-only torch build); pass --device cpu or leave it out.")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ConfigError(f"Device {device!r} does not exist: this machine has {torch.cuda.device_count()} "
                              "CUDA device(s); pass cuda:0 or another existing index.")
    elif parsed.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"Device {device!r} was requested but MPS is not available here; pass --device cpu.")
    elif parsed.type not in ("cpu", "cuda", "mps", "xpu", "meta") and not hasattr(torch, parsed.type):
        raise ConfigError(f"Device {device!r} is not available in this torch build; pass --device cpu.")
    return device


def finetuned_checkpoint() -> Path | None:
    path = Path(str(resources.files("block_attention") / "data" / "tiny_block_ft"))
    return path if (path / "config.json").is_file() else None


def default_model() -> str:
    return BUILTIN_RANDOM


def describe_model(name: str) -> str:
    if name == BUILTIN_RANDOM:
        return ("tiny-random: a 0.1M-parameter Llama with seeded random weights, built offline. Retrieval, caching "
                "and timings are real; the generated text is gibberish.")
    if name == BUILTIN_FINETUNED:
        return "tiny-block-ft: a tiny model block-fine-tuned on the packaged synthetic corpus (see docs)."
    return name


def load_engine(name: str, *, cache_dir: str | Path | None = None, memory_bytes: int = 1 << 30,
                disk_bytes: int = 20 << 30, config: EngineConfig | None = None, device: str | None = None,
                dtype: Any = "auto") -> BlockAttentionEngine:
    """An engine for model ``name`` with a memory tier and, when ``cache_dir`` is given, a disk tier there."""
    device = check_device(device)
    store = StoreConfig(memory_bytes=memory_bytes, disk_dir=str(cache_dir) if cache_dir else None,
                        disk_bytes=disk_bytes)
    if name == BUILTIN_RANDOM:
        from .testing import tiny_model, tiny_tokenizer

        model = tiny_model("llama", seed=0)
        return BlockAttentionEngine(model if device is None else model.to(device), tiny_tokenizer(), config, store)
    if name == BUILTIN_FINETUNED:
        path = finetuned_checkpoint()
        if path is None:
            raise ModelLoadError("The tiny-block-ft checkpoint is not packaged in this install; use --model tiny-random "
                                 "or a Hugging Face model id.")
        name = str(path)
    try:
        return BlockAttentionEngine.from_pretrained(name, config=config, store=store, dtype=dtype, device=device)
    except BlockAttentionError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(
            f"Could not load model {name!r} ({first}). Pass a local directory with config.json and tokenizer files, "
            f"a Hugging Face id while online (e.g. Qwen/Qwen2.5-1.5B-Instruct), or --model {BUILTIN_RANDOM}."
        ) from exc
