"""Corpus loading: turn a folder (or one file) of text into :class:`Document` items.

Contract:

* ``.txt`` and ``.md`` files are one document each. A Markdown file's title is its first heading (that heading
  line is removed from the body); a ``.txt`` file's title is its file stem, as is the title of a Markdown file
  without a heading. The document id *and* source of a file is its path relative to ``root`` (POSIX
  separators), e.g. ``"guides/setup.md"``.
* ``.jsonl`` files hold one JSON object per line with ``text`` (required), ``title`` and ``id`` (optional).
  ``source`` is the file's relative path; the doc id is the record's ``id`` when given, else
  ``"<relative path>:<line number>"`` (which moves when lines are inserted above: give ids for stable keys).
* Folders are walked recursively in sorted order; hidden files and folders (name starting with ``.``) and other
  extensions are skipped; empty documents are skipped. Files are read as UTF-8 (a BOM is accepted).
* A missing path raises :class:`CorpusNotFoundError`; a corpus with no text raises :class:`EmptyCorpusError`;
  unreadable content or duplicate doc ids raise :class:`CorpusFormatError`.
"""

from __future__ import annotations

import os

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from block_attention.core.blocks import check_text
from block_attention.core.checks import is_int
from block_attention.core.errors import InvalidRequestError
from block_attention.core.errors import CorpusFormatError, CorpusNotFoundError, EmptyCorpusError

SUPPORTED_EXTENSIONS: tuple[str, ...] = (".txt", ".md", ".jsonl")

_HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+(?P<title>.+?)(?:[ \t]+#+)?[ \t]*$")


@dataclass(frozen=True)
class Document:
    """One source document before chunking.

    ``doc_id`` identifies the document (re-adding a document with the same id replaces its passages);
    ``source`` says where it came from (a file path relative to the corpus root), or ``None`` for documents
    built in memory.
    """

    doc_id: str
    title: str
    text: str
    source: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.doc_id, str) or not self.doc_id.strip():
            raise InvalidRequestError(
                f"Document doc_id must be a non-empty str, got {self.doc_id!r}; give every document an id."
            )
        if not isinstance(self.title, str):
            raise InvalidRequestError(
                f"Document {self.doc_id!r} title must be a str, got {type(self.title).__name__}; pass '' for no title."
            )
        if not isinstance(self.text, str):
            raise InvalidRequestError(
                f"Document {self.doc_id!r} text must be a str, got {type(self.text).__name__}; "
                "convert it to text first."
            )
        for what, value in (("doc_id", self.doc_id), ("title", self.title), ("text", self.text)):
            check_text(value, f"Document {what}")
        if self.source is not None and (not isinstance(self.source, str) or not self.source):
            raise InvalidRequestError(
                f"Document {self.doc_id!r} source must be a non-empty str or None, got {self.source!r}."
            )


def load_corpus(path: str | Path, *, root: str | Path | None = None) -> list[Document]:
    """Load every supported document under ``path`` (a folder, walked recursively, or a single file).

    ``root`` is the folder that sources and file doc ids are relative to; it defaults to ``path`` for a folder
    and to the file's parent for a single file. Pass the corpus folder as ``root`` when re-loading one nested
    file so its id matches the one it got from the folder load.
    """
    base = Path(path).expanduser()
    if not base.exists():
        raise CorpusNotFoundError(f"Corpus path {str(base)!r} does not exist; pass an existing folder or file.")
    root_path = Path(root).expanduser() if root is not None else (base if base.is_dir() else base.parent)
    root_path = root_path.resolve()
    if base.is_file():
        if base.suffix.lower() not in SUPPORTED_EXTENSIONS:
            raise CorpusFormatError(
                f"File {str(base)!r} has an unsupported extension; use one of {', '.join(SUPPORTED_EXTENSIONS)}."
            )
        files = [base]
    else:
        files = list(_iter_corpus_files(base))
    documents: list[Document] = []
    for file in files:
        documents.extend(load_file(file, source=_relative_source(file, root_path)))
    if not documents:
        raise EmptyCorpusError(
            f"No documents with text were found under {str(base)!r}; add {', '.join(SUPPORTED_EXTENSIONS)} files "
            "with content to the folder."
        )
    check_unique_doc_ids(documents)
    return documents


def list_sources(path: str | Path, *, root: str | Path | None = None) -> list[str]:
    """Sources (relative paths) of every supported file under ``path``, including files without text."""
    base = Path(path).expanduser()
    if not base.exists():
        raise CorpusNotFoundError(f"Corpus path {str(base)!r} does not exist; pass an existing folder or file.")
    root_path = Path(root).expanduser() if root is not None else (base if base.is_dir() else base.parent)
    files = [base] if base.is_file() else list(_iter_corpus_files(base))
    return [_relative_source(file, root_path.resolve()) for file in files]


