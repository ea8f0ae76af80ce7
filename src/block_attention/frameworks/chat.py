"""Chat messages as one engine request, ``(system, history, question)``, by the same rules for every caller.

The callers (the OpenAI-compatible server, the LangChain and the LlamaIndex chat models) map their own message
type to ``(role, content)`` pairs, ``role`` being the engine's ``"system"``, ``"user"`` or ``"assistant"``, or
``None`` for a message the engine does not support (tool or function messages), and call :func:`split_chat`:

* the last message must be the user's: it is the question (with ``require_question=True`` it must hold more than
  whitespace);
* the system messages before it, joined by a blank line, are the instruction (``None`` when there are none);
* the user and assistant messages before it are the history turns, in order;
* any other message is refused.

A list that breaks a rule raises :class:`ChatShapeError`, which names the rule (``problem``) and the message
(``index``), checked in this order: no messages, last message not the user's, empty question, first unsupported
message. Each caller turns it into its own error type and sentence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from block_attention.core.errors import InvalidRequestError

ChatProblem = Literal["no_messages", "last_not_user", "empty_question", "unsupported_role"]

_SENTENCES: dict[str, str] = {
    "no_messages": "A chat needs at least one message; pass the question as a user message.",
    "last_not_user": "The last message must be the user's (it is the question); end the list with a user message.",
    "empty_question": "The last user message is empty; send the question as its content.",
    "unsupported_role": "Message {index} has a role the engine does not support; send system, user and assistant "
                        "messages only.",
}


class ChatShapeError(InvalidRequestError):
    """A message list that :func:`split_chat` cannot turn into a request: which rule (``problem``), which message."""

    def __init__(self, problem: ChatProblem, index: int) -> None:
        super().__init__(_SENTENCES[problem].format(index=index))
        self.problem: ChatProblem = problem
        self.index = index


@dataclass(frozen=True)
class ChatParts:
    """One chat as the engine takes it: the instruction, the earlier turns and the question."""

    system: str | None
    history: tuple[dict[str, str], ...]
    question: str


def split_chat(messages: Sequence[tuple[str | None, str]], *, require_question: bool = False) -> ChatParts:
    """``(system, history, question)`` of ``(engine role or None, text)`` pairs (see the module docstring)."""
    if not messages:
        raise ChatShapeError("no_messages", 0)
    last = len(messages) - 1
    role, question = messages[last]
    if role != "user":
        raise ChatShapeError("last_not_user", last)
    if require_question and not question.strip():
        raise ChatShapeError("empty_question", last)
    system: list[str] = []
    history: list[dict[str, str]] = []
    for index, (role, content) in enumerate(messages[:last]):
        if role == "system":
            system.append(content)
        elif role in ("user", "assistant"):
            history.append({"role": role, "content": content})
        else:
            raise ChatShapeError("unsupported_role", index)
    return ChatParts("\n\n".join(system) if system else None, tuple(history), question)


__all__ = ["ChatParts", "ChatProblem", "ChatShapeError", "split_chat"]
