"""Answer metrics and distribution distances against hand-computed values."""

import math

import pytest
import torch

from block_attention.evaluation.metrics import (agreement, answer_contained, exact_match, kl_divergence,
                                                normalize_answer, token_f1, token_nll)


def test_normalize_answer():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert normalize_answer("An apple, a pear and THE plum.") == "apple pear and plum"
    assert normalize_answer("  theory  ") == "theory"  # 'the' inside a word is kept


def test_exact_match():
    assert exact_match("the Beatles.", ["Beatles"]) == 1.0
    assert exact_match("Beatles band", ["Beatles", "The Rolling Stones"]) == 0.0
    assert exact_match("rolling stones", ["Beatles", "The Rolling Stones"]) == 1.0


def test_token_f1_hand_computed():
    # pred tokens: new york city ; gold: york city council -> common 2, P = 2/3, R = 2/3, F1 = 2/3
    assert token_f1("New York City", ["York City Council"]) == pytest.approx(2 / 3)
    # pred: paris paris france ; gold: paris -> common min(2,1) = 1, P = 1/3, R = 1, F1 = 0.5
    assert token_f1("Paris, Paris, France", ["Paris"]) == pytest.approx(0.5)
    # best over golds: gold 'london' -> 0, gold 'paris france' -> common 2, P = 2/3, R = 1 -> 0.8
    assert token_f1("Paris, Paris, France", ["London", "Paris France"]) == pytest.approx(0.8)
    assert token_f1("", ["Paris"]) == 0.0
    assert token_f1("the", ["a"]) == 1.0  # both normalise to empty: SQuAD counts equal empties as a match


def test_answer_contained():
    assert answer_contained("It was built by Sostratus of Cnidus.", ["Sostratus"]) == 1.0
    assert answer_contained("Sostratusx built it", ["Sostratus"]) == 0.0  # word boundaries
    assert answer_contained("in 1999", ["2004", "1999"]) == 1.0
    assert answer_contained("anything", ["the"]) == 0.0  # an empty normalised gold never matches


def test_kl_divergence_hand_computed():
    p = torch.log(torch.tensor([[0.5, 0.5], [0.25, 0.75]]))
    q = torch.log(torch.tensor([[0.25, 0.75], [0.25, 0.75]]))
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    out = kl_divergence(p, q)
    assert out[0].item() == pytest.approx(expected, abs=1e-6)
    assert out[1].item() == pytest.approx(0.0, abs=1e-7)
    # logits are normalised: adding a constant changes nothing
    assert kl_divergence(p + 3.0, q - 1.0)[0].item() == pytest.approx(expected, abs=1e-6)


def test_token_nll_hand_computed():
    logits = torch.log(torch.tensor([[0.1, 0.9], [0.6, 0.4]]))
    out = token_nll(logits, [1, 0])
    assert out.tolist() == pytest.approx([-math.log(0.9), -math.log(0.6)], abs=1e-6)


def test_agreement():
    assert agreement(["Paris", "the Rhine", "x"], ["paris.", "Rhine", "y"]) == pytest.approx(2 / 3)
    assert math.isnan(agreement([], []))


def test_parse_modes():
    from block_attention.core.errors import ConfigError
    from block_attention.evaluation.harness import ModeSpec, parse_modes

    assert parse_modes("full, block,block-k16,block-sink,block-sink-k4") == (
        ModeSpec("full", "full"), ModeSpec("block", "block"), ModeSpec("block-k16", "block", 16),
        ModeSpec("block-sink", "block", 0, "prefix"), ModeSpec("block-sink-k4", "block", 4, "prefix"))
    for bad in ("full-k4", "full-sink", "block-k", "blocks", "", "block,block"):
        with pytest.raises(ConfigError):
            parse_modes(bad)
