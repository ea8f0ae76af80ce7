"""Does this model expect block attention? The known-checkpoint list and the one-time quality warning.

A model is *block-fine-tuned* when it carries the prompt config that ``block_attention.finetune`` records in its
``config.json``, or when its ``config._name_or_path`` names a known block-fine-tuned checkpoint. Any other model was
trained with full attention only: block mode works, exactly as specified, but its answers can be much worse
(published: Llama-3.2-1B without block fine-tuning, 2WikiMultiHopQA exact match 0.06 in block mode vs 0.62 with
full attention). :func:`quality_warning` is the message the engine logs once (logger ``block_attention``).
"""

from __future__ import annotations

from typing import Any

from collections.abc import Mapping

KNOWN_BLOCK_FINETUNED = frozenset({
    "ldsjmdy/Tulu3-Block-FT",
    "hxia7/Llama-3.2-1B-Block-FT",
    "hxia7/Qwen3-8B-Block-FT",
})


def model_name(model: Any) -> str:
    """The hub id or path the model was loaded from (``""`` when unknown)."""
    return str(getattr(getattr(model, "config", None), "_name_or_path", "") or "")


def is_known_checkpoint(name: str) -> bool:
    """True for a known block-fine-tuned hub id, also as the tail of a local path (``.../hxia7/Qwen3-8B-Block-FT``)."""
    name = name.strip().rstrip("/")
    return any(name == known or name.endswith("/" + known) for known in KNOWN_BLOCK_FINETUNED)


def is_block_finetuned(model: Any) -> bool:
    """Whether ``model`` was block-fine-tuned (recorded prompt config, or a known checkpoint name)."""
    record = getattr(getattr(model, "config", None), "block_attention", None)
    recorded = isinstance(record, Mapping) and isinstance(record.get("prompt_config"), Mapping)
    return recorded or is_known_checkpoint(model_name(model))


def quality_warning(name: str) -> str:
    """The one warning block mode logs for a model that was not block-fine-tuned."""
    shown = name or "this model"
    return (
        f"Block mode on {shown}, which was not block-fine-tuned (no recorded block_attention prompt config and not a "
        f"known checkpoint such as {sorted(KNOWN_BLOCK_FINETUNED)[0]}): expect a large loss of answer quality "
        "(published: Llama-3.2-1B exact match 0.06 in block mode vs 0.62 with full attention on 2WikiMultiHopQA; "
        "block-fine-tuned checkpoints lose 1-4 points). Remedies: block-fine-tune it with block_attention.finetune; "
        "or a training-free recovery option (recompute the first tokens of each block: EngineConfig(recompute_tokens=16), "
        "and/or a shared sink prefix: EngineConfig(sink='prefix'); both also per request); or use mode='full'. Measure the cost on your data with `block-attention eval`."
    )
