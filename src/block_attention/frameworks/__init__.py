"""The rules every framework integration shares, written once (LangChain and LlamaIndex only map their types).

* :mod:`.markers`: block-boundary markers. :func:`format_blocks` renders passages as marked text (the
  ``format_docs`` drop-in of a RAG recipe); :func:`split_prompt` recovers ``(blocks, rest)`` from any prompt
  string that carries them, so a recipe that flattens documents into a prompt still gets one cached block each.
* :mod:`.documents`: :class:`DocumentRef` (a framework document reduced to text, id, title, score) and
  :func:`documents_to_blocks` (keying, duplicate ids).
* :mod:`.chat`: chat messages as ``(system, history, question)`` (:func:`split_chat`), for every chat front end.
* :mod:`.options`: decoding settings from framework knobs (:func:`sampling_from`) and chat-role mapping.
* :mod:`.runtime`: the lazily loaded, picklable engine holder (:class:`LazyEngine`), running a blocking stream
  from async code (:func:`iterate_in_thread`) and the stats dictionary frameworks expose (:func:`stats_metadata`).

Nothing here imports a framework, torch or a model at import time.
"""

from __future__ import annotations

from block_attention.core.lazy import lazy_exports

_EXPORTS = {
    "BLOCK_SEPARATOR": "markers", "format_blocks": "markers", "mark_block": "markers", "split_prompt": "markers",
    "SplitPrompt": "markers", "looks_like_flat_context": "markers", "FLAT_CONTEXT_HINT": "markers",
    "DocumentRef": "documents", "documents_to_blocks": "documents", "DuplicateKeyPolicy": "documents",
    "split_chat": "chat", "ChatParts": "chat", "ChatShapeError": "chat",
    "sampling_from": "options", "engine_role": "options", "ROLE_NAMES": "options",
    "LazyEngine": "runtime", "iterate_in_thread": "runtime", "stats_metadata": "runtime",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
