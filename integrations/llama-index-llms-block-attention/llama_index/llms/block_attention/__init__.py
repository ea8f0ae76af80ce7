"""LlamaIndex integration of Block-Attention (namespace package ``llama_index.llms.block_attention``).

Public names (imported on first use, so importing the package loads neither torch nor a model):

* :class:`BlockAttentionLLM`: a ``CustomLLM`` taking ``nodes=[...]`` / ``blocks=[...]`` per call.
* :class:`BlockAttentionVLLM`: the same LLM answered by a vLLM server running the block-attention connector.
* :class:`BlockAttentionSynthesizer`: a response synthesizer giving each retrieved node its own cached block.
* :class:`BlockAttentionIndexRetriever`: a retriever over a ``block_attention`` Faiss index folder.
* :func:`node_to_block` / :func:`to_blocks`: the node -> block mapping (key ``node_id:hash``).
* :class:`BlockMarkers`: node postprocessor that keeps nodes as blocks in LlamaIndex's stock query and chat engines
  (``node_postprocessors=[BlockMarkers()]``); :func:`block_query_engine` wraps ``as_query_engine`` with it.
"""

from __future__ import annotations

from block_attention.core.lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "BlockAttentionLLM": "base",
    "BlockAttentionVLLM": "vllm",
    "BlockAttentionSynthesizer": "synthesizer",
    "BlockAttentionIndexRetriever": "retriever",
    "node_to_block": "blocks",
    "node_key": "markers",
    "BlockMarkers": "markers",
    "BlockMarkedNode": "markers",
    "block_query_engine": "markers",
    "to_blocks": "blocks",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
