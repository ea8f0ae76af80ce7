"""A seeded synthetic RAG task: facts about invented entities, questions answered by copying one passage's span.

Contract:

* :func:`make_task` returns train/test examples in the collator format ``{"blocks": [{"id", "text"}],
  "question", "answer", "gold_id"}``. Every example holds one *gold* passage (the only one about the asked entity)
  and ``min_distractors..max_distractors`` distractor passages (at least one of the gold's kind, so matching the
  entity, not the kind, is what answers), in random order. The answer is a span copied verbatim from the gold
  passage. Facts (city, number, year, ...) are drawn afresh for every passage, so nothing can be memorised: the
  model has to read the context. Same config -> same examples, byte for byte.
* :func:`make_corpus` returns a fixed retrieval corpus (unique entities) with the questions each passage answers.
* :func:`task_tokenizer` builds the closed-vocabulary word-level tokenizer of the task (every entity, city and
  number is one token, exact text round trip for task text). It is deterministic and independent of the seed.
* :func:`task_prompt_config` is the prompt template the task is rendered with (no instruction, BOS prefix block).

Nothing is generated at import time.
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from block_attention.core.checks import is_int
from block_attention.core.errors import ConfigError
from block_attention.core.prompt import PromptConfig

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z")
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("k", "l", "m", "n", "r", "s", "th", "x")
_POOL_SEED = 20250122  # fixes the name pools (and so the tokenizer) independently of the task seed
N_NAMES = 120
N_CITIES = 80
JOBS = ("baker", "sailor", "weaver", "miner", "painter", "farmer", "potter", "mason", "tailor", "glassmaker",
        "clockmaker", "bookbinder", "fisher", "brewer", "chemist", "surveyor", "printer", "carpenter", "smith",
        "healer")
PRODUCTS = ("lamps", "ropes", "bells", "clocks", "boots", "kettles", "barrels", "sails", "maps", "candles",
            "wagons", "mirrors", "buttons", "violins", "compasses", "saddles", "ladders", "blankets", "paper",
            "needles")
YEARS = tuple(str(y) for y in range(1800, 1900))
LENGTHS = tuple(str(n) for n in range(100, 1000, 25))
HEIGHTS = tuple(str(n) for n in range(1000, 5000, 100))

# kind -> (passage template, [(question template, answer template), ...]); {name} is the entity. Every fact is
# its own sentence naming the entity, with the value three words after the name, and every question ends with the
# name: the asked entity and the answer always sit at the same distances, which a tiny model learns in minutes.
KINDS: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
    "river": ("The river {name} flows through {city}. The river {name} runs for {length} km.", (
        ("Which city lies on the river {name}?", "{city}"),
        ("What length has the river {name}?", "{length} km"),
    )),
    "mountain": ("Mount {name} rises to {height} m. Mount {name} stands above {city}.", (
        ("How high is Mount {name}?", "{height} m"),
        ("Which town lies below Mount {name}?", "{city}"),
    )),
    "person": ("Doctor {name} came from {city}. Doctor {name} died in {year}.", (
        ("Which city was home to Doctor {name}?", "{city}"),
        ("Which year saw the death of Doctor {name}?", "{year}"),
    )),
    "company": ("The firm {name} sits in {city}. The firm {name} produces fine {product}.", (
        ("Which city is home to the firm {name}?", "{city}"),
        ("What goods come from the firm {name}?", "{product}"),
    )),
}

# How an entity is named in corpus titles.
TITLES = {"river": "the river {name}", "mountain": "Mount {name}", "person": "Doctor {name}",
          "company": "the firm {name}"}

# One token per word (with its leading space), per number, per punctuation mark, per other whitespace char.
TOKEN_PATTERN = r" ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]|\s"
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")


@dataclass(frozen=True)
class SyntheticConfig:
    """Size and shape of a synthetic task. ``min/max_distractors``: distractor passages per example."""

    n_train: int = 20000
    n_test: int = 200
    min_distractors: int = 3
    max_distractors: int = 5
    seed: int = 0
    history_questions: int = 0  # up to this many earlier Q/A turns (uniform 0..n) about the example's passages

    def __post_init__(self) -> None:
        for name in ("n_train", "n_test", "min_distractors", "max_distractors", "seed", "history_questions"):
            value = getattr(self, name)
            if not is_int(value) or value < 0:
                raise ConfigError(f"SyntheticConfig.{name} must be a non-negative int, got {value!r}.")
        if self.max_distractors < self.min_distractors or self.max_distractors < 1:
            raise ConfigError(
                "SyntheticConfig needs min_distractors <= max_distractors (and max_distractors >= 1); got "
                f"{self.min_distractors}..{self.max_distractors}. Raise max_distractors or lower min_distractors."
            )
        if self.max_distractors + 1 > N_NAMES:
            raise ConfigError(f"max_distractors must be below {N_NAMES}; got {self.max_distractors}.")


@dataclass(frozen=True)
class SyntheticTask:
    config: SyntheticConfig
    train: tuple[dict[str, Any], ...]
    test: tuple[dict[str, Any], ...]


@functools.lru_cache(maxsize=1)
def _pools() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(entity names, city names): disjoint, deterministic, pronounceable."""
    rng = random.Random(_POOL_SEED)
    seen: set[str] = set()
    names: list[str] = []
    cities: list[str] = []
    while len(names) < N_NAMES:
        word = (rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) + rng.choice(_ONSETS)
                + rng.choice(_VOWELS) + rng.choice(_CODAS)).capitalize()
        if word not in seen:
            seen.add(word)
            names.append(word)
    while len(cities) < N_CITIES:
        word = (rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) + rng.choice(_ONSETS)
                + rng.choice(_VOWELS) + rng.choice(_ONSETS) + "a").capitalize()
        if word not in seen:
            seen.add(word)
            cities.append(word)
    return tuple(names), tuple(cities)


