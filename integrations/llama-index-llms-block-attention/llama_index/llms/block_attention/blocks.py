"""Turning LlamaIndex nodes into block-attention blocks.

Contract:

* A node becomes one :class:`block_attention.Block` whose text is ``node.get_content(metadata_mode)`` (LlamaIndex's
  LLM view by default: the text plus the metadata not listed in ``excluded_llm_metadata_keys``) and whose cache key
  is ``node.node_id + ":" + node.hash``. The hash covers the node's text and metadata, so an edited node gets a new
  key and never reuses stale KV; an unchanged node hits the cache under the same key in every query.
* ``NodeWithScore.score`` becomes the block score (used by the engine's ``drop_lowest`` overflow policy).
* Nodes whose content is blank are skipped. ``blocks=`` items may be ``Block`` objects or plain strings.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from llama_index.core.schema import BaseNode, MetadataMode, NodeWithScore

if TYPE_CHECKING:
    from block_attention import Block


def node_key(node: BaseNode) -> str:
    """The cache key of ``node``: its id and content hash."""
    return f"{node.node_id}:{node.hash}"


def node_to_block(item: NodeWithScore | BaseNode, metadata_mode: MetadataMode = MetadataMode.LLM) -> Block | None:
    """One node as a block (``None`` when its content is blank)."""
    from block_attention import Block

    node, score = (item.node, item.score) if isinstance(item, NodeWithScore) else (item, None)
    text = node.get_content(metadata_mode=metadata_mode)
    if not text.strip():
        return None
    return Block(text=text, doc_id=node_key(node), score=float(score) if score is not None else None,
                 metadata={"node_id": node.node_id})


def to_blocks(nodes: Iterable[NodeWithScore | BaseNode] | None = None, blocks: Iterable[Any] | None = None,
              metadata_mode: MetadataMode = MetadataMode.LLM) -> list[Block]:
    """``blocks`` (Blocks or strings) followed by ``nodes`` (NodeWithScore or nodes), as engine blocks."""
    from block_attention import Block

    out: list[Block] = []
    for item in blocks or ():
        if isinstance(item, Block):
            out.append(item)
        elif isinstance(item, str):
            if item.strip():
                out.append(Block(text=item))
        else:
            raise TypeError(
                f"blocks= items must be block_attention.Block or str, got {type(item).__name__}; pass LlamaIndex "
                "nodes with nodes=[...] instead."
            )
    for item in nodes or ():
        if not isinstance(item, (NodeWithScore, BaseNode)):
            raise TypeError(
                f"nodes= items must be NodeWithScore or LlamaIndex nodes, got {type(item).__name__}; pass plain "
                "texts with blocks=[...] instead."
            )
        block = node_to_block(item, metadata_mode)
        if block is not None:
            out.append(block)
    return out