def load_file(file: str | Path, *, source: str | None = None) -> list[Document]:
    """Load one file (``.txt``, ``.md`` or ``.jsonl``); ``source`` defaults to the file name."""
    file = Path(file)
    source = source if source is not None else file.name
    suffix = file.suffix.lower()
    if suffix == ".jsonl":
        return _load_jsonl(file, source)
    if suffix not in (".txt", ".md"):
        raise CorpusFormatError(
            f"File {str(file)!r} has an unsupported extension; use one of {', '.join(SUPPORTED_EXTENSIONS)}."
        )
    text = _read_text(file)
    if suffix == ".md":
        title, body = split_markdown_title(text)
        title = title if title is not None else file.stem
    else:
        title, body = file.stem, text
    body = body.strip()
    if not body:
        return []
    return [Document(doc_id=source, title=title, text=body, source=source)]


def split_markdown_title(text: str) -> tuple[str | None, str]:
    """Return ``(first heading, text without that heading line)``; ``(None, text)`` when there is no heading.

    Headings inside fenced code blocks are ignored.
    """
    lines = text.splitlines()
    in_fence = False
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("```") or stripped.startswith("~~~"):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        match = _HEADING.match(line)
        if match:
            title = match.group("title").strip()
            return title, "\n".join(lines[:i] + lines[i + 1 :])
    return None, text


def check_unique_doc_ids(documents: Iterable[Document]) -> None:
    """Raise :class:`CorpusFormatError` if two documents share a doc id."""
    seen: dict[str, str | None] = {}
    for doc in documents:
        if doc.doc_id in seen:
            raise CorpusFormatError(
                f"Doc id {doc.doc_id!r} is used twice (sources {seen[doc.doc_id]!r} and {doc.source!r}); "
                "give each document a unique id."
            )
        seen[doc.doc_id] = doc.source


def _iter_corpus_files(folder: Path) -> Iterator[Path]:
    for path in sorted(folder.rglob("*")):
        rel_parts = path.relative_to(folder).parts
        if any(part.startswith(".") for part in rel_parts):
            continue
        if path.is_file() and path.suffix.lower() in SUPPORTED_EXTENSIONS:
            yield path


def _relative_source(file: Path, root: Path) -> str:
    resolved = file.resolve()
    try:
        source = resolved.relative_to(root).as_posix()
    except ValueError:
        raise CorpusFormatError(
            f"File {str(file)!r} is not inside root {str(root)!r}; pass a root folder that contains it."
        ) from None
    try:
        source.encode("utf-8")
    except UnicodeEncodeError:  # the file system gave bytes that are not UTF-8 (surrogate-escaped by Python)
        raw = os.fsencode(str(file))
        raise CorpusFormatError(
            f"File name {raw!r} is not valid UTF-8, so it cannot become a document id; rename the file (e.g. "
            f"{raw.decode('utf-8', 'replace')!r}) or move it out of the corpus folder."
        ) from None
    return source


def _read_text(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CorpusFormatError(
            f"File {str(file)!r} is not valid UTF-8 ({exc.reason} at byte {exc.start}); re-save it as UTF-8."
        ) from None


def _load_jsonl(file: Path, source: str) -> list[Document]:
    documents: list[Document] = []
    for line_no, line in enumerate(_read_text(file).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{str(file)!r} line {line_no}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorpusFormatError(f"Invalid JSON in {where} ({exc.msg}); write one JSON object per line.") from None
        if not isinstance(record, dict):
            raise CorpusFormatError(
                f"Record at {where} is a {type(record).__name__}, not an object; write objects "
                'like {"id": ..., "title": ..., "text": ...}.'
            )
        text = record.get("text")
        if not isinstance(text, str):
            raise CorpusFormatError(f'Record at {where} needs a string "text" field; add the passage text.')
        title = record.get("title", "")
        if title is None:
            title = ""
        if not isinstance(title, str):
            raise CorpusFormatError(f'Record at {where} has a non-string "title"; make it a string or drop it.')
        raw_id = record.get("id")
        if raw_id is None:
            doc_id = f"{source}:{line_no}"
        elif (isinstance(raw_id, str) or is_int(raw_id)) and str(raw_id).strip():
            doc_id = str(raw_id)
        else:
            raise CorpusFormatError(f'Record at {where} has an invalid "id" {raw_id!r}; use a non-empty string.')
        for field, value in (("id", doc_id), ("title", title), ("text", text)):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise CorpusFormatError(
                    f'Record at {where} has an "{field}" holding a lone surrogate ({value[exc.start]!r} at index '
                    f"{exc.start}), which is not valid Unicode text; fix or remove that \\u escape in the file."
                ) from None
        if not text.strip():
            continue
        documents.append(Document(doc_id=doc_id, title=title.strip(), text=text.strip(), source=source))
    return documents


__all__ = [
    "SUPPORTED_EXTENSIONS",
    "Document",
    "check_unique_doc_ids",
    "load_corpus",
    "list_sources",
    "load_file",
    "split_markdown_title",
]
