"""Batch planning of block encoding: budget respected, little padding, every block exactly once."""

from block_attention.engine.encode import MIN_FILL, plan_batches


def test_plan_batches_respects_budget_and_fill():
    lengths = [260, 255, 67, 250, 258, 30, 240]
    batches = plan_batches(lengths, max_batch_tokens=800)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        longest = max(lengths[i] for i in batch)
        assert len(batch) * longest <= 800 or len(batch) == 1
        assert all(lengths[i] >= MIN_FILL * longest for i in batch)
    assert [2] in batches and [5] in batches  # short blocks are not padded to passage width


def test_plan_batches_single_oversized_block():
    assert plan_batches([5000, 10], max_batch_tokens=100) == [[0], [1]]
