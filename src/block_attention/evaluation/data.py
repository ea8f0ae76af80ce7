"""Loading RAG evaluation examples: this project's JSONL, or the ``ctxs`` JSON of public RAG benchmarks.

* JSONL (one object a line): ``{"question": str, "answers": [str, ...], "blocks": [{"text", "title"?, "id"?}]}``.
* JSON (a list of objects, or an object with a ``"data"`` list): ``{"question", "answers", "ctxs": [{"text",
  "title"?, "id"?}]}`` as in DPR / FiD / CacheBlend data (e.g. ``../shared/data/musique_s.json``).

Either key (``blocks`` or ``ctxs``) is accepted in either file; ``answers`` may also be one string. The format is
chosen by content (a JSON document or one object per line), not by file name. A malformed file raises
:class:`DataFormatError` naming the file, the record and what to fix; nothing is silently skipped.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from block_attention.core.blocks import Block
from block_attention.core.errors import DataFormatError


@dataclass(frozen=True)
class EvalExample:
    """One question with its gold answers and retrieved passages, in prompt order."""

    id: str
    question: str
    answers: tuple[str, ...]
    blocks: tuple[Block, ...]


def _fail(path: Path, where: str, problem: str) -> DataFormatError:
    return DataFormatError(
        f"{path}: {where}: {problem}. Each record needs a non-empty 'question', 'answers' (a list of strings) and "
        "'blocks' or 'ctxs' (a list of {'text', 'title'?, 'id'?} with non-empty text)."
    )


def _example(record: Any, path: Path, where: str, index: int) -> EvalExample:
    if not isinstance(record, Mapping):
        raise _fail(path, where, f"expected a JSON object, got {type(record).__name__}")
    question = record.get("question")
    if not isinstance(question, str) or not question.strip():
        raise _fail(path, where, "'question' is missing or not a non-empty string")
    answers = record.get("answers", record.get("answer"))
    if isinstance(answers, str):
        answers = [answers]
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
        raise _fail(path, where, "'answers' is missing or not a non-empty list of strings")
    passages = record.get("blocks", record.get("ctxs"))
    if not isinstance(passages, list) or not passages:
        raise _fail(path, where, "'blocks'/'ctxs' is missing or empty")
    blocks: list[Block] = []
    for j, p in enumerate(passages):
        if not isinstance(p, Mapping) or not isinstance(p.get("text"), str) or not p["text"].strip():
            raise _fail(path, f"{where}, passage {j}", "expected an object with a non-empty string 'text'")
        title = p.get("title")
        if title is not None and not isinstance(title, str):
            raise _fail(path, f"{where}, passage {j}", "'title' must be a string")
        doc_id = p.get("id")
        blocks.append(Block(p["text"], doc_id=str(doc_id) if doc_id not in (None, "") else None,
                            title=title or None))
    ex_id = record.get("id", record.get("_id", index))
    return EvalExample(str(ex_id), question, tuple(answers), tuple(blocks))


def load_examples(path: str | Path, limit: int | None = None) -> list[EvalExample]:
    """Examples of ``path`` in file order (the first ``limit`` when given).

    ``facts:N`` or ``facts:N:SEED`` (not a file) generates ``N`` held-out invented-fact examples
    (:func:`block_attention.finetune.facts.make_examples`, test split: wording and names never used in training).
    """
    if limit is not None and limit < 1:
        raise DataFormatError(f"limit must be >= 1, got {limit}.")
    if isinstance(path, str) and path.startswith("facts:"):
        return generated_facts(path)[:limit]
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataFormatError(f"Evaluation data file {path} does not exist; pass --data with an existing file.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataFormatError(f"Could not read evaluation data file {path} ({exc}); pass a UTF-8 JSON/JSONL file.") from None
    stripped = text.lstrip()
    if not stripped:
        raise DataFormatError(f"Evaluation data file {path} is empty; it needs at least one example.")
    records: list[tuple[str, Any]] = []
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = None
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append((f"line {lineno}", json.loads(line)))
            except json.JSONDecodeError as exc:
                raise DataFormatError(
                    f"{path}: line {lineno} is not valid JSON ({exc.msg}). Use one JSON object per line (JSONL) or "
                    "one JSON list of objects."
                ) from None
    if whole is not None:
        if isinstance(whole, Mapping) and isinstance(whole.get("data"), list):
            whole = whole["data"]
        if isinstance(whole, Mapping):
            whole = [whole]  # a JSONL file of one line
        if not isinstance(whole, list):
            raise DataFormatError(f"{path}: expected a JSON list of examples (or JSONL), got {type(whole).__name__}.")
        records = [(f"record {i}", r) for i, r in enumerate(whole)]
    if not records:
        raise DataFormatError(f"Evaluation data file {path} holds no examples.")
    if limit is not None:
        records = records[:limit]
    return [_example(r, path, where, i) for i, (where, r) in enumerate(records)]


def generated_facts(spec: str) -> list[EvalExample]:
    """``facts:N[:SEED]`` -> ``N`` held-out invented-fact examples (test split)."""
    from ..finetune.facts import make_examples

    parts = spec.split(":")
    if len(parts) not in (2, 3) or not all(p.isdigit() for p in parts[1:]) or int(parts[1]) < 1:
        raise DataFormatError(f"Generated data is named facts:N or facts:N:SEED (e.g. facts:100:1), got {spec!r}.")
    records = make_examples(int(parts[1]), split="test", seed=int(parts[2]) if len(parts) == 3 else 0)
    return [_example(r, Path(spec), f"example {i}", i) for i, r in enumerate(records)]
