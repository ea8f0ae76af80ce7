"""Rendering a request (instruction, blocks, question, chat history) into a tokenized :class:`PromptLayout`.

Layout: ``[prefix block][doc block]...[doc block][final block]``. The prefix holds what precedes the documents
(BOS, the optional block marker, the instruction, the chat template's header) and is cached like any block.
Each doc block is rendered from a template and tokenized alone with no special tokens. The final block holds
what follows the documents (chat history, the question, the assistant header) and is the only global block.

With a chat template, the messages are rendered once with a sentinel where the documents go, and the text is
split at the sentinel, so any template works. Documents go in the system message by default (so chat history
lands in the final block); ``docs_in="user"`` puts them in the last user turn (the paper's Tulu format).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .blocks import Block, check_text, text_digest
from .errors import ConfigError, InvalidRequestError
from .layout import PromptLayout

DEFAULT_INSTRUCTION = (
    "You are a helpful assistant. Answer the question using only the reference documents below. "
    "If they do not contain the answer, say so."
)
_SENTINEL = "\u2063BLOCK_ATTENTION_DOCUMENTS\u2063"
PREFIX_ID = "prefix:"  # doc ids of prefix blocks start with it (PromptBuilder.layout; the sink option finds them so)
TOKENIZED_BLOCKS_KEPT = 8192  # recurring passages skip re-tokenization (an LRU of rendered block text -> ids)

Message = Mapping[str, str]


@dataclass(frozen=True)
class PromptConfig:
    """How requests are rendered. Changing a field changes the tokens of affected blocks (so their cache keys)."""

    instruction: str | None = DEFAULT_INSTRUCTION
    doc_template: str = "- Title: {title}\n{text}\n"
    untitled_doc_template: str = "- {text}\n"
    question_template: str = "Question: {question}"
    plain_final_template: str = "\n{history}Question: {question}\nAnswer:"
    use_chat_template: bool | None = None  # None: use the tokenizer's chat template when it has one
    docs_in: Literal["system", "user"] = "system"
    block_marker: str | None = None  # e.g. "[Block-Attention]" for the paper's fine-tuned checkpoints
    add_bos: bool | None = None  # plain prompts only; None: follow the tokenizer

    def __post_init__(self) -> None:
        if self.docs_in not in ("system", "user"):
            raise ConfigError(f"docs_in must be 'system' or 'user', got {self.docs_in!r}.")
        for name in ("doc_template", "untitled_doc_template"):
            if "{text}" not in getattr(self, name):
                raise ConfigError(f"PromptConfig.{name} must contain '{{text}}'; got {getattr(self, name)!r}.")
        if "{title}" not in self.doc_template:
            raise ConfigError("PromptConfig.doc_template must contain '{title}' (untitled blocks use untitled_doc_template).")
        if "{question}" not in self.question_template or "{question}" not in self.plain_final_template:
            raise ConfigError("question_template and plain_final_template must contain '{question}'.")
        if "{history}" not in self.plain_final_template:
            raise ConfigError("plain_final_template must contain '{history}' (it may render empty).")

    def describe(self) -> dict[str, Any]:
        """Fields that shape doc-block tokens (part of the model fingerprint)."""
        return {"doc_template": self.doc_template, "untitled_doc_template": self.untitled_doc_template,
                "block_marker": self.block_marker}


def recorded_prompt_config(model: Any) -> PromptConfig | None:
    """The prompt config a block fine-tune recorded in ``model.config.block_attention`` (None when there is none)."""
    record = getattr(getattr(model, "config", None), "block_attention", None)
    if not (isinstance(record, Mapping) and isinstance(record.get("prompt_config"), Mapping)):
        return None
    try:
        return PromptConfig(**record["prompt_config"])
    except TypeError as exc:
        raise ConfigError(
            f"The model's recorded block_attention.prompt_config does not match this version's PromptConfig ({exc}); "
            "pass EngineConfig(prompt=PromptConfig(...)) explicitly or re-save the model with save_finetuned."
        ) from None


@dataclass(frozen=True)
class RenderedPrompt:
    prefix: str  # may be "" (then there is no prefix block)
    docs: tuple[str, ...]
    final: str


def _check_history(history: Sequence[Message]) -> list[dict[str, str]]:
    out = []
    for turn in history:
        if not isinstance(turn, Mapping) or not isinstance(turn.get("content"), str) or turn.get("role") not in (
            "user", "assistant", "system"):
            raise InvalidRequestError(
                "Each history turn must be a mapping {'role': 'user'|'assistant', 'content': str}; got "
                f"{turn!r}."
            )
        check_text(turn["content"], f"History turn {len(out)}")
        out.append({"role": str(turn["role"]), "content": str(turn["content"])})
    return out


def pad_token_id(tokenizer: Any) -> int:
    """The id used to pad batches: the tokenizer's pad token, else its EOS, else 0."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return int(pad if pad is not None else 0)


