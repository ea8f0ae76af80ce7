"""The synthetic RAG task: seeded, one gold passage holding the answer span, a lossless closed-vocabulary tokenizer."""

from __future__ import annotations

import pytest

from block_attention.core.errors import ConfigError
from block_attention.finetune.synthetic import (KINDS, SyntheticConfig, kind_guess_rate, make_corpus, make_task,
                                                passage_kind, task_prompt_config,
                                                task_tokenizer)


def _entity(question: str) -> str:
    return question.rstrip("?").split()[-1]  # every question ends with the asked entity's name


def test_examples_are_seeded_and_answerable_from_exactly_one_passage():
    config = SyntheticConfig(n_train=50, n_test=20, seed=4)
    task = make_task(config)
    assert task == make_task(config)
    assert make_task(SyntheticConfig(n_train=50, n_test=20, seed=5)).train != task.train
    for ex in task.train + task.test:
        assert 4 <= len(ex["blocks"]) <= 6
        entity = _entity(ex["question"])
        mentioning = [b for b in ex["blocks"] if f" {entity} " in f" {b['text']} "]
        assert [b["id"] for b in mentioning] == [ex["gold_id"]]
        assert f" {ex['answer']}" in " " + mentioning[0]["text"]
        assert len({b["id"] for b in ex["blocks"]}) == len(ex["blocks"])
    assert {ex["kind"] for ex in task.train} == set(KINDS)


def test_tokenizer_round_trips_task_text_without_unknowns():
    tok = task_tokenizer()
    task = make_task(SyntheticConfig(n_train=30, n_test=0, seed=1))
    for ex in task.train:
        # as rendered in prompts: "- {text}\n" doc blocks, "Question: {question}", " {answer}" responses
        for text in [" " + b["text"] for b in ex["blocks"]] + [" " + ex["question"], " " + ex["answer"]]:
            ids = tok(text, add_special_tokens=False)["input_ids"]
            assert tok.unk_token_id not in ids
            assert tok.decode(ids) == text
    answer_ids = tok(" 1873", add_special_tokens=False)["input_ids"]
    assert len(answer_ids) == 1  # numbers, names and cities are single tokens
    assert task_prompt_config().add_bos and task_prompt_config().instruction is None


def test_corpus_has_unique_entities_and_answerable_questions():
    corpus = make_corpus(24, seed=0)
    assert corpus == make_corpus(24, seed=0)
    assert len({c["id"] for c in corpus}) == 24 and len({c["title"] for c in corpus}) == 24
    for record in corpus:
        for qa in record["questions"]:
            assert qa["answer"] in record["text"]


def test_config_errors():
    with pytest.raises(ConfigError, match="min_distractors"):
        SyntheticConfig(min_distractors=4, max_distractors=2)
    with pytest.raises(ConfigError, match="n_train"):
        SyntheticConfig(n_train=-1)
    with pytest.raises(ConfigError, match="n_passages"):
        make_corpus(0)


def test_history_turns_are_distinct_lookups_that_never_give_the_answer_away():
    task = make_task(SyntheticConfig(n_train=200, n_test=0, seed=3, history_questions=3))
    counts = set()
    for ex in task.train:
        history = ex["history"]
        counts.add(len(history) // 2)
        questions = [m["content"] for m in history[0::2]]
        assert [m["role"] for m in history] == ["user", "assistant"] * len(questions)
        assert len(set(questions)) == len(questions) and ex["question"] not in questions
        for question, reply in zip(questions, (m["content"] for m in history[1::2])):
            holder = [b for b in ex["blocks"] if f" {_entity(question)} " in f" {b['text']} "]
            assert len(holder) == 1 and f" {reply}" in " " + holder[0]["text"]
    assert counts == {0, 1, 2, 3}
    assert "history" not in make_task(SyntheticConfig(n_train=5, n_test=0)).train[0]


def test_kind_guess_rate_is_the_floor_of_a_kind_only_reader():
    task = make_task(SyntheticConfig(n_train=0, n_test=300, seed=2))
    assert {passage_kind(b["text"]) for ex in task.test for b in ex["blocks"]} == set(KINDS)
    rate = kind_guess_rate(task.test)
    # at least one same-kind distractor: never above 1/2; with 3-5 distractors of 4 kinds, well above 1/6
    assert 0.2 < rate <= 0.5
    one = make_task(SyntheticConfig(n_train=0, n_test=50, min_distractors=1, max_distractors=1, seed=2)).test
    assert kind_guess_rate(one) == 0.5
