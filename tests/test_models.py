"""The one engine factory: built-in names, local folders, store/config/device/dtype, model_kwargs meaning."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from block_attention import EngineConfig
from block_attention.models import ModelLoadError, load_engine, load_pretrained


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from block_attention.testing import tiny_model, tiny_tokenizer

    folder = tmp_path_factory.mktemp("tiny")
    tiny_model("llama", seed=0).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def test_local_folder_with_model_kwargs_store_and_config(model_dir: Path) -> None:
    engine = load_engine(str(model_dir), store=False, config=EngineConfig(mode="full"), dtype=torch.float32,
                         model_kwargs={"attn_implementation": "eager"})
    assert engine.store is None and engine.config.mode == "full"
    assert engine.model.config._attn_implementation == "eager" and engine.model.dtype == torch.float32
    builtin = load_engine("tiny-random", store=False)
    assert builtin.generate(["A."], "Q?", max_new_tokens=3).text == load_engine("tiny-random").generate(
        ["A."], "Q?", max_new_tokens=3).text


def test_model_kwargs_mean_from_pretrained_kwargs_only(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="own arguments"):
        load_pretrained(str(model_dir), model_kwargs={"device": "cpu"})
    with pytest.raises(ModelLoadError, match="Could not load model"):
        load_engine(str(tmp_path / "missing"))


@pytest.mark.parametrize("dtype, expected", [("bfloat16", torch.bfloat16), ("float32", torch.float32)])
def test_cli_dtype_option_reaches_the_factory(model_dir: Path, tmp_path: Path, dtype: str, expected: torch.dtype
                                              ) -> None:
    from block_attention import cli

    for command in (["ask", "q?", "--index", str(tmp_path)], ["serve"]):
        args = cli.build_parser().parse_args([*command, "--model", str(model_dir), "--dtype", dtype])
        assert args.dtype == dtype
    engine = cli._engine(args)  # the ask/chat path; serve passes args.dtype to the same factory
    try:
        assert engine.model.dtype == expected
    finally:
        engine.close()
