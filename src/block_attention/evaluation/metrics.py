"""Answer metrics (SQuAD-style normalisation) and distribution distances between attention modes.

Normalisation, as in the SQuAD v1.1 evaluation script: lower case, drop punctuation, drop the articles
``a``/``an``/``the``, collapse whitespace. Every answer metric takes the best score over the gold answers.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

import torch

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower-cased, punctuation and articles removed, whitespace collapsed."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals a normalised gold answer, else 0.0."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in golds))


def _f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred_tokens), common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, golds: Sequence[str]) -> float:
    """Best bag-of-tokens F1 between the normalised prediction and a normalised gold answer."""
    pred = normalize_answer(prediction).split()
    return max((_f1(pred, normalize_answer(g).split()) for g in golds), default=0.0)


def answer_contained(prediction: str, golds: Sequence[str]) -> float:
    """1.0 when a (non-empty) normalised gold answer occurs in the normalised prediction on word boundaries."""
    pred = f" {normalize_answer(prediction)} "
    return float(any(g and f" {g} " in pred for g in (normalize_answer(x) for x in golds)))


def kl_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """Per-row ``KL(P || Q)`` in nats of the softmax distributions of ``p_logits, q_logits [N, V]`` -> ``[N]``."""
    assert p_logits.shape == q_logits.shape, (p_logits.shape, q_logits.shape)
    log_p = torch.log_softmax(p_logits.to(torch.float32), dim=-1)  # [N, V]
    log_q = torch.log_softmax(q_logits.to(torch.float32), dim=-1)  # [N, V]
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1).clamp_min(0.0)  # [N]


def token_nll(logits: torch.Tensor, targets: Sequence[int]) -> torch.Tensor:
    """Per-row negative log-likelihood ``[N]`` of ``targets`` (length N) under ``logits [N, V]``."""
    log_p = torch.log_softmax(logits.to(torch.float32), dim=-1)  # [N, V]
    index = torch.tensor(list(targets), dtype=torch.long, device=logits.device)[:, None]  # [N, 1]
    return -log_p.gather(1, index)[:, 0]  # [N]


def agreement(a: Sequence[str], b: Sequence[str]) -> float:
    """Share of positions where two modes' normalised predictions are identical (nan for no examples)."""
    assert len(a) == len(b), (len(a), len(b))
    if not a:
        return float("nan")
    return sum(normalize_answer(x) == normalize_answer(y) for x, y in zip(a, b)) / len(a)
