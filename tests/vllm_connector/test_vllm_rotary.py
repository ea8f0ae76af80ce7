"""The capability probe of vLLM's rotary embedding, run in vLLM's venv: accepted rotations, refused models, and a
rotation that does not match is refused by measurement (not by a list)."""

from __future__ import annotations

import json
import subprocess

import pytest

from vllm_helpers import require_vllm, vllm_env

SNIPPET = r'''
import json
from types import SimpleNamespace as NS
import torch
from vllm.config import VllmConfig, set_current_vllm_config
from block_attention.core.errors import UnsupportedModelError
from block_attention.vllm_connector import rotary

def model(arch, rope, head=64, dtype=torch.float32):
    text = NS(rope_parameters=rope, max_position_embeddings=4096)
    return NS(hf_config=NS(architectures=[arch]), hf_text_config=text, get_head_size=lambda: head, dtype=dtype)

def verdict(mc):
    try:
        got = rotary._probe(mc)
        return {"ok": True, "interleaved": got.interleaved, "freqs": got.inv_freq.numel()}
    except UnsupportedModelError as exc:
        return {"ok": False, "why": str(exc)}

out = {}
with set_current_vllm_config(VllmConfig()):
    out["llama"] = verdict(model("LlamaForCausalLM", {"rope_type": "default", "rope_theta": 1e5}))
    out["llama3"] = verdict(model("LlamaForCausalLM", {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0,
        "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 1024}))
    out["partial"] = verdict(model("Qwen2ForCausalLM", {"rope_type": "default", "rope_theta": 1e4,
                                                          "partial_rotary_factor": 0.5}))
    out["dynamic"] = verdict(model("LlamaForCausalLM", {"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0}))
    out["gpt2"] = verdict(model("GPT2LMHeadModel", None))
    rotary.rotate_block_into = lambda dest, src, delta, inv_freq, interleaved=False: dest.copy_(src)  # no rotation
    out["wrong_rotation"] = verdict(model("LlamaForCausalLM", {"rope_type": "default", "rope_theta": 1e5}))
print("RESULT" + json.dumps(out))
'''


@pytest.fixture(scope="module")
def verdicts():
    python = require_vllm()
    proc = subprocess.run([str(python), "-c", SNIPPET], env=vllm_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


def test_static_rotations_are_accepted(verdicts):
    assert verdicts["llama"] == {"ok": True, "interleaved": False, "freqs": 32}
    assert verdicts["llama3"] == {"ok": True, "interleaved": False, "freqs": 32}
    assert verdicts["partial"] == {"ok": True, "interleaved": False, "freqs": 16}  # half the head rotates


def test_unverified_or_position_dependent_models_are_refused(verdicts):
    assert not verdicts["dynamic"]["ok"] and "depends on the sequence length" in verdicts["dynamic"]["why"]
    assert not verdicts["gpt2"]["ok"] and "not verified" in verdicts["gpt2"]["why"]


def test_a_rotation_that_does_not_match_is_refused_by_measurement(verdicts):
    assert not verdicts["wrong_rotation"]["ok"] and "relative error" in verdicts["wrong_rotation"]["why"]
