"""Invented-fact reading comprehension in natural English: training data for block fine-tuning a real model, and a
held-out evaluation set the model cannot answer from memory.

Contract:

* Every example is about invented entities (people, towns, companies, ships, rivers, inventions) whose attributes
  (a city, a year, a number, a name, a product) are drawn afresh, so the answer is only in the passages. An
  example has one *gold* passage (the only one about the asked entity), ``n_distractors`` passages about other
  entities, most of them of the same kind (so reading the entity's name, not the kind, answers), in random order.
  ``value`` is the asked fact (a short span of the gold passage; ``answers == [value]``, what evaluation scores)
  and ``answer`` (the training target) is the gold passage's sentence that states it, verbatim: the reader
  learns to answer with the evidence sentence, which also serves questions that ask for more than one value.
  Questions name the entity, sometimes with one more of its facts as a cue ("..., founded in 1803, ...").
* Passages are encyclopedia-style paragraphs: each fact is written with one of several paraphrase templates, in a
  random order, with a title (the entity's name) or without. Questions are paraphrased too.
* ``split="train"`` and ``split="test"`` use *disjoint* paraphrase templates for passages and questions and
  disjoint name pools, so the test set measures reading, not memorised wording (:func:`make_examples`).
* Examples are dicts in the fine-tuning collator format ``{"blocks": [{"id", "title", "text"}], "question",
  "answer", "answers", "gold_id", "attribute", "entity", "subjects"}`` (``subjects``: the entity each passage is
  about, in block order); the evaluation loader accepts them too.
  :func:`edited` returns the same example with the gold fact's value replaced (and ``value``, ``answers`` and
  ``answer`` with it): a model that reads must change its answer.
* Same arguments -> the same examples, byte for byte. Nothing is generated at import time.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from block_attention.core.errors import ConfigError

Split = Literal["train", "test"]

_ONSET = ("b", "br", "c", "d", "dr", "f", "g", "gr", "h", "k", "l", "m", "n", "p", "r", "s", "st", "t", "tr", "v",
          "w", "z", "sh", "th", "ch", "j")
_VOWEL = ("a", "e", "i", "o", "u", "ai", "ea", "ou", "ia", "y")
_CODA = ("", "", "n", "r", "l", "s", "m", "th", "nd", "ck", "x", "rd", "sk", "v")
PROFESSIONS = ("painter", "engineer", "chemist", "architect", "composer", "botanist", "surgeon", "astronomer",
               "sculptor", "novelist", "cartographer", "geologist", "violinist", "photographer", "mathematician",
               "shipwright", "economist", "poet", "inventor", "linguist")
PRODUCTS = ("bicycles", "telescopes", "sewing machines", "typewriters", "pianos", "cameras", "compasses", "clocks",
            "radios", "lamps", "glassware", "rope", "paper", "bells", "ceramic tiles", "steam engines", "umbrellas",
            "saddles", "violins", "maps")
COLOURS = ("red", "blue", "green", "yellow", "white", "black", "orange", "purple", "grey", "brown")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")


def _name(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(_ONSET) + rng.choice(_VOWEL) + rng.choice(_CODA) for _ in range(syllables)).capitalize()


@dataclass(frozen=True)
class _Pools:
    people: tuple[str, ...]
    places: tuple[str, ...]


def _pools(split: Split) -> _Pools:
    """Disjoint name pools per split (a fixed seed each; test names never occur in training)."""
    rng = random.Random(7001 if split == "train" else 7002)
    seen: set[str] = set()
    other = _pools_raw(7002 if split == "train" else 7001)

    def fresh(make) -> str:
        while True:
            value = make()
            if value not in seen and value not in other:
                seen.add(value)
                return value

    people = tuple(fresh(lambda: f"{_name(rng, rng.choice((1, 2)))} {_name(rng, rng.choice((2, 3)))}")
                   for _ in range(400))
    places = tuple(fresh(lambda: _name(rng, rng.choice((2, 3)))) for _ in range(300))
    return _Pools(people, places)


def _pools_raw(seed: int) -> frozenset[str]:
    rng = random.Random(seed)
    out = set()
    for _ in range(400):
        out.add(f"{_name(rng, rng.choice((1, 2)))} {_name(rng, rng.choice((2, 3)))}")
    for _ in range(300):
        out.add(_name(rng, rng.choice((2, 3))))
    return frozenset(out)


# kind -> attribute -> (passage templates, question templates). Templates are split between train and test by
# index parity (even: train, odd: test), so both splits cover every attribute with different wording.
# {e} is the entity, {v} the value (the answer span).
KINDS: dict[str, dict[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {
    "person": {
        "birthplace": (("{e} was born in {v}.", "{e} was a native of {v}.", "Born in {v}, {e} grew up by the sea.",
                        "{e} came into the world in the town of {v}."),
                       ("Where was {e} born?", "In which town was {e} born?", "What is the birthplace of {e}?",
                        "Which town did {e} come from?")),
        "year": (("{e} was born in the year {v}.", "{e}'s birth year was {v}.",
                  "In {v}, {e} was born to a family of farmers.", "The records give {v} as the year {e} was born."),
                 ("In what year was {e} born?", "When was {e} born?", "What year was {e} born in?",
                  "Which year saw the birth of {e}?")),
        "profession": (("{e} worked as a {v} for most of their life.", "By profession, {e} was a {v}.",
                        "{e} became a well-known {v}.", "{e} earned a living as a {v}."),
                       ("What was the profession of {e}?", "What did {e} work as?", "What was {e}'s job?",
                        "Which profession did {e} follow?")),
        "teacher": (("{e} studied under {v}.", "{e}'s teacher was {v}.", "As a student, {e} learned from {v}.",
                     "{e} was trained by {v}."),
                    ("Who taught {e}?", "Under whom did {e} study?", "Who was the teacher of {e}?",
                     "Who trained {e}?")),
    },
    "town": {
        "founded": (("{e} was founded in {v}.", "The town of {e} dates from {v}.", "Settlers founded {e} in {v}.",
                     "{e} was established in the year {v}."),
                    ("When was {e} founded?", "In what year was {e} established?", "What year was {e} founded?",
                     "In which year did settlers found {e}?")),
        "population": (("{e} has a population of {v}.", "About {v} people live in {e}.",
                        "The population of {e} is {v}.", "{e} is home to {v} residents."),
                       ("What is the population of {e}?", "How many people live in {e}?",
                        "How many residents does {e} have?", "How large is the population of {e}?")),
        "river": (("{e} lies on the river {v}.", "The river {v} flows through {e}.",
                   "{e} was built on the banks of the {v}.", "The {v} river runs past {e}."),
                  ("Which river flows through {e}?", "On which river does {e} lie?", "What river runs past {e}?",
                   "On the banks of which river was {e} built?")),
        "mayor": (("The mayor of {e} is {v}.", "{v} serves as mayor of {e}.", "{e} elected {v} as its mayor.",
                   "{e} is governed by its mayor, {v}."),
                  ("Who is the mayor of {e}?", "Who serves as mayor of {e}?", "Who governs {e} as mayor?",
                   "Whom did {e} elect as mayor?")),
    },
    "company": {
        "founder": (("{e} was founded by {v}.", "{v} started {e}.", "The company {e} was set up by {v}.",
                     "{e} owes its existence to its founder, {v}."),
                    ("Who founded {e}?", "Who started the company {e}?", "Who is the founder of {e}?",
                     "By whom was {e} set up?")),
        "product": (("{e} makes {v}.", "{e} is best known for its {v}.", "The main products of {e} are {v}.",
                     "{e} manufactures {v}."),
                    ("What does {e} make?", "What is {e} known for making?", "What are the products of {e}?",
                     "What does the company {e} manufacture?")),
        "hq": (("{e} has its headquarters in {v}.", "{e} is based in {v}.", "The head office of {e} is in {v}.",
                "{e} runs its business from {v}."),
               ("Where is {e} based?", "Where are the headquarters of {e}?", "In which city is {e} based?",
                "Where is the head office of {e}?")),
        "employees": (("{e} employs {v} people.", "{e} has {v} employees.", "The staff of {e} numbers {v}.",
                       "Some {v} workers are employed by {e}."),
                      ("How many people does {e} employ?", "How many employees does {e} have?",
                       "How large is the staff of {e}?", "How many workers does {e} employ?")),
    },
    "ship": {
        "launched": (("The ship {e} was launched in {v}.", "{e} first sailed in {v}.", "{e} took to the water in {v}.",
                      "Shipbuilders launched {e} in {v}."),
                     ("When was the ship {e} launched?", "In what year did {e} first sail?",
                      "What year was {e} launched?", "When did {e} take to the water?")),
        "captain": (("The captain of {e} was {v}.", "{v} commanded the ship {e}.", "{e} sailed under captain {v}.",
                     "{e} was captained by {v}."),
                    ("Who was the captain of {e}?", "Who commanded the ship {e}?", "Under which captain did {e} sail?",
                     "Who captained {e}?")),
        "port": (("{e} sailed from its home port of {v}.", "The home port of {e} was {v}.",
                  "{e} was registered in {v}.", "{e} returned each winter to {v}, its home port."),
                 ("What was the home port of {e}?", "Where was {e} registered?", "From which port did {e} sail?",
                  "Which port was home to {e}?")),
        "colour": (("The hull of {e} was painted {v}.", "{e} had a {v} hull.", "Sailors knew {e} by its {v} hull.",
                    "{e} was painted {v} from bow to stern."),
                   ("What colour was the hull of {e}?", "What colour was {e} painted?", "What colour was {e}'s hull?",
                    "Which colour was the hull of {e}?")),
    },
    "invention": {
        "inventor": (("The {e} was invented by {v}.", "{v} invented the {e}.", "The {e} is the work of {v}.",
                      "{v} designed the first {e}."),
                     ("Who invented the {e}?", "Who designed the first {e}?", "Whose work is the {e}?",
                      "By whom was the {e} invented?")),
        "year": (("The {e} was patented in {v}.", "The first {e} appeared in {v}.", "In {v} the {e} was patented.",
                  "The patent for the {e} dates from {v}."),
                 ("When was the {e} patented?", "In what year did the first {e} appear?",
                  "What year was the {e} patented?", "When does the patent for the {e} date from?")),
        "city": (("The {e} was first built in {v}.", "The first {e} was made in {v}.", "{v} saw the first {e} built.",
                  "Workshops in {v} produced the first {e}."),
                 ("Where was the first {e} built?", "In which city was the {e} first made?",
                  "Where was the {e} first produced?", "Which city saw the first {e} built?")),
    },
}
_FILLER = ("It is often mentioned in local histories.", "Little else is recorded about its early years.",
           "Visitors still ask about it today.", "Several books have been written on the subject.",
           "The archives hold many letters from this period.", "Its story is told in the regional museum.",
           "Historians disagree about some of the details.", "A small plaque marks the spot.")


def _value(kind: str, attr: str, rng: random.Random, pools: _Pools) -> str:
    if attr in ("birthplace", "hq", "port", "city"):
        return rng.choice(pools.places)
    if attr in ("year", "founded", "launched"):
        year = str(rng.randrange(1700, 1990))
        return _date(rng, year) if rng.random() < 0.3 else year
    if attr == "profession":
        return rng.choice(PROFESSIONS)
    if attr in ("teacher", "mayor", "founder", "captain", "inventor"):
        return rng.choice(pools.people)
    if attr == "population":
        return f"{rng.randrange(2, 90)},{rng.randrange(0, 1000):03d}"
    if attr == "employees":
        return str(rng.randrange(20, 5000))
    if attr == "river":
        return rng.choice(pools.places)
    if attr == "product":
        return rng.choice(PRODUCTS)
    if attr == "colour":
        return rng.choice(COLOURS)
    raise AssertionError(f"no value rule for {kind}.{attr}")


def _entity(kind: str, rng: random.Random, pools: _Pools) -> str:
    if kind == "person":
        return rng.choice(pools.people)
    if kind == "town":
        return rng.choice(pools.places)
    if kind == "company":
        return f"{rng.choice(pools.places)} {rng.choice(('Works', 'and Sons', 'Company', 'Industries', 'Brothers'))}"
    if kind == "ship":
        return f"{rng.choice(('SS', 'HMS', 'MV'))} {rng.choice(pools.places)}"
    return f"{rng.choice(pools.places).lower()} {rng.choice(('lamp', 'engine', 'valve', 'loom', 'press', 'pump'))}"


def _templates(options: Sequence[str], split: Split) -> Sequence[str]:
    return options[0::2] if split == "train" else options[1::2]


# attribute -> a clause that identifies an entity by that fact ("{v}" is the value), for questions that name the
# entity with one more cue, as real questions often do
QUALIFIERS: dict[str, str] = {
    "birthplace": "who was born in {v}", "year": "from {v}", "profession": "the {v}",
    "teacher": "who studied under {v}", "founded": "founded in {v}", "population": "with {v} people",
    "river": "on the river {v}", "mayor": "whose mayor is {v}", "founder": "founded by {v}",
    "product": "the maker of {v}", "hq": "based in {v}", "employees": "with {v} employees",
    "launched": "launched in {v}", "captain": "commanded by {v}", "port": "of {v}", "colour": "with the {v} hull",
    "inventor": "invented by {v}", "city": "first built in {v}",
}


def _passage(kind: str, entity: str, facts: dict[str, str], rng: random.Random,
             split: Split) -> tuple[str, dict[str, str]]:
    """The passage text and, per attribute, the sentence that states it."""
    stated = {attr: rng.choice(_templates(KINDS[kind][attr][0], split)).format(e=entity, v=value)
              for attr, value in facts.items()}
    sentences = list(stated.values())
    rng.shuffle(sentences)
    for _ in range(rng.randrange(0, 3)):
        sentences.insert(rng.randrange(1, len(sentences) + 1), rng.choice(_FILLER))
    return " ".join(sentences), stated


def _date(rng: random.Random, year: str) -> str:
    return f"{rng.randrange(1, 29)} {rng.choice(MONTHS)} {year}"


def make_examples(n: int, *, split: Split = "train", seed: int = 0, min_passages: int = 2,
                  max_passages: int = 5) -> list[dict[str, Any]]:
    """``n`` examples (see the module docstring); ``split`` picks the wording and name pools."""
    if split not in ("train", "test"):
        raise ConfigError(f"split must be 'train' or 'test', got {split!r}.")
    if not (isinstance(n, int) and n >= 0):
        raise ConfigError(f"n must be an int >= 0, got {n!r}.")
    if not (1 <= min_passages <= max_passages):
        raise ConfigError(f"Need 1 <= min_passages <= max_passages, got {min_passages}, {max_passages}.")
    pools = _pools(split)
    rng = random.Random(f"facts:{split}:{seed}")
    kinds = sorted(KINDS)
    out = []
    for i in range(n):
        n_passages = rng.randint(min_passages, max_passages)
        gold_kind = rng.choice(kinds)
        entities: list[tuple[str, str]] = []
        names: set[str] = set()
        while len(entities) < n_passages:
            kind = gold_kind if (not entities or rng.random() < 0.6) else rng.choice(kinds)
            entity = _entity(kind, rng, pools)
            if entity not in names:
                names.add(entity)
                entities.append((kind, entity))
        blocks, gold = [], None
        for j, (kind, entity) in enumerate(entities):
            attrs = list(KINDS[kind])
            rng.shuffle(attrs)
            facts = {a: _value(kind, a, rng, pools) for a in attrs[:rng.randint(2, len(attrs))]}
            text, stated = _passage(kind, entity, facts, rng, split)
            title = entity if rng.random() < 0.7 else ""
            blocks.append({"id": f"{split}-{seed}-{i}-{j}", "title": title, "text": text, "_facts": facts,
                           "_kind": kind, "_entity": entity, "_stated": stated})
            if j == 0:
                attr = rng.choice(list(facts))
                gold = (j, attr)
        assert gold is not None
        g_kind, g_entity = blocks[0]["_kind"], blocks[0]["_entity"]
        template = rng.choice(_templates(KINDS[g_kind][gold[1]][1], split))
        named = g_entity
        others = [a for a in blocks[0]["_facts"] if a != gold[1]]
        if others and rng.random() < 0.4:  # name the entity with one more of its facts
            clause = QUALIFIERS[rng.choice(others)]
            cue = clause.format(v=blocks[0]["_facts"][[a for a in others if QUALIFIERS[a] == clause][0]])
            named = f"{g_entity}, {cue}" + ("" if template.endswith("{e}?") else ",")
        question = template.format(e=named)
        value = blocks[0]["_facts"][gold[1]]
        answer = blocks[0]["_stated"][gold[1]]  # the sentence of the passage that states it, verbatim
        gold_id = blocks[0]["id"]
        order = list(range(len(blocks)))
        rng.shuffle(order)
        out.append({
            "blocks": [{"id": blocks[k]["id"], "title": blocks[k]["title"], "text": blocks[k]["text"]} for k in order],
            "question": question, "answer": answer, "answers": [value], "value": value, "gold_id": gold_id,
            "attribute": f"{g_kind}.{gold[1]}", "entity": g_entity,
            "subjects": [blocks[k]["_entity"] for k in order],
        })
    return out


def edited(example: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    """The example with the gold passage's answer replaced by another value of the same type (answer updated)."""
    rng = random.Random(f"edit:{seed}:{example['gold_id']}")
    kind, attr = example["attribute"].split(".")
    pools = _pools("test")
    old = example["value"]
    new = old
    while new == old or new in " ".join(b["text"] for b in example["blocks"]) or old in new or new in old:
        new = _value(kind, attr, rng, pools)
    blocks = [dict(b, text=b["text"].replace(old, new)) if b["id"] == example["gold_id"] else dict(b)
              for b in example["blocks"]]
    return dict(example, blocks=blocks, answer=example["answer"].replace(old, new), answers=[new], value=new)
