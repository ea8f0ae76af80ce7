"""Layout and mask: the block-structured mask is exactly what the paper specifies."""

import torch

from block_attention.core.layout import PromptLayout, additive_mask, block_causal_mask, layout_mask


def test_block_causal_mask_matches_hand_written():
    got = block_causal_mask([2, 3], global_len=2).int()
    want = torch.tensor([
        [1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
        [0, 0, 1, 0, 0, 0, 0],
        [0, 0, 1, 1, 0, 0, 0],
        [0, 0, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1, 1, 1],
    ])
    assert torch.equal(got, want)


def test_layout_offsets_and_ids():
    layout = PromptLayout.build([("a", [5, 6]), ("b", [7, 8, 9])], [1, 2])
    assert [b.offset for b in layout.blocks] == [0, 2]
    assert layout.context_len == 5 and layout.total_len == 7
    assert layout.input_ids() == [5, 6, 7, 8, 9, 1, 2]
    mask = layout_mask(layout, extra_global=1)
    assert mask.shape == (1, 1, 8, 8)
    assert mask[0, 0, 2, 1] == torch.finfo(torch.float32).min  # block b cannot see block a
    assert mask[0, 0, 7, 0] == 0  # generated token sees everything


def test_additive_mask_values():
    allowed = torch.tensor([[True, False], [True, True]])
    m = additive_mask(allowed, torch.bfloat16)
    assert m.dtype == torch.bfloat16 and m.shape == (1, 1, 2, 2)
    assert m[0, 0, 0, 1] == torch.finfo(torch.bfloat16).min and m[0, 0, 1, 0] == 0
