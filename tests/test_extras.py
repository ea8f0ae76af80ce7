"""The core engine installs and runs with torch, transformers, safetensors, xxhash and numpy only; everything else is
an extra, and using a feature whose extra is missing raises MissingExtraError naming ``pip install '...[EXTRA]'``.

The end-to-end proof runs in a real subprocess whose import system cannot see any optional package (a
``sys.meta_path`` finder that reports them not found, exactly as a core-only install would): the engine runs block
requests on ``tiny-random`` (cold, then from the memory and the disk tier), and each extra's entry point refuses with
the extra's install command.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from block_attention.core.errors import BlockAttentionError, MissingExtraError
from block_attention.core.extras import EXTRAS, install_command, require

REPO = Path(__file__).resolve().parents[1]
CORE = {"torch", "transformers", "safetensors", "xxhash", "numpy"}


def _name(requirement: str) -> str:
    """The distribution name of a requirement string (lower case, extras and version cut off)."""
    return re.split(r"[\[<>=!~;\s]", requirement.strip(), maxsplit=1)[0].lower()


def _pyproject(path: Path = REPO / "pyproject.toml") -> dict:
    return tomllib.loads(path.read_text(encoding="utf-8"))["project"]


def test_the_core_dependencies_are_exactly_the_five() -> None:
    assert {_name(r) for r in _pyproject()["dependencies"]} == CORE


def test_the_extras_table_and_pyproject_agree() -> None:
    optional = _pyproject()["optional-dependencies"]
    for extra, modules in EXTRAS.items():
        assert {_name(r) for r in optional[extra]} == set(modules.values()), extra
    assert optional["all"] == [f"block-attention-rag[{','.join(EXTRAS)}]"]
    for extra in ("test", "bench"):  # scripts/run.sh installs .[test,bench]: every extra, so demo and tests run
        assert "block-attention-rag[all]" in optional[extra], extra


@pytest.mark.parametrize("integration", sorted(p.name for p in (REPO / "integrations").iterdir()
                                               if (p / "pyproject.toml").is_file()))
def test_the_integrations_depend_on_the_retrieval_extra(integration: str) -> None:
    deps = _pyproject(REPO / "integrations" / integration / "pyproject.toml")["dependencies"]
    ours = [r for r in deps if _name(r) == "block-attention-rag"]
    assert len(ours) == 1 and ours[0].startswith("block-attention-rag[retrieval]"), ours


def test_require_returns_the_module() -> None:
    import fastapi

    assert require("serve", "fastapi") is fastapi


def test_require_names_the_extra_when_the_module_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "peft", None)  # "not installed" for this test
    with pytest.raises(MissingExtraError) as caught:
        require("train", "peft")
    error = caught.value
    assert isinstance(error, BlockAttentionError) and isinstance(error, ImportError)
    assert (error.extra, error.module) == ("train", "peft")
    assert "pip install 'block-attention-rag[train]'" in str(error) and "'peft'" in str(error)
    assert install_command("eval") == "pip install 'block-attention-rag[eval]'"


_CORE_ONLY = textwrap.dedent("""
    import json, sys, tempfile
    from importlib.machinery import PathFinder

    BLOCKED = set(sys.argv[1].split(","))

    class CoreOnly(PathFinder):
        '''The path finder, blind to the optional packages (find_spec says "not installed", as pip would leave it).'''

        @classmethod
        def find_spec(cls, name, path=None, target=None):
            if name.partition(".")[0] in BLOCKED:
                return None
            return PathFinder.find_spec(name, path, target)

    sys.meta_path[:] = [CoreOnly if finder is PathFinder else finder for finder in sys.meta_path]

    import torch
    torch.set_num_threads(1)
    from block_attention.core.blocks import Block
    from block_attention.core.errors import MissingExtraError
    from block_attention.models import load_engine
    from block_attention.store import StoreConfig

    report = {}
    work = tempfile.mkdtemp()
    blocks = [Block("The lighthouse of Alexandria stood on the island of Pharos.", "pharos"),
              Block("The quick brown fox jumps over the lazy dog.", "fox")]
    engine = load_engine("tiny-random", store=StoreConfig(disk_dir=work + "/kv"))
    cold = engine.generate(blocks, "Where did the lighthouse stand?", max_new_tokens=6)
    warm = engine.generate(blocks[::-1], "Where did the lighthouse stand?", max_new_tokens=6)
    disk = load_engine("tiny-random", store=StoreConfig(disk_dir=work + "/kv")).generate(
        blocks, "Where did the lighthouse stand?", max_new_tokens=6)
    report["engine"] = {"cold_misses": cold.stats.misses, "warm_hits": dict(warm.stats.hits_by_tier),
                        "disk_hits": dict(disk.stats.hits_by_tier), "same_answer": cold.token_ids == disk.token_ids,
                        "new_tokens": len(cold.token_ids), "mode": cold.stats.mode}

    def refusal(call):
        try:
            call()
        except MissingExtraError as exc:
            return [exc.extra, exc.module, str(exc)]
        except Exception as exc:
            return ["unexpected", type(exc).__name__, str(exc)]
        return ["no error", "", ""]

    def retriever():
        from block_attention.retrieval import Retriever
        Retriever.create(work + "/index")

    def vector_index():
        from block_attention.retrieval import VectorIndex
        VectorIndex(8)

    def embedder():
        from block_attention.retrieval import Embedder
        Embedder(model=work).dimension

    def server():
        from block_attention.serving import create_app

    def remote_tier():
        from block_attention.store import KVStore
        KVStore(StoreConfig(remote_url="redis://127.0.0.1:1/0"))

    def trainer():
        from block_attention.finetune.train import train
        train(engine.model, engine.tokenizer, [{"blocks": ["a"], "question": "q", "answer": "a"}])

    def lora():
        from block_attention.finetune.train import with_lora
        with_lora(engine.model, 4)

    def plot():
        from block_attention.evaluation.report import plot
        plot(None, work + "/plot.png")

    report["refusals"] = {f.__name__: refusal(f) for f in (retriever, vector_index, embedder, server, remote_tier,
                                                            trainer, lora, plot)}
    report["loaded"] = sorted({m.partition(".")[0] for m in sys.modules} & BLOCKED)
    print(json.dumps(report))
""")

BLOCKED = sorted({*(m for modules in EXTRAS.values() for m in modules if m != "tqdm"), "starlette", "pydantic",
                  "sklearn", "scipy", "langchain_core", "llama_index", "httpx", "openai", "diskcache"})


def test_the_engine_runs_without_any_extra_and_each_extra_names_itself(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-c", _CORE_ONLY, ",".join(BLOCKED)], capture_output=True, text=True,
                         cwd=tmp_path, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    engine = report["engine"]
    assert engine["mode"] == "block" and engine["new_tokens"] == 6
    assert engine["cold_misses"] == 2 + 1  # two passages and the prompt's prefix block, all encoded alone
    assert sum(engine["warm_hits"].values()) == 3 and set(engine["warm_hits"]) == {"memory"}
    assert engine["disk_hits"] == {"disk": 3} and engine["same_answer"]
    expected = {"retriever": "retrieval", "vector_index": "retrieval", "embedder": "retrieval", "server": "serve",
                "remote_tier": "serve", "trainer": "train", "lora": "train", "plot": "eval"}
    for entry, extra in expected.items():
        got_extra, module, message = report["refusals"][entry]
        assert got_extra == extra, (entry, report["refusals"][entry])
        assert module.partition(".")[0] in BLOCKED
        assert f"pip install 'block-attention-rag[{extra}]'" in message, message
    assert report["loaded"] == []  # nothing optional was imported along the way
