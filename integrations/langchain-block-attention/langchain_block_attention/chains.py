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
* :func:`create_stuff_documents_chain` is a drop-in for ``langchain_classic``'s function of that name (same
  arguments, same ``Runnable[dict, output]`` shape): the documents are rendered with block markers
  (:func:`~langchain_block_attention.format_docs`, or ``document_prompt`` inside each marker) and joined with
  ``document_separator``, so the model caches each document as its own block keyed by its id. Use it with any
  ``prompt`` that has a ``{context}`` variable, e.g. inside ``create_retrieval_chain``. ``keep_message=True``
  returns the model's message itself (for a chat model an ``AIMessage`` whose ``response_metadata
  ["block_attention"]`` holds the request stats) instead of parsing it to a string.
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
from langchain_core.output_parsers import BaseOutputParser, StrOutputParser
from langchain_core.prompts import BasePromptTemplate, format_document
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


def create_stuff_documents_chain(llm: Runnable[Any, Any], prompt: BasePromptTemplate, *,
                                 output_parser: BaseOutputParser | None = None,
                                 document_prompt: BasePromptTemplate | None = None,
                                 document_separator: str = "\n\n",
                                 document_variable_name: str = "context",
                                 keep_message: bool = False) -> Runnable[dict[str, Any], Any]:
    """``langchain_classic.chains.combine_documents.create_stuff_documents_chain`` keeping each document a block."""
    from block_attention import Block
    from block_attention.frameworks.markers import format_blocks

    from .documents import to_blocks

    if document_variable_name not in prompt.input_variables:
        raise ValueError(
            f"The prompt must have a {{{document_variable_name}}} variable for the documents; it has "
            f"{prompt.input_variables}. Add it or set document_variable_name."
        )

    def format_docs(inputs: Mapping[str, Any]) -> str:
        blocks = to_blocks(inputs[document_variable_name])
        if document_prompt is not None:
            docs = [d for d in inputs[document_variable_name] if getattr(d, "page_content", "").strip()]
            blocks = [Block(text=format_document(doc, document_prompt), doc_id=b.doc_id, title=b.title,
                            score=b.score) for doc, b in zip(docs, blocks)]
        return format_blocks(blocks, separator=document_separator)

    return (
        RunnablePassthrough.assign(**{document_variable_name: format_docs}).with_config(run_name="format_inputs")
        | prompt | (llm if keep_message else llm | (output_parser or StrOutputParser()))
    ).with_config(run_name="stuff_documents_chain")


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
