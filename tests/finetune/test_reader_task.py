"""The reader's generated task is well posed (the evidence sentence is the unique best match, quoted verbatim),
seeded, and its scoring does what the docs say; the training script's --quick run trains, evaluates every row
and saves a checkpoint the engine serves."""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from pathlib import Path

import pytest
import torch

from block_attention.core.errors import ConfigError
from block_attention.core.packaged import demo_questions
from block_attention.demo import DEMO_TOP_K, answer_demo_questions
from block_attention.engine import BlockAttentionEngine
from block_attention.finetune.reader_task import (
    ReaderTask,
    answer_recall,
    content_words,
    induction_batch,
    is_correct,
)

_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "train_reader.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("train_reader", _SCRIPT)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["train_reader"] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.mark.parametrize("difficulty", [0.0, 0.5, 1.0])
def test_evidence_sentence_is_the_unique_best_match(difficulty):
    task = ReaderTask()
    rng = random.Random(7)
    for _ in range(30):
        ex = task.example(rng, difficulty)
        text = " ".join(b["text"] for b in ex["blocks"])
        assert ex["answer"] in text and ex["answer"].endswith(".")
        q = set(content_words(ex["question"]))
        best = len(q & set(content_words(ex["answer"])))
        sentences = [s + "." for b in ex["blocks"] for s in b["text"][:-1].split(". ")]
        others = [len(q & set(content_words(s))) for s in sentences if s != ex["answer"]]
        assert best >= 2 and all(o < best for o in others)
        assert ex["question"].endswith("?")


def test_generation_is_seeded_and_difficulty_is_checked():
    task = ReaderTask()
    assert task.examples(random.Random(3), 5) == task.examples(random.Random(3), 5)
    with pytest.raises(ConfigError):
        task.example(random.Random(0), 1.5)


def test_scoring_is_content_word_recall():
    assert content_words("The Cordouan lighthouse, in 1823") == ["cordouan", "lighthouse", "1823"]
    assert answer_recall("The Cordouan lighthouse, in 1823", "It was installed in 1823 at Cordouan.") == pytest.approx(2 / 3)
    assert is_correct("John Smeaton", "Smeaton modelled its profile on an oak.")  # 1/2 >= 0.5
    assert not is_correct("James Ducat, Thomas Marshall and Donald MacArthur", "The three keepers, James Ducat.")


def test_induction_batch_labels_only_the_second_copy():
    rows, labels = induction_batch(random.Random(0), list(range(10, 50)), batch=4, length=5, max_gap=3)
    for ids, lab in zip(rows, labels):
        assert len(ids) == len(lab) and ids[:5] == ids[-5:]
        assert [t for t in lab if t != -100] == ids[-4:]


def test_train_reader_quick_end_to_end(tmp_path, capsys):
    script = _load_script()
    before = torch.get_num_threads()
    try:
        assert script.main(["--quick", "--out", str(tmp_path / "ck"), "--report", str(tmp_path / "r.json")]) == 0
    finally:
        torch.set_num_threads(before)
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(summary["exact_match"]) == {"1", "2", "3", "4", "5", "6"}
    assert set(summary["exact_match"]["3"]) == {"0", "1"}  # two fine-tuning seeds
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["parameters"] > 0 and "pretrain" in report["seconds"]
    engine = BlockAttentionEngine.from_pretrained(str(tmp_path / "ck"), dtype=torch.float32, store=False)
    assert engine.model.config.block_attention["trained_with"] == "mixed"
    out = engine.generate(["Alpha runs. Beta sits."], "Who sits?", max_new_tokens=4)
    assert isinstance(out.text, str)
    assert script.main(["--quick"]) == 2  # --out is required: a run never replaces the packaged reader by accident
    # a trained checkpoint directory is scored through the demo's own path (retriever top 4 + engine, block mode)
    question = demo_questions()[0]
    [answer] = answer_demo_questions(str(tmp_path / "ck"), workdir=tmp_path / "demo", questions=[question.question])
    assert answer.reference == question.answer and len(answer.passage_ids) == DEMO_TOP_K
    assert 0.0 <= answer_recall(answer.reference, answer.answer) <= 1.0
