"""One PEFT unwrap (issue #25): hf/unwrap.py alone calls ``get_base_model``; base_model is the decoder stack."""

from __future__ import annotations

import re
from pathlib import Path

import torch

import block_attention
from block_attention.hf.compat import cache_argument
from block_attention.hf.tiny import tiny_model
from block_attention.hf.unwrap import base_model, unwrap_peft

ROOT = Path(block_attention.__file__).resolve().parent


class Wrapper(torch.nn.Module):
    """What a PEFT model looks like to the library: ``get_base_model()`` gives the model inside."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.base = inner

    def get_base_model(self) -> torch.nn.Module:
        return self.base


def test_base_model_unwraps_peft_then_takes_the_decoder_stack() -> None:
    model = tiny_model("llama", seed=0)
    assert unwrap_peft(Wrapper(model)) is model and unwrap_peft(model) is model
    assert base_model(Wrapper(model)) is model.model and base_model(model) is model.model
    assert base_model(model.model) is model.model  # a decoder stack has no decoder stack attribute
    assert cache_argument(Wrapper(model)) == cache_argument(model)


def test_only_hf_unwrap_calls_get_base_model() -> None:
    allowed = ROOT / "hf" / "unwrap.py"
    users = [str(p.relative_to(ROOT)) for p in sorted(ROOT.rglob("*.py"))
             if p.resolve() != allowed and re.search(r"\bget_base_model\b|\b_base_model\b|\b_inner\(",
                                                      p.read_text(encoding="utf-8"))]
    assert not users, f"PEFT unwrapping outside hf/unwrap.py: {users}"
