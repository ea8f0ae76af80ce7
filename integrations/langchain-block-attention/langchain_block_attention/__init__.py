"""LangChain integration of Block-Attention: cached per-document KV for RAG with LangChain objects.

Public names (imported on first use, so ``import langchain_block_attention`` loads neither torch nor a model):

* :class:`BlockAttentionLLM` and :class:`ChatBlockAttention`: models taking ``documents=[Document, ...]`` per call.
* :class:`BlockAttentionVLLM`: the same call shape, answered by a vLLM server running the block-attention connector.
* :class:`BlockAttentionRetriever`: a LangChain retriever over a ``block_attention`` Faiss index directory.
* :func:`create_block_attention_rag_chain` and :func:`create_block_attention_combine_chain`: LCEL chains.
* :func:`format_docs`: the drop-in ``format_docs`` of LangChain's RAG tutorial (one block per document, keyed by id).
* :func:`create_stuff_documents_chain`: drop-in for ``langchain_classic``'s, keeping each document a block.
* :data:`BLOCK_SEPARATOR` and :data:`BLOCK_PROMPT`: the older flat-prompt block separation.
"""

from __future__ import annotations

from block_attention.core.lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "BlockAttentionLLM": "llms",
    "ChatBlockAttention": "chat_models",
    "BlockAttentionVLLM": "vllm",
    "BlockAttentionRetriever": "retrievers",
    "create_block_attention_rag_chain": "chains",
    "create_block_attention_combine_chain": "chains",
    "BLOCK_SEPARATOR": "documents",
    "BLOCK_PROMPT": "documents",
    "to_blocks": "documents",
    "format_docs": "documents",
    "create_stuff_documents_chain": "chains",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
