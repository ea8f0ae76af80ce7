"""Turning LlamaIndex nodes into block-attention blocks.

Contract:

* A node becomes one :class:`block_attention.Block` whose text is ``node.get_content(metadata_mode)`` (LlamaIndex's
  LLM view by default: the text plus the metadata not listed in ``excluded_llm_metadata_keys``) and whose cache key
  is ``node.node_id + ":" + node.hash``. The hash covers the node's text and metadata, so an edited node gets a new
  key and never reuses stale KV; an unchanged node hits the cache under the same key in every query.
* ``NodeWithScore.score`` becomes the block score (used by the engine's ``drop_lowest`` overflow policy).
* Nodes whose content is blank are skipped. ``blocks=`` items may be ``Block`` objects or plain strings.
* The keying rules (including duplicate ids) are the core's :mod:`block_attention.frameworks.documents`; a
  :class:`~llama_index.llms.block_attention.markers.BlockMarkedNode` is converted from its unmarked content.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from block_attention.frameworks.documents import DocumentRef, documents_to_blocks
from llama_index.core.schema import BaseNode, MetadataMode, NodeWithScore

from .markers import BlockMarkedNode, node_key

if TYPE_CHECKING:
    from block_attention import Block


def node_to_block(item: NodeWithScore | BaseNode, metadata_mode: MetadataMode = MetadataMode.LLM) -> Block | None:
    """One node as a block (``None`` when its content is blank)."""
    ref = node_ref(item, metadata_mode)
    blocks = documents_to_blocks([ref])
    return blocks[0] if blocks else None


def node_ref(item: NodeWithScore | BaseNode, metadata_mode: MetadataMode = MetadataMode.LLM) -> DocumentRef:
    """One node as the core's :class:`DocumentRef` (key ``node_id:hash``; a marked node's content unmarked)."""
    node, score = (item.node, item.score) if isinstance(item, NodeWithScore) else (item, None)
    if isinstance(node, BlockMarkedNode):
        text = node.plain_content(metadata_mode)
    else:
        text = node.get_content(metadata_mode=metadata_mode)
    return DocumentRef(text=text, key=node_key(node), score=float(score) if score is not None else None,
                       metadata={"node_id": node.node_id})


def to_blocks(nodes: Iterable[NodeWithScore | BaseNode] | None = None, blocks: Iterable[Any] | None = None,
              metadata_mode: MetadataMode = MetadataMode.LLM) -> list[Block]:
    """``blocks`` (Blocks or strings) followed by ``nodes`` (NodeWithScore or nodes), as engine blocks."""
    from block_attention import Block

    refs: list[DocumentRef | Block] = []
    for item in blocks or ():
        if isinstance(item, Block):
            refs.append(item)
        elif isinstance(item, str):
            refs.append(DocumentRef(text=item))
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
        refs.append(node_ref(item, metadata_mode))
    return documents_to_blocks(refs)
