"""Each validator is defined once (issue #25): the engine, EngineConfig and the other configs call the same one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import block_attention
from block_attention.core import checks, config, prompt
from block_attention.core.config import EngineConfig, check_recompute_tokens, check_sink
from block_attention.core.errors import ConfigError
from block_attention.engine import recovery, sink

ROOT = Path(block_attention.__file__).resolve().parent


def test_engine_and_config_share_one_validator() -> None:
    assert recovery.check_recompute_tokens is check_recompute_tokens and sink.check_sink is check_sink
    for bad in (-1, True, 1.5, "3"):
        with pytest.raises(ConfigError, match=r"recompute_tokens must be an int >= 0 \(0 = plain block mode\)"):
            check_recompute_tokens(bad)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match=r"recompute_tokens must be an int >= 0"):
            EngineConfig(recompute_tokens=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"sink must be 'none' or 'prefix'"):
        EngineConfig(sink="begin")  # type: ignore[arg-type]
    assert check_recompute_tokens(4) == 4 and check_sink("prefix") == "prefix"


def test_the_prefix_id_is_one_constant() -> None:
    assert sink.PREFIX_ID is prompt.PREFIX_ID == "prefix:"
    users = [p for p in ROOT.rglob("*.py") if '"prefix:"' in p.read_text(encoding="utf-8")]
    assert users == [ROOT / "core" / "prompt.py"]


def test_no_inline_int_check_outside_core_checks() -> None:
    inline = re.compile(r"isinstance\((\w[\w.]*), int\) and not isinstance\(\1, bool\)|"
                        r"isinstance\((\w[\w.]*), bool\) or not isinstance\(\2, int\)|"
                        r"not isinstance\((\w[\w.]*), int\) or isinstance\(\3, bool\)|"
                        r"isinstance\((\w[\w.]*), bool\) or not isinstance\(\4, \(?int")
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel == "core/checks.py":
            continue
        found += [f"{rel}:{n}" for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                  if inline.search(line)]
    assert not found, f"inline copies of core.checks.is_int: {found}"
    assert not hasattr(config, "_is_int") and checks.is_int(3) and not checks.is_int(True)
