"""Request bodies of the OpenAI-compatible routes (pydantic models), plus the ``documents`` and ``mode`` extensions.

Bodies are validated strictly from JSON (``Model.model_validate_json(body, strict=True)``): a string where a
number belongs, a negative ``max_tokens`` or an unknown ``mode`` is a 400, never silently coerced. Unknown
top-level fields are ignored (clients send fields this server does not use, such as ``user`` or
``frequency_penalty``); fields whose values would change the answer and are not supported (``n > 1``,
``logprobs``, tools) are refused by :func:`unsupported_fields`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_STOP = 4


class Document(BaseModel):
    """One document = one cached block, keyed by ``doc_id`` (or a digest of ``text`` when absent)."""

    model_config = ConfigDict(extra="ignore")

    text: Annotated[str, Field(min_length=1)]
    doc_id: Annotated[str, Field(min_length=1, max_length=512)] | None = None
    title: str | None = None


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class _Common(BaseModel):
    """Fields shared by chat and text completions."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    documents: list[Document] | None = None
    mode: Literal["block", "full"] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    seed: int | None = None
    stop: str | Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=MAX_STOP)] | None = None
    n: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool | int | None = None
    tools: list[dict] | None = None

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class ChatCompletionRequest(_Common):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None


class CompletionRequest(_Common):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


def unsupported_fields(request: _Common) -> str | None:
    """The first requested feature this server does not implement, named for the error message (or ``None``)."""
    if request.n not in (None, 1):
        return "n"
    if request.logprobs not in (None, False, 0):
        return "logprobs"
    if request.tools:
        return "tools"
    return None