class PromptBuilder:
    """Turns requests into token layouts for one tokenizer. Its only state is an LRU of the token ids of recently
    rendered blocks (tokenization is deterministic; the LRU is cleared when the tokenizer's size changes)."""

    def __init__(self, tokenizer: Any, config: PromptConfig | None = None) -> None:
        self.tokenizer = tokenizer
        self._block_ids = functools.lru_cache(maxsize=TOKENIZED_BLOCKS_KEPT)(self._ids)
        self._vocab_size = len(tokenizer)
        self.config = config or PromptConfig()
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if self.config.use_chat_template and not has_template:
            raise ConfigError("use_chat_template=True but the tokenizer has no chat template; set one or pass False.")
        self.chat = has_template if self.config.use_chat_template is None else self.config.use_chat_template

    # -- rendering -------------------------------------------------------------------------------------------
    def render_doc(self, block: Block) -> str:
        cfg = self.config
        if block.title:
            return cfg.doc_template.format(title=block.title, text=block.text)
        return cfg.untitled_doc_template.format(text=block.text)

    def render(self, blocks: Sequence[Block], question: str, system: str | None = None,
               history: Sequence[Message] = ()) -> RenderedPrompt:
        if not isinstance(question, str):
            raise InvalidRequestError(f"The question must be a str, got {type(question).__name__}.")
        if system is not None and not isinstance(system, str):
            raise InvalidRequestError(f"system must be a str or None, got {type(system).__name__}.")
        check_text(question, "The question")
        if system is not None:
            check_text(system, "The system prompt")
        turns = _check_history(history)
        instruction = self.config.instruction if system is None else system
        docs = tuple(self.render_doc(b) for b in blocks)
        prefix, final = self._render_chat(instruction, question, turns) if self.chat else \
            self._render_plain(instruction, question, turns)
        marker = self.config.block_marker
        if marker:
            bos = getattr(self.tokenizer, "bos_token", None)
            if bos and prefix.startswith(bos):
                prefix = bos + marker + prefix[len(bos):]
            else:
                prefix = marker + prefix
        return RenderedPrompt(prefix, docs, final)

    def _render_plain(self, instruction: str | None, question: str, turns: list[dict[str, str]]) -> tuple[str, str]:
        prefix = (instruction + "\n\n") if instruction else ""
        if self._plain_bos():
            prefix = self.tokenizer.bos_token + prefix
        history = "".join(f"{t['role'].capitalize()}: {t['content']}\n" for t in turns)
        return prefix, self.config.plain_final_template.format(history=history, question=question)

    def _plain_bos(self) -> bool:
        tok = self.tokenizer
        if getattr(tok, "bos_token", None) is None:
            return False
        if self.config.add_bos is not None:
            return self.config.add_bos
        probe = tok("a", add_special_tokens=True)["input_ids"]
        return bool(probe) and probe[0] == tok.bos_token_id

    def _render_chat(self, instruction: str | None, question: str, turns: list[dict[str, str]]) -> tuple[str, str]:
        intro = (instruction + "\n\n") if instruction else ""
        user_q = self.config.question_template.format(question=question)
        if self.config.docs_in == "system":
            messages = [{"role": "system", "content": intro + _SENTINEL}, *turns, {"role": "user", "content": user_q}]
        else:
            messages = [*turns, {"role": "user", "content": intro + _SENTINEL + "\n" + user_q}]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if text.count(_SENTINEL) != 1:
            raise ConfigError(
                "The chat template did not render the documents exactly once (does it drop system messages?); "
                "set PromptConfig(docs_in='user') or use_chat_template=False."
            )
        prefix, final = text.split(_SENTINEL)
        return prefix, final

    # -- tokenization ----------------------------------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        """Token ids of one block, alone, with no special tokens added (special tokens *in* the text are kept)."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _ids(self, text: str) -> tuple[int, ...]:
        return tuple(self.tokenize(text))

    def block_ids(self, text: str) -> tuple[int, ...]:
        """:meth:`tokenize` for a cacheable block, served from the LRU when the same text was seen recently."""
        if len(self.tokenizer) != self._vocab_size:  # tokens were added: ids of seen texts may differ now
            self._block_ids.cache_clear()
            self._vocab_size = len(self.tokenizer)
        return self._block_ids(text)

    def layout(self, blocks: Sequence[Block], question: str, system: str | None = None,
               history: Sequence[Message] = ()) -> PromptLayout:
        rendered = self.render(blocks, question, system, history)
        spans: list[tuple[str, Sequence[int]]] = []
        if rendered.prefix:
            spans.append((PREFIX_ID + text_digest(rendered.prefix), self.block_ids(rendered.prefix)))
        for block, text in zip(blocks, rendered.docs):
            ids = self.block_ids(text)
            if not ids:
                raise InvalidRequestError(f"Block {block.key!r} tokenizes to nothing; drop it from the request.")
            spans.append((block.key, ids))
        final_ids = self.tokenize(rendered.final)
        if not final_ids:
            raise InvalidRequestError("The final block (question) tokenizes to nothing; pass a non-empty question.")
        return PromptLayout.build(spans, final_ids)
