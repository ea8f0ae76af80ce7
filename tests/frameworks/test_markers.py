"""Block markers round-trip any id/title/text; broken spans and plain prompts are handled as documented."""

from __future__ import annotations

import pytest

from block_attention import Block
from block_attention.frameworks.markers import (BLOCK_SEPARATOR, format_blocks, looks_like_flat_context,
                                                 mark_block, split_prompt)

ODD_ID = "docs/a b⟧ c#1?x=\n"


def test_marked_blocks_round_trip_inside_a_template() -> None:
    blocks = [Block("First passage.\n\nTwo paragraphs.", ODD_ID, title="A ⟦title⟧", score=0.25),
              Block("Second passage.")]
    prompt = f"Use the context.\n\nContext:\n{format_blocks(blocks)}\n\nQuestion: why?\nAnswer:"
    split = split_prompt(prompt)
    assert list(split.blocks) == blocks and not split.broken
    assert split.rest == "Use the context.\n\nContext:\n\nQuestion: why?\nAnswer:"


def test_plain_prompt_is_unchanged() -> None:
    prompt = "  Question:\n\n\n\nwhy?  "
    assert split_prompt(prompt).rest == prompt and split_prompt(prompt).blocks == ()


def test_cut_span_stays_text_without_markers() -> None:
    whole = mark_block("alpha beta gamma", "k1")
    cut = whole[: len(whole) // 2]
    split = split_prompt(f"{cut}\n\n{mark_block('delta', 'k2')}\n\nQ?")
    assert [b.doc_id for b in split.blocks] == ["k2"] and split.broken
    assert "\u27e6" not in split.rest and "alpha" in split.rest and split.rest.endswith("Q?")


def test_separator_form_still_splits() -> None:
    split = split_prompt(f"doc one{BLOCK_SEPARATOR}doc two{BLOCK_SEPARATOR}the question")
    assert [b.text for b in split.blocks] == ["doc one", "doc two"] and split.rest == "the question"


@pytest.mark.parametrize(("text", "flat"), [
    ("Context information is below.\n\n" + "A passage about towers. " * 10 + "\n\n" + "Another one. " * 20
     + "\n\nQuery: who?", True),
    ("Who built the lighthouse?", False),
    ("Write a story.\n\n" + "words " * 100 + "\n\n" + "more " * 20, False),
])
def test_flat_context_heuristic(text: str, flat: bool) -> None:
    assert looks_like_flat_context(text) is flat
