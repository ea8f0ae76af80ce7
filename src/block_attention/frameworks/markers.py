"""Block-boundary markers: how a retrieved passage keeps its identity inside a flat prompt string.

Framework recipes (LangChain's ``format_docs`` + prompt template, LlamaIndex's stock synthesizers and chat
engines) join retrieved passages into one string before the model sees it. Marking each passage lets the model
split that string back into cached blocks:

* :func:`mark_block` renders one passage as ``⟦block id=<key>[ title=<t>][ score=<s>]⟧\\n<text>\\n⟦/block⟧``
  (attribute values percent-encoded, so any id or title is safe); :func:`format_blocks` joins marked blocks with
  blank lines (the drop-in for a recipe's ``format_docs``).
* :func:`split_prompt` finds every complete marked span in a prompt and returns ``SplitPrompt(blocks, rest)``:
  the blocks in order (text exactly as marked, ``doc_id`` the marker's id) and the prompt with the spans removed
  (runs of blank lines collapsed, stripped; a prompt without markers is returned unchanged). A span cut in two
  (e.g. by a framework re-chunking the context) is not a block; its pieces stay in ``rest``, marker text removed.
  The older separator form, :data:`BLOCK_SEPARATOR` between blocks and before the question, is also understood:
  every part before the last separator is a block keyed by its text digest, the last part is the rest.
* :func:`looks_like_flat_context` is the heuristic behind the integrations' one-time warning that a prompt
  evidently carries retrieved context but no blocks (so nothing is cached per passage).

The rest of the prompt becomes the request's final block (with the instruction or question it carried), so a
marked prompt is answered exactly like ``engine.generate(blocks, rest)``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import quote, unquote

from block_attention.core.blocks import Block, text_digest

OPEN, CLOSE = "\u27e6block", "\u27e6/block\u27e7"
BLOCK_MARKER = "<|block|>"
BLOCK_SEPARATOR = f"\n\n{BLOCK_MARKER}\n\n"
"""Separator between blocks in a flat prompt (documents, then the question last); the older marker form."""

FLAT_CONTEXT_HINT = (
    "The prompt seems to carry retrieved context flattened into one string, so no passage is cached as its own "
    "block. Render the documents with block markers to keep the cache benefit: in LangChain use "
    "langchain_block_attention.format_docs (or its create_stuff_documents_chain), in LlamaIndex pass "
    "node_postprocessors=[BlockMarkers()] to as_query_engine/as_chat_engine, or pass documents=/nodes= per call."
)

_SPAN = re.compile("\u27e6block((?: [a-z]+=[^\\s\u27e7]*)*)\u27e7\\n?"  # opening marker and its attributes
                   "((?:(?!\u27e6block[ \u27e7]).)*?)"  # the block text (never another opening marker)
                   "\\n?\u27e6/block\u27e7", re.DOTALL)
_STRAY = re.compile("\u27e6block(?: [a-z]+=[^\\s\u27e7]*)*\u27e7\\n?|\\n?\u27e6/block\u27e7")
_BLANKS = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)+")
_CONTEXT_WORDS = re.compile(r"\b(context|documents?|passages?|sources?)\b", re.IGNORECASE)
FLAT_CONTEXT_MIN_CHARS = 400


@dataclass(frozen=True)
class SplitPrompt:
    """A prompt split into its marked blocks and the text around them."""

    blocks: tuple[Block, ...]
    rest: str
    broken: bool = False  # marker fragments were found that did not form a complete block


def _attr(value: str) -> str:
    return quote(value, safe="")


def mark_block(text: str, key: str, *, title: str | None = None, score: float | None = None) -> str:
    """One passage as marked text (see the module docstring)."""
    attrs = f" id={_attr(key)}"
    if title:
        attrs += f" title={_attr(title)}"
    if score is not None:
        attrs += f" score={float(score)!r}"
    return f"{OPEN}{attrs}\u27e7\n{text}\n{CLOSE}"


def format_blocks(blocks: Iterable[Block], separator: str = "\n\n") -> str:
    """Blocks as marked text joined by ``separator``; keyed by ``Block.key`` (its id, else a text digest)."""
    return separator.join(mark_block(b.text, b.key, title=b.title, score=b.score) for b in blocks)


def _parse_attrs(raw: str) -> dict[str, str]:
    out = {}
    for part in raw.split():
        name, _, value = part.partition("=")
        out[name] = unquote(value)
    return out


def _tidy(text: str) -> str:
    return _BLANKS.sub("\n\n", text).strip()


def split_prompt(prompt: str) -> SplitPrompt:
    """``(blocks, rest)`` of a prompt carrying marked blocks or :data:`BLOCK_SEPARATOR` parts."""
    blocks: list[Block] = []
    original = prompt
    if OPEN in prompt or CLOSE in prompt:
        pieces: list[str] = []
        last = 0
        for match in _SPAN.finditer(prompt):
            attrs, text = _parse_attrs(match.group(1)), match.group(2)
            pieces.append(prompt[last:match.start()])
            last = match.end()
            if not text.strip():
                continue
            score = attrs.get("score")
            try:
                score_value = float(score) if score is not None else None
            except ValueError:
                score_value = None
            key = attrs.get("id") or None
            if key == "text:" + text_digest(text):
                key = None  # an unkeyed block (keyed by its content digest) stays unkeyed
            blocks.append(Block(text=text, doc_id=key, title=attrs.get("title") or None, score=score_value))
        pieces.append(prompt[last:])
        rest = "".join(pieces)
        stray = _STRAY.sub("", rest)
        broken = stray != rest
        prompt = stray
    else:
        broken = False
    if BLOCK_MARKER in prompt:
        *parts, last_part = (part.strip() for part in prompt.split(BLOCK_MARKER))
        blocks.extend(Block(text=part) for part in parts if part)
        prompt = last_part
    if prompt == original:
        return SplitPrompt((), prompt)
    return SplitPrompt(tuple(blocks), _tidy(prompt), broken)


def looks_like_flat_context(text: str) -> bool:
    """Whether an unmarked prompt evidently carries retrieved passages (long, several paragraphs, says so)."""
    if len(text) < FLAT_CONTEXT_MIN_CHARS or text.count("\n\n") < 2:
        return False
    return _CONTEXT_WORDS.search(text) is not None


__all__ = ["BLOCK_MARKER", "BLOCK_SEPARATOR", "FLAT_CONTEXT_HINT", "SplitPrompt", "format_blocks",
           "looks_like_flat_context", "mark_block", "split_prompt"]