def _facts(rng: random.Random, kind: str, name: str) -> dict[str, str]:
    _, cities = _pools()
    facts = {"name": name, "city": rng.choice(cities)}
    if kind == "river":
        facts["length"] = rng.choice(LENGTHS)
    elif kind == "mountain":
        facts["height"] = rng.choice(HEIGHTS)
    elif kind == "person":
        facts.update(year=rng.choice(YEARS), job=rng.choice(JOBS))
    else:
        facts.update(year=rng.choice(YEARS), product=rng.choice(PRODUCTS))
    return facts


def passage_kind(text: str) -> str:
    """The kind of entity a task passage is about (from its fixed opening words)."""
    for kind, (template, _) in KINDS.items():
        if text.startswith(template.split("{name}")[0]):
            return kind
    raise ValueError(f"Not a synthetic task passage: {text[:40]!r}.")


def kind_guess_rate(examples: Sequence[dict[str, Any]]) -> float:
    """Expected exact match of answering with the asked fact of a random passage of the asked kind: what a model
    that recognises the kind of entity but not the entity itself scores (the floor a real look-up must beat)."""
    if not examples:
        return 0.0
    return sum(1 / sum(passage_kind(b["text"]) == ex["kind"] for b in ex["blocks"]) for ex in examples) / len(examples)


def _passage(kind: str, facts: dict[str, str]) -> str:
    return KINDS[kind][0].format(**facts)


def _example(rng: random.Random, config: SyntheticConfig, index: int, split: str) -> dict[str, Any]:
    names, _ = _pools()
    n_distractors = rng.randint(config.min_distractors, config.max_distractors)
    entities = rng.sample(names, n_distractors + 1)
    kinds = list(KINDS)
    gold_kind = rng.choice(kinds)
    # One distractor of the gold's kind, the others of any kind.
    distractor_kinds = [gold_kind] + [rng.choice(kinds) for _ in range(n_distractors - 1)]
    passages = [(gold_kind, _facts(rng, gold_kind, entities[0]))]
    passages += [(k, _facts(rng, k, e)) for k, e in zip(distractor_kinds, entities[1:])]
    question_t, answer_t = rng.choice(KINDS[gold_kind][1])
    order = list(range(len(passages)))
    rng.shuffle(order)
    blocks = [{"id": f"{split}{index}-p{i}", "text": _passage(*passages[i])} for i in order]
    gold = passages[0][1]
    example: dict[str, Any] = {
        "blocks": blocks,
        "question": question_t.format(**gold),
        "answer": answer_t.format(**gold),
        "gold_id": f"{split}{index}-p0",
        "kind": gold_kind,
    }
    if config.history_questions:
        # Earlier turns: distinct questions about this example's passages (never the final one), so a model trained
        # on every answer in the final block (label_scope="final") gets several look-ups per example.
        pool = [(q.format(**facts), a.format(**facts)) for kind, facts in passages
                for q, a in KINDS[kind][1]]
        pool = [qa for qa in pool if qa[0] != example["question"]]
        turns = rng.sample(pool, min(len(pool), rng.randint(0, config.history_questions)))
        example["history"] = [m for q, a in turns for m in ({"role": "user", "content": q},
                                                             {"role": "assistant", "content": a})]
    return example


