"""Resolving a model name for the CLI, pipeline and examples into a ready engine.

Built-in offline names (no download): ``tiny-random`` (a seeded random tiny Llama: every code path is real, the
answers are gibberish) and every checkpoint shipped under ``block_attention/data`` (:data:`PACKAGED_CHECKPOINTS`).
Anything else is a local directory or a Hugging Face id loaded with transformers (online, or from the local HF
cache).

:func:`load_engine` is the library's one engine factory (CLI, both framework integrations, benchmarks, demo);
:func:`load_pretrained` (defined in :mod:`block_attention.hf.loading`, re-exported here as the public path) is the
one place transformers' loaders are called (the engine's ``from_pretrained``, benchmarks and fine-tuning use it). ``model_kwargs`` always means extra keyword arguments of
``AutoModelForCausalLM.from_pretrained``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from block_attention.core.config import EngineConfig
from block_attention.core.errors import BlockAttentionError, ConfigError, ModelLoadError
from block_attention.core.prompt import PromptConfig
from block_attention.engine.engine import BlockAttentionEngine
from block_attention.hf.loading import load_pretrained as load_pretrained  # the public path (re-export)
from block_attention.hf.registry import (DEFAULT_DTYPE, REAL_MODELS, checkpoint_dir, is_adapter_dir, is_installed,
                                         load_with_adapter)
from .store import KVStore, StoreConfig

BUILTIN_RANDOM = "tiny-random"
BUILTIN_READER = "tiny-reader"
# built-in name -> (folder under block_attention/data, one-line description, how to get it when not shipped)
PACKAGED_CHECKPOINTS: dict[str, tuple[str, str, str]] = {
    BUILTIN_READER: ("tiny_reader", "a small reader trained from scratch by scripts/train_reader.py (block fine-tuned). "
                     "It answers by quoting the retrieved sentence that best matches the question; its measured "
                     "quality is in docs/finetune_results.md.", "retrain it with python scripts/train_reader.py --out DIR"),
}


SMOLLM2 = "smollm2-135m"
# built-in block-fine-tuned LoRA adapters shipped under block_attention/data/adapters:
# name -> (folder, description, base built-in model)
ADAPTERS: dict[str, tuple[str, str, str]] = {
    "smollm2-135m-block-ft": (
        "smollm2-135m-block-ft",
        "SmolLM2-135M-Instruct block-fine-tuned by this repository (LoRA r16 on every projection, 640 generated "
        "invented-fact examples, mixed block/full attention; python -m block_attention.finetune, "
        "docs/finetune_results.md), merged into the registry's SmolLM2 weights at load. It answers in one sentence.",
        "smollm2-135m"),
}


def adapter_checkpoint(name: str) -> Path:
    """The packaged folder of built-in adapter ``name``."""
    from block_attention.core.packaged import packaged_path

    path = packaged_path("adapters", ADAPTERS[name][0])
    if not is_adapter_dir(path):
        raise ModelLoadError(f"The {name} adapter is not packaged in this install; reinstall block-attention-rag.")
    return path


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


def packaged_checkpoint(name: str) -> Path | None:
    """The folder of a built-in checkpoint shipped in this install, or None."""
    if name not in PACKAGED_CHECKPOINTS:
        return None
    from block_attention.core.packaged import packaged_path

    path = packaged_path(PACKAGED_CHECKPOINTS[name][0])
    return path if (path / "config.json").is_file() else None


def reader_checkpoint() -> Path | None:
    """The packaged ``tiny-reader`` folder, or None (it is not shipped yet: docs/finetune_results.md)."""
    return packaged_checkpoint(BUILTIN_READER)


def real_model_installed(name: str) -> bool:
    """Whether the registry distribution of built-in real model ``name`` is installed (located, not imported)."""
    return is_installed(name)


def adapter_packaged(name: str) -> bool:
    from block_attention.core.packaged import packaged_path

    return name in ADAPTERS and is_adapter_dir(packaged_path("adapters", ADAPTERS[name][0]))


def builtin_names() -> tuple[str, ...]:
    """Names :func:`load_engine` resolves offline, without a download."""
    return (BUILTIN_RANDOM, *(n for n in PACKAGED_CHECKPOINTS if packaged_checkpoint(n) is not None),
            *(n for n in REAL_MODELS if real_model_installed(n)),
            *(n for n in ADAPTERS if adapter_packaged(n) and real_model_installed(ADAPTERS[n][2])))


def default_model() -> str:
    """The best offline reader installed: a packaged block-fine-tuned adapter whose base is installed, else
    ``smollm2-135m`` (with its recommended recovery setting), else ``tiny-random``."""
    for name, (_, _, base) in ADAPTERS.items():
        if adapter_packaged(name) and real_model_installed(base):
            return name
    if real_model_installed(SMOLLM2):
        return SMOLLM2
    return BUILTIN_RANDOM


def recommended_config(name: str) -> EngineConfig | None:
    """The engine settings measured best for built-in model ``name`` (None: the library's defaults)."""
    if name in REAL_MODELS and REAL_MODELS[name].recommended is not None:
        settings = dict(REAL_MODELS[name].recommended)
        prompt = settings.pop("prompt", None)
        return EngineConfig(prompt=PromptConfig(**prompt) if prompt else None, **settings)
    return None


def describe_model(name: str) -> str:
    if name == BUILTIN_RANDOM:
        return ("tiny-random: a 0.1M-parameter Llama with seeded random weights, built offline. Retrieval, caching "
                "and timings are real; the generated text is gibberish.")
    if name in PACKAGED_CHECKPOINTS:
        return f"{name}: {PACKAGED_CHECKPOINTS[name][1]}"
    if name in REAL_MODELS:
        return f"{name}: {REAL_MODELS[name].description}"
    if name in ADAPTERS:
        return f"{name}: {ADAPTERS[name][1]}"
    return name


def load_engine(name: str, *, store: KVStore | StoreConfig | None | bool = None, config: EngineConfig | None = None,
                device: str | None = None, dtype: Any = "auto", model_kwargs: Mapping[str, Any] | None = None,
                cache_dir: str | Path | None = None, memory_bytes: int = 1 << 30,
                disk_bytes: int = 20 << 30) -> BlockAttentionEngine:
    """THE engine factory (CLI, integrations, benchmarks, demo): an engine for model ``name``.

    ``name`` is a built-in offline model (:func:`builtin_names`), a local folder or a hub id.
    ``store``: a :class:`KVStore` or :class:`StoreConfig` (or ``False`` for none); when omitted, a memory tier of
    ``memory_bytes`` and, when ``cache_dir`` is given, a disk tier of ``disk_bytes`` there. ``model_kwargs``: extra
    keyword arguments of ``AutoModelForCausalLM.from_pretrained`` (ignored by ``tiny-random``, which is built
    from a config).
    """
    device = check_device(device)
    if store is None:
        store = StoreConfig(memory_bytes=memory_bytes, disk_dir=str(cache_dir) if cache_dir else None,
                            disk_bytes=disk_bytes)
    if name == BUILTIN_RANDOM:
        from .hf.tiny import tiny_model, tiny_tokenizer

        model = tiny_model("llama", seed=0)
        return BlockAttentionEngine(model if device is None else model.to(device), tiny_tokenizer(), config, store)
    if name in REAL_MODELS:
        config = config if config is not None else recommended_config(name)
        name = str(checkpoint_dir(name))
        dtype = DEFAULT_DTYPE if dtype == "auto" else dtype
    elif name in ADAPTERS or is_adapter_dir(name):
        folder = adapter_checkpoint(name) if name in ADAPTERS else Path(name)
        model, tokenizer = load_with_adapter(folder, dtype=DEFAULT_DTYPE if dtype == "auto" else dtype,
                                             device=device)
        return BlockAttentionEngine(model, tokenizer, config, store)
    elif name in PACKAGED_CHECKPOINTS:
        path = packaged_checkpoint(name)
        if path is None:
            raise ModelLoadError(f"The {name} checkpoint is not packaged in this install; "
                                 f"{PACKAGED_CHECKPOINTS[name][2]}, or use --model {BUILTIN_RANDOM}.")
        name = str(path)
    try:
        return BlockAttentionEngine.from_pretrained(name, config=config, store=store, dtype=dtype, device=device,
                                                    **dict(model_kwargs or {}))
    except BlockAttentionError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(
            f"Could not load model {name!r} ({first}). Pass a local directory with config.json and tokenizer files, "
            f"a Hugging Face id while online (e.g. Qwen/Qwen2.5-1.5B-Instruct), or --model {BUILTIN_RANDOM}."
        ) from exc


# What each built-in model was measured to do on the demo's 10 questions (block mode, warm, top-4 retrieval;
# docs/quality.md has the commands and the full tables).
DEMO_QUALITY: dict[str, str] = {
    BUILTIN_RANDOM: "gibberish answers (random weights); use it to see the caching and timings only.",
    "smollm2-135m-block-ft": ("a 135M-parameter reader: measured 4 of 10 demo questions right in block mode (5 of 10 "
                              "with full attention); on held-out invented-fact questions 55% in block mode vs 45% "
                              "for the base model with full attention and 22% in block mode (docs/quality.md)."),
    SMOLLM2: ("a 135M-parameter model not block-fine-tuned, served with recompute_tokens=16: on held-out invented-fact "
              "questions 35% vs 45% with full attention and 22% in plain block mode (docs/quality.md)."),
}


def expected_quality(name: str) -> str:
    """One line on the answer quality to expect from built-in model ``name`` (measured; docs/quality.md)."""
    return DEMO_QUALITY.get(name, "not measured by this project; see docs/quality.md to measure it with "
                                  "`block-attention eval`.")
