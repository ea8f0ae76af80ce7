"""Run the example chatbots (notebooks with nbclient, scripts as subprocesses) so they cannot rot.

Everything runs offline on the tiny random model. To stay fast, every run generates only a few tokens per answer
and all runs share one index folder (the first run ingests the corpus, the others find it up to date). The
notebooks execute in a ``python3`` kernel from this interpreter's environment; their outputs are not written back.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent
NAMES = ["langchain_chatbot", "llamaindex_chatbot"]
MAX_TOKENS = 4
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
EXPECTED = ("cache hits 0/", "cache hits 4/4", "[block]", "[full ]", "You: ", "sources")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("examples")


def _check(name: str, text: str) -> None:
    for expected in EXPECTED:
        assert expected in text, f"{name} did not print {expected!r}; its output was:\n{text[-3000:]}"


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_script_runs(name: str, workdir: Path) -> None:
    command = [sys.executable, str(EXAMPLES / f"{name}.py"), "--workdir", str(workdir), "--max-tokens",
               str(MAX_TOKENS)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, **OFFLINE},
                            cwd=workdir)
    assert result.returncode == 0, result.stderr[-4000:]
    _check(f"{name}.py", result.stdout)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name: str, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    for key, value in OFFLINE.items():
        monkeypatch.setenv(key, value)
    # The kernel must run this interpreter (the environment with the integrations installed), whatever PATH says.
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    notebook = nbformat.read(EXAMPLES / f"{name}.ipynb", as_version=4)
    params = next(cell for cell in notebook.cells if cell.cell_type == "code" and "MODEL = " in cell.source)
    params.source += f"\nMAX_TOKENS = {MAX_TOKENS}\nWORKDIR = {str(workdir)!r}\n"
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(workdir)}})
    client.execute()
    text = "\n".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                     for output in cell.get("outputs", []))
    _check(f"{name}.ipynb", text)


@pytest.mark.slow
def test_remote_server_clients_example() -> None:
    command = [sys.executable, str(EXAMPLES / "remote_server_clients.py"), "--max-tokens", str(MAX_TOKENS)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, **OFFLINE})
    assert result.returncode == 0, result.stderr[-4000:]
    for expected in ("openai (first):", "cache hits 0/3", "openai (again):", "cache hits 3/3 {'memory': 3}",
                     "langchain: ", "llama-index: "):
        assert expected in result.stdout, result.stdout
