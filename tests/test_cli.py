"""The command line, run as a user would (subprocesses): ingest, ask twice, full mode, cache, chat, errors."""

import json
import os
import subprocess
import sys

import pytest
import torch

from block_attention.models import load_engine
from block_attention.retrieval import Retriever
from block_attention.retrieval.pipeline import PipelineConfig, RAGPipeline
from block_attention.testing import INVENTED_FACTS as FACTS

pytestmark = pytest.mark.slow


def run_cli(*args, stdin=None):
    """The CLI in a subprocess; ask/chat run the tiny random model unless a test names one (the CLI's own default
    is the best installed real reader, tested in tests/test_demo_reader.py)."""
    if args and args[0] in ("ask", "chat") and "--model" not in args:
        args = (*args, "--model", "tiny-random")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "block_attention", *args], capture_output=True, text=True,
                          input=stdin, env=env, timeout=600)


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    corpus = root / "corpus"
    corpus.mkdir()
    for name, text in FACTS.items():
        (corpus / name).write_text(text)
    res = run_cli("ingest", str(corpus), "--index", str(root / "idx"), "--quiet")
    assert res.returncode == 0, res.stderr
    assert "5 documents" in res.stdout or "passages" in res.stdout
    return root / "idx"


def test_ask_twice_hits_cache_and_full_mode_equals_plain_generation(index):
    q = "How long is the Zarnok bridge?"
    runs = [run_cli("ask", q, "--index", str(index), "--json", "--max-new-tokens", "12") for _ in range(2)]
    for r in runs:
        assert r.returncode == 0, r.stderr
    first, second = (json.loads(r.stdout.strip().splitlines()[-1]) for r in runs)
    n = first["cache"]["blocks"]
    assert first["cache"]["misses"] == n
    assert second["cache"]["disk_hits"] == n and second["cache"]["misses"] == 0
    assert second["answer"] == first["answer"]
    assert first["sources"][0]["id"].startswith("zarnok.md#")

    full = run_cli("ask", q, "--index", str(index), "--json", "--max-new-tokens", "12", "--mode", "full")
    assert full.returncode == 0, full.stderr
    got = json.loads(full.stdout.strip().splitlines()[-1])
    # Plain generation over the same flat prompt, computed here independently of the CLI.
    engine = load_engine("tiny-random")
    pipe = RAGPipeline(Retriever.load(index), engine, PipelineConfig(top_k=4))
    ids = engine.layout(pipe.blocks(pipe.retrieve(q)), q).input_ids()
    out = engine.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                max_new_tokens=12, do_sample=False, pad_token_id=engine.pad_id)
    new = out[0, len(ids):].tolist()
    if engine.tokenizer.eos_token_id in new:
        new = new[: new.index(engine.tokenizer.eos_token_id)]
    assert got["answer"] == engine.tokenizer.decode(new, skip_special_tokens=True)


def test_stream_cache_stats_and_clear(index):
    res = run_cli("ask", "Where are Quillan pears grown?", "--index", str(index), "--stream", "--max-new-tokens", "6")
    assert res.returncode == 0, res.stderr and "cache:" in res.stdout
    stats = run_cli("cache", "stats", "--index", str(index))
    assert stats.returncode == 0 and json.loads(stats.stdout)["entries"] > 0
    assert run_cli("cache", "clear", "--index", str(index)).returncode == 0
    assert json.loads(run_cli("cache", "stats", "--index", str(index)).stdout)["entries"] == 0


def test_chat_two_turns(index):
    res = run_cli("chat", "--index", str(index), "--max-new-tokens", "4",
                  stdin="Where is the Zarnok bridge?\n/mode full\nAnd how long is it?\n/quit\n")
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("bot> ") == 2 and "mode = full" in res.stdout and "mode=full" in res.stdout


@pytest.mark.parametrize("args, needle", [
    (("ask", "q", "--index", "/nonexistent/idx"), "index"),
    (("ask", "q", "--index", "{index}", "--model", "/nonexistent/model"), "Could not load model"),
    (("ingest", "{empty}", "--index", "{tmp}/idx2", "--quiet"), "empty"),
    (("ingest", "/nonexistent/dir", "--index", "{tmp}/idx3", "--quiet"), "/nonexistent/dir"),
    (("ask", "q", "--index", "{index}", "--device", "bogus"), "Unknown device 'bogus'"),
    pytest.param(("ask", "q", "--index", "{index}", "--device", "cuda"), "CUDA is not available",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
    (("demo", "--device", "cuda:99"), "cuda:99"),
    (("ingest", "{badname}", "--index", "{tmp}/idx4", "--quiet"), "not valid UTF-8"),
])
def test_user_mistakes_give_one_line_errors(index, tmp_path, args, needle):
    (tmp_path / "empty").mkdir()
    badname = tmp_path / "badname"
    badname.mkdir()
    (badname / "good.txt").write_text("A fine document about bridges.")
    with open(os.path.join(os.fsencode(badname), b"caf\xe9-latin1.txt"), "w") as f:  # a Latin-1 file name
        f.write("A document whose file name is not UTF-8.")
    args = [a.format(index=index, empty=tmp_path / "empty", tmp=tmp_path, badname=badname) for a in args]
    res = run_cli(*args)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    lines = [line for line in res.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and needle.lower() in lines[0].lower(), res.stderr


def _snapshot(root):
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_question_that_is_not_utf8_is_one_line_error_and_writes_nothing(index):
    before = _snapshot(index)
    res = run_cli("ask", b"who \xff lit", "--index", str(index), "--max-new-tokens", "2")
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "UTF-8" in lines[0] and "0xff" in lines[0]
    assert _snapshot(index) == before


@pytest.mark.parametrize("field", ["id", "title", "text"])
def test_jsonl_record_with_a_lone_surrogate_is_one_line_error_and_writes_nothing(tmp_path, field):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    record = {"id": "p1", "title": "Lamps", "text": "A passage about lamps."}
    record[field] = "\\ud800" + record[field]  # a JSON escape decoding to a lone surrogate
    (corpus / "good.jsonl").write_text('{"id": "p0", "text": "A fine passage."}\n')
    (corpus / "bad.jsonl").write_text("{" + ", ".join(f'"{k}": "{v}"' for k, v in record.items()) + "}\n")
    res = run_cli("ingest", str(corpus), "--index", str(tmp_path / "idx"), "--quiet")
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "surrogate" in lines[0] and f'"{field}"' in lines[0]
    assert not (tmp_path / "idx").exists()
