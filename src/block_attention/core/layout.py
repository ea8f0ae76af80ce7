"""Token layout of a block-attention prompt, and the attention structure that goes with it.

A prompt is ``[block_0][block_1]...[block_{m-1}][global tail]``: each block attends causally to itself only;
the global tail (final block, then any response/generated tokens) attends causally to everything before it.
Positions are one plain ``arange`` over the whole sequence, which is exactly where re-encoded block keys land
at inference. The same functions serve the inference oracle and the fine-tuning collator, so training and
inference can never disagree about the layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BlockSpan:
    """A cacheable block placed in a prompt: its doc id, its exact tokens, and its global start position."""

    doc_id: str
    token_ids: tuple[int, ...]
    offset: int

    @property
    def end(self) -> int:
        return self.offset + len(self.token_ids)


@dataclass(frozen=True)
class PromptLayout:
    """Blocks in prompt order plus the final (global) block."""

    blocks: tuple[BlockSpan, ...]
    final_ids: tuple[int, ...]

    @staticmethod
    def build(blocks: Sequence[tuple[str, Sequence[int]]], final_ids: Sequence[int]) -> "PromptLayout":
        spans: list[BlockSpan] = []
        offset = 0
        for doc_id, ids in blocks:
            spans.append(BlockSpan(doc_id, tuple(map(int, ids)), offset))
            offset += len(ids)
        return PromptLayout(tuple(spans), tuple(map(int, final_ids)))

    @property
    def context_len(self) -> int:
        """Tokens covered by cacheable blocks (the final block starts here)."""
        return self.blocks[-1].end if self.blocks else 0

    @property
    def total_len(self) -> int:
        return self.context_len + len(self.final_ids)

    @property
    def block_lengths(self) -> list[int]:
        return [len(b.token_ids) for b in self.blocks]

    def input_ids(self) -> list[int]:
        """The flat token sequence (identical for block and full mode)."""
        out: list[int] = []
        for b in self.blocks:
            out.extend(b.token_ids)
        out.extend(self.final_ids)
        return out


def block_causal_mask(block_lengths: Sequence[int], global_len: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Boolean ``[T, T]`` mask, True where query row may attend to key column.

    Rows of block ``b`` see the columns of block ``b`` up to the diagonal; the last ``global_len`` rows see every
    column up to the diagonal.
    """
    total = sum(block_lengths) + global_len
    causal = torch.ones(total, total, dtype=torch.bool, device=device).tril_()  # [T, T]
    segment = torch.full((total,), -1, dtype=torch.long, device=device)  # [T] block index, -1 = global
    start = 0
    for idx, n in enumerate(block_lengths):
        segment[start : start + n] = idx
        start += n
    same_block = segment[:, None] == segment[None, :]  # [T, T]
    is_global_row = (segment == -1)[:, None]  # [T, 1]
    return causal & (same_block | is_global_row)


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[..., T, T]`` boolean mask -> ``[B, 1, T, T]`` additive float mask (0 where allowed, dtype min elsewhere)."""
    if allowed.dim() == 2:
        allowed = allowed[None]
    zeros = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return zeros.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]  # [B, 1, T, T]


def layout_mask(layout: PromptLayout, extra_global: int = 0, dtype: torch.dtype = torch.float32,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """Additive ``[1, 1, T, T]`` block-attention mask of ``layout`` (+ ``extra_global`` tokens after the final block)."""
    allowed = block_causal_mask(layout.block_lengths, len(layout.final_ids) + extra_global, device)
    return additive_mask(allowed, dtype)
