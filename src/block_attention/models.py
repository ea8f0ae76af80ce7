"""Resolving a model name for the CLI, pipeline and examples into a ready engine.

Built-in offline names (no download): ``tiny-random`` (a seeded random tiny Llama: every code path is real, the
answers are gibberish) and ``tiny-block-ft`` (a tiny model block-fine-tuned by ``block_attention.finetune`` on a
synthetic corpus, shipped in the package when present) and ``tiny-reader`` (a reader trained from scratch by
``scripts/train_reader.py`` to quote the passage sentence that answers the question; the demo's default when
packaged, which it is not yet: see docs/finetune_results.md). Anything else is a local directory or a Hugging Face id
loaded with transformers (online, or from the local HF cache).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from .config import EngineConfig
from .engine import BlockAttentionEngine
from .errors import BlockAttentionError, ModelLoadError
from .store import StoreConfig

BUILTIN_RANDOM = "tiny-random"
BUILTIN_FINETUNED = "tiny-block-ft"
BUILTIN_READER = "tiny-reader"


def reader_checkpoint() -> Path | None:
    """The packaged ``tiny-reader`` checkpoint directory, or None when this install does not ship it."""
    path = Path(str(resources.files("block_attention") / "data" / "tiny_reader"))
    return path if (path / "config.json").is_file() else None


def finetuned_checkpoint() -> Path | None:
    path = Path(str(resources.files("block_attention") / "data" / "tiny_block_ft"))
    return path if (path / "config.json").is_file() else None


def default_model() -> str:
    return BUILTIN_READER if reader_checkpoint() is not None else BUILTIN_RANDOM


def describe_model(name: str) -> str:
    if name == BUILTIN_RANDOM:
        return ("tiny-random: a 0.1M-parameter Llama with seeded random weights, built offline. Retrieval, caching "
                "and timings are real; the generated text is gibberish.")
    if name == BUILTIN_FINETUNED:
        return "tiny-block-ft: a tiny model block-fine-tuned on the packaged synthetic corpus (see docs)."
    if name == BUILTIN_READER:
        return ("tiny-reader: a small reader trained from scratch by scripts/train_reader.py (block "
                "fine-tuned). It answers by quoting the retrieved sentence that best matches the question; its "
                "measured quality is in docs/finetune_results.md.")
    return name


def load_engine(name: str, *, cache_dir: str | Path | None = None, memory_bytes: int = 1 << 30,
                disk_bytes: int = 20 << 30, config: EngineConfig | None = None, device: str | None = None,
                dtype: Any = "auto") -> BlockAttentionEngine:
    """An engine for model ``name`` with a memory tier and, when ``cache_dir`` is given, a disk tier there."""
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
    if name == BUILTIN_READER:
        path = reader_checkpoint()
        if path is None:
            raise ModelLoadError("The tiny-reader checkpoint is not packaged in this install; retrain it with "
                                 "python scripts/train_reader.py, or use --model tiny-random.")
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
