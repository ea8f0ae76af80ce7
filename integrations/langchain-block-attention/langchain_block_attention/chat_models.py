"""``ChatBlockAttention``: a LangChain chat model served by a block-attention engine.

Contract:

* Messages map onto one engine request: system messages (joined) become the instruction rendered before the
  documents (else the ``instruction`` field, else the engine's default when there are documents and none when there
  are not); earlier human/AI messages become the chat history; the last message must be a human message and is the
  question (the final block).
* Documents are passed per call with ``documents=[Document, ...]`` (``invoke``/``stream`` kwarg or ``.bind``), the
  same convention as ``langchain-cohere``, or attached to the last human message as
  ``HumanMessage(question, additional_kwargs={"documents": [...]})``; kwarg documents come first. Each document is
  one cached block (see :mod:`langchain_block_attention.documents`).
* Documents flattened into the messages by a prompt template keep their blocks when they were rendered with
  :func:`~langchain_block_attention.format_docs` (block markers) or separated by
  :data:`~langchain_block_attention.BLOCK_SEPARATOR`: the marked blocks of the system and human messages are taken
  out (in message order, after the kwarg and attached documents) and the remaining text stays the instruction /
  question. A system message that held nothing but blocks leaves the instruction to the ``instruction`` field or
  the engine's default. A prompt with no blocks that evidently carries flattened context logs one warning per
  instance saying how to keep the cache benefit.
* The reply is an ``AIMessage`` with ``usage_metadata`` (prompt and new tokens) and ``response_metadata`` holding
  ``finish_reason``, ``model_name`` and ``block_attention`` (the engine's request stats: cache hits per tier,
  misses, TTFT, dropped ids), so chains such as ``create_retrieval_chain`` expose them in their output message.
  Streaming yields one chunk per text piece and a last empty chunk carrying that metadata.
* Text only: tool calling, structured output and multimodal content are not supported (a non-text content block
  raises ``ValueError``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables.config import run_in_executor

from block_attention.frameworks.chat import ChatShapeError, split_chat
from block_attention.frameworks.markers import split_prompt
from block_attention.frameworks.runtime import iterate_in_thread, stats_metadata

from ._params import BlockAttentionParams, parse_call_options
from .documents import to_blocks

if TYPE_CHECKING:
    from block_attention import BlockAttentionEngine
    from block_attention.engine import Generation as EngineGeneration


class ChatBlockAttention(BlockAttentionParams, BaseChatModel):
    """Chat model over ``block_attention.BlockAttentionEngine``.

    Example::

        from langchain_block_attention import ChatBlockAttention
        chat = ChatBlockAttention(model="Qwen/Qwen2.5-1.5B-Instruct", max_tokens=128)
        chat.invoke([("system", "Be brief."), ("human", "Who built it?")], documents=retrieved_docs)
    """

    @property
    def _llm_type(self) -> str:
        return "block-attention-chat"

    def _request(self, messages: list[BaseMessage], stop: list[str] | None,
                 kwargs: dict[str, Any]) -> tuple[BlockAttentionEngine, dict[str, Any]]:
        options = parse_call_options(kwargs, self.model_name)
        system, turns, question, attached = split_messages(messages)
        blocks = options.blocks + to_blocks(attached)
        if system is not None:
            split = split_prompt(system)
            if split.blocks:
                blocks += split.blocks
                system = split.rest or None
        split = split_prompt(question)
        if split.blocks:
            blocks += split.blocks
            question = split.rest
        if not blocks:
            self.warn_flat_context("\n\n".join([system or "", question]))
        settings = self.call_settings(options, bool(blocks))
        if system is not None:
            settings["system"] = system
        request = dict(blocks=blocks, question=question,
                       history=options.history + turns, generation=self.generation_config(stop, options), **settings)
        return self.get_engine(), request

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        engine, request = self._request(messages, stop, kwargs)
        result = engine.generate(**request)
        message = AIMessage(content=result.text, usage_metadata=_usage(result),
                            response_metadata=self._response_metadata(result))
        return ChatResult(generations=[ChatGeneration(message=message)], llm_output={"model_name": self.model_name})

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None,
                **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        engine, request = self._request(messages, stop, kwargs)
        stream = engine.stream(**request)
        for piece in stream:
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
            if run_manager:
                run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk
        assert stream.result is not None
        yield self._last_chunk(stream.result)

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        engine, request = await run_in_executor(None, self._request, messages, stop, kwargs)
        stream = engine.stream(**request)
        async for piece in iterate_in_thread(iter(stream)):
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
            if run_manager:
                await run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk
        assert stream.result is not None
        yield self._last_chunk(stream.result)

    def _response_metadata(self, result: EngineGeneration) -> dict[str, Any]:
        return {"finish_reason": result.finish_reason, "model_name": self.model_name,
                "block_attention": stats_metadata(result.stats)}

    def _last_chunk(self, result: EngineGeneration) -> ChatGenerationChunk:
        message = AIMessageChunk(content="", usage_metadata=_usage(result),
                                 response_metadata=self._response_metadata(result), chunk_position="last")
        return ChatGenerationChunk(message=message)


_ROLES = {"system": "system", "human": "user", "ai": "assistant"}  # message.type -> engine role; others: None


def split_messages(messages: Sequence[BaseMessage]) -> tuple[str | None, list[dict[str, str]], str, list[Any]]:
    """``(system, history turns, question, documents attached to the question)`` of a message list."""
    pairs = [(_ROLES.get(message.type), str(message.text)) for message in messages]
    try:
        chat = split_chat(pairs)
    except ChatShapeError as error:
        if error.problem == "no_messages":
            raise ValueError("ChatBlockAttention needs at least one message; pass [HumanMessage(question)].") from None
        if error.problem == "last_not_user":
            raise ValueError(
                f"The last message must be a human message holding the question, got a {messages[-1].type!r} "
                "message; append HumanMessage(question) to the list."
            ) from None
        for message in messages[:error.index]:  # the messages before it are text-checked first, as they are read
            _text(message)
        raise ValueError(
            f"ChatBlockAttention does not support {messages[error.index].type!r} messages (no tool calling); pass "
            "only system, human and AI messages."
        ) from None
    for message in messages:
        _text(message)
    return chat.system, list(chat.history), chat.question, list(messages[-1].additional_kwargs.get("documents") or [])


def _text(message: BaseMessage) -> str:
    content = message.content
    if isinstance(content, list):
        for part in content:
            if not isinstance(part, str) and not (isinstance(part, dict) and part.get("type") == "text"):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ValueError(
                    f"ChatBlockAttention is text-only, but a {message.type} message holds a {kind!r} content block; "
                    "pass text content (pass retrieved passages as documents=[...])."
                )
    return str(message.text)


def _usage(result: EngineGeneration) -> UsageMetadata:
    prompt, new = result.stats.prompt_tokens, result.stats.new_tokens
    return UsageMetadata(input_tokens=prompt, output_tokens=new, total_tokens=prompt + new)