def make_task(config: SyntheticConfig | None = None) -> SyntheticTask:
    """Train and test examples of the task (independent random streams derived from ``config.seed``)."""
    config = config or SyntheticConfig()
    train_rng = random.Random(f"train-{config.seed}")
    test_rng = random.Random(f"test-{config.seed}")
    train = tuple(_example(train_rng, config, i, "train") for i in range(config.n_train))
    test = tuple(_example(test_rng, config, i, "test") for i in range(config.n_test))
    return SyntheticTask(config, train, test)


def make_corpus(n_passages: int = 60, seed: int = 0) -> list[dict[str, Any]]:
    """A retrieval corpus: ``n_passages`` passages about distinct entities, each with the questions it answers.

    Records are ``{"id", "title", "text", "kind", "questions": [{"question", "answer"}]}``; ``title`` is the
    entity's display name (retrievers may use it; the task prompt renders untitled passages).
    """
    names, _ = _pools()
    if not 1 <= n_passages <= len(names):
        raise ConfigError(f"n_passages must be in 1..{len(names)}, got {n_passages}; the name pool is that large.")
    rng = random.Random(f"corpus-{seed}")
    kinds = list(KINDS)
    out = []
    for i, name in enumerate(rng.sample(names, n_passages)):
        kind = kinds[i % len(kinds)]
        facts = _facts(rng, kind, name)
        title = TITLES[kind].format(**facts)
        title = title[0].upper() + title[1:]
        out.append({
            "id": f"synthetic-{i:03d}",
            "title": title,
            "text": _passage(kind, facts),
            "kind": kind,
            "questions": [{"question": q.format(**facts), "answer": a.format(**facts)} for q, a in KINDS[kind][1]],
        })
    return out


def task_prompt_config() -> PromptConfig:
    """How task prompts are rendered: ``<s>`` prefix block, ``- text`` doc blocks, ``Question: ...`` final block."""
    return PromptConfig(instruction=None, use_chat_template=False, add_bos=True)


def _vocabulary() -> list[str]:
    """Every token the task's text can contain, in a fixed order."""
    names, cities = _pools()
    pattern, placeholder = re.compile(TOKEN_PATTERN), re.compile(r"\{[a-z]+\}")
    cfg = task_prompt_config()
    scaffolding = [cfg.untitled_doc_template, cfg.doc_template, cfg.plain_final_template, cfg.question_template,
                   "User: \nAssistant: "]  # + how PromptBuilder renders plain chat history
    for template, qa in KINDS.values():
        scaffolding += [template, *(part for pair in qa for part in pair)]
    pieces: dict[str, None] = {}
    for text in scaffolding:  # template words may start a block or follow a space: keep both variants
        for piece in pattern.findall(placeholder.sub("", text)):
            word = piece.strip()
            for variant in ((word, " " + word) if word else (piece,)):
                pieces[variant] = None
    for pool in (names, cities, JOBS, PRODUCTS, YEARS, LENGTHS, HEIGHTS):
        pieces.update(dict.fromkeys(" " + word for word in pool))  # pool words always follow a space
    return sorted(pieces)


@functools.lru_cache(maxsize=1)
def task_tokenizer() -> Any:
    """The task's word-level ``PreTrainedTokenizerFast`` (pad ``<pad>``, BOS ``<s>``, EOS ``</s>``, ``<unk>``)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for piece in _vocabulary():
        vocab.setdefault(piece, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(TOKEN_PATTERN), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")
    return fast
