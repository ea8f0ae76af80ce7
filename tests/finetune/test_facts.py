"""The invented-fact reading task: determinism, held-out wording and names, answers only in the gold passage."""

from __future__ import annotations

import pytest

from block_attention.core.errors import ConfigError
from block_attention.finetune.facts import KINDS, _pools, edited, make_examples


def test_same_arguments_same_examples_and_seeds_differ():
    assert make_examples(20, split="train", seed=3) == make_examples(20, split="train", seed=3)
    assert make_examples(20, split="train", seed=3) != make_examples(20, split="train", seed=4)


@pytest.mark.parametrize("split", ["train", "test"])
def test_answer_is_a_span_of_the_gold_passage_only(split):
    for ex in make_examples(200, split=split, seed=0):
        gold = [b for b in ex["blocks"] if b["id"] == ex["gold_id"]]
        assert len(gold) == 1 and ex["answer"] in gold[0]["text"] and ex["value"] in ex["answer"]
        assert ex["answers"] == [ex["value"]]
        assert 2 <= len(ex["blocks"]) <= 5
        # the question names its entity; exactly one passage (the gold one) is about it
        assert ex["entity"] in ex["question"]
        assert [s == ex["entity"] for s in ex["subjects"]] == [b["id"] == ex["gold_id"] for b in ex["blocks"]]


def test_train_and_test_share_no_names_and_no_wording():
    train, test = _pools("train"), _pools("test")
    assert not set(train.people) & set(test.people) and not set(train.places) & set(test.places)
    for attrs in KINDS.values():
        for passages, questions in attrs.values():
            assert set(passages[0::2]).isdisjoint(passages[1::2]) and set(questions[0::2]).isdisjoint(questions[1::2])
    train_q = {_shape(e) for e in make_examples(300, split="train")}
    test_q = {_shape(e) for e in make_examples(300, split="test")}
    assert not train_q & test_q


def _shape(example):
    gold = next(b for b in example["blocks"] if b["id"] == example["gold_id"])
    name = gold["title"] or ""
    return example["question"].replace(name, "{e}") if name else example["question"]


def test_edited_changes_the_gold_fact_and_the_answer():
    for ex in make_examples(50, split="test", seed=2):
        ed = edited(ex)
        assert ed["value"] != ex["value"] and ed["answers"] == [ed["value"]] and ed["value"] in ed["answer"]
        gold = next(b for b in ed["blocks"] if b["id"] == ex["gold_id"])
        assert ed["answer"] in gold["text"] and ex["value"] not in gold["text"]
        others = [(a, b) for a, b in zip(ex["blocks"], ed["blocks"]) if a["id"] != ex["gold_id"]]
        assert all(a == b for a, b in others)


def test_bad_arguments_name_the_fix():
    with pytest.raises(ConfigError, match="split"):
        make_examples(1, split="dev")
    with pytest.raises(ConfigError, match="min_passages"):
        make_examples(1, min_passages=3, max_passages=2)
