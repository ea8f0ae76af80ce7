"""LCEL chains that hand retrieved documents to a block-attention model as separate blocks.

Contract:

* :func:`create_block_attention_combine_chain` returns a ``Runnable[dict, str]`` reading the question
  (``question_key``), the retrieved documents (``"context"``) and optional chat history (``history_key``) and
  answering with ``llm(question, documents=context)``. It is the combine step of
  ``langchain_classic.chains.create_retrieval_chain(retriever, combine_chain)`` (``question_key="input"``, the
  default). Streaming passes through: ``chain.stream`` yields the answer piece by piece.
* :func:`create_block_attention_rag_chain` returns ``question -> retriever -> llm(documents=...)`` as one LCEL
  chain. Its input is a question string or a dict with ``"question"`` (and optionally ``"chat_history"``); its output
  is a dict with ``question``, ``context`` (the retrieved documents, i.e. the sources) and ``answer``.
* ``llm`` is a :class:`~langchain_block_attention.BlockAttentionLLM` or
  :class:`~langchain_block_attention.ChatBlockAttention` (optionally wrapped by ``.bind``/``.with_config``); a chat
  model receives ``[*chat_history, HumanMessage(question)]``, a completion LLM the question with ``history=``.
"""

from __future__ import annotations

from collections.abc import Mapping
from operator import itemgetter
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import HumanMessage, convert_to_messages
from langchain_core.output_parsers import StrOutputParser
from langchain_core.runnables import Runnable, RunnableLambda, RunnablePassthrough


def create_block_attention_combine_chain(llm: Runnable[Any, Any], *, question_key: str = "input",
                                         history_key: str = "chat_history") -> Runnable[dict[str, Any], str]:
    """Answer ``inputs[question_key]`` over ``inputs["context"]`` (documents), each document its own block."""
    chat = _is_chat_model(llm)

    def route(inputs: Mapping[str, Any]) -> Runnable[Any, str]:
        if not isinstance(inputs, Mapping) or question_key not in inputs:
            raise ValueError(
                f"The block-attention combine step needs a dict with a {question_key!r} key (the question) and a "
                f"'context' key (the documents); got {type(inputs).__name__} with keys "
                f"{sorted(inputs) if isinstance(inputs, Mapping) else []}. Set question_key to your input key."
            )
        question = inputs[question_key]
        documents = list(inputs.get("context") or [])
        history = list(inputs.get(history_key) or [])
        if chat:
            prompt: Any = [*convert_to_messages(history), HumanMessage(question)]
            bound = llm.bind(documents=documents)
        else:
            prompt = question
            bound = llm.bind(documents=documents, history=history) if history else llm.bind(documents=documents)
        return RunnableLambda(lambda _: prompt, name="block_attention_prompt") | bound | StrOutputParser()

    return RunnableLambda(route, name="block_attention_answer")


def create_block_attention_rag_chain(retriever: Runnable[str, list[Any]], llm: Runnable[Any, Any], *,
                                     history_key: str = "chat_history") -> Runnable[Any, dict[str, Any]]:
    """``{"question"} -> retriever -> llm(documents=...)``; returns ``{"question", "context", "answer"}``."""
    combine = create_block_attention_combine_chain(llm, question_key="question", history_key=history_key)
    return (
        RunnableLambda(_as_inputs, name="block_attention_inputs")
        | RunnablePassthrough.assign(context=(itemgetter("question") | retriever).with_config(
            run_name="retrieve_documents"))
        .assign(answer=combine)
    ).with_config(run_name="block_attention_rag_chain")


def _as_inputs(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        return {"question": value}
    if isinstance(value, Mapping) and isinstance(value.get("question"), str):
        return dict(value)
    raise ValueError(
        "The block-attention RAG chain takes a question string or a dict with a 'question' string (and optionally "
        f"'chat_history'); got {type(value).__name__}."
    )


def _is_chat_model(llm: Runnable[Any, Any]) -> bool:
    seen = llm
    while not isinstance(seen, BaseChatModel) and hasattr(seen, "bound"):
        seen = seen.bound
    return isinstance(seen, BaseChatModel)
