"""The vLLM-side fingerprint: a digest of checkpoint content and KV-shaping settings, not of paths or times."""

from __future__ import annotations

import os
import shutil

import pytest

from block_attention.core.errors import ConfigError
from block_attention.vllm_connector.fingerprint import checkpoint_digest, vllm_fingerprint

SETTINGS = dict(dtype="torch.float32", kv_cache_dtype="auto", quantization=None, revision=None)


def _folder(path, weights=b"\x00\x01weights"):
    path.mkdir()
    (path / "model.safetensors").write_bytes(weights)
    (path / "config.json").write_text('{"model_type": "llama"}')
    return path


def test_same_content_elsewhere_is_the_same_fingerprint(tmp_path):
    a = _folder(tmp_path / "a")
    b = tmp_path / "b"
    shutil.copytree(a, b)
    os.utime(b / "model.safetensors", (1, 1))  # other times, other path
    cfg_a = {"model_type": "llama", "_name_or_path": str(a), "transformers_version": "5.19.0"}
    cfg_b = {"model_type": "llama", "_name_or_path": str(b), "transformers_version": "5.24.0"}
    assert checkpoint_digest(a) == checkpoint_digest(b)
    assert vllm_fingerprint(a, hf_config=cfg_a, **SETTINGS) == vllm_fingerprint(b, hf_config=cfg_b, **SETTINGS)


def test_any_byte_or_setting_changes_it(tmp_path):
    a = _folder(tmp_path / "a")
    b = _folder(tmp_path / "b", weights=b"\x00\x02weights")
    cfg = {"model_type": "llama"}
    base = vllm_fingerprint(a, hf_config=cfg, **SETTINGS)
    assert vllm_fingerprint(b, hf_config=cfg, **SETTINGS) != base
    assert vllm_fingerprint(a, hf_config={"model_type": "llama", "rope_theta": 2.0}, **SETTINGS) != base
    assert vllm_fingerprint(a, hf_config=cfg, **{**SETTINGS, "dtype": "torch.bfloat16"}) != base
    assert vllm_fingerprint(a, hf_config=cfg, **{**SETTINGS, "kv_cache_dtype": "fp8"}) != base
    (a / "model.safetensors").write_bytes(b"\x00\x03weights")  # edited in place: size same, mtime differs
    os.utime(a / "model.safetensors", (5, 5))
    assert vllm_fingerprint(a, hf_config=cfg, **SETTINGS) != base


def test_a_hub_id_is_refused_with_the_fix(tmp_path):
    with pytest.raises(ConfigError, match="local checkpoint folder"):
        checkpoint_digest(tmp_path / "HuggingFaceTB/SmolLM2-135M-Instruct")
