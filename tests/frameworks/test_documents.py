"""Document keying shared by the integrations: ids, content digests, duplicate ids, blank documents."""

from __future__ import annotations

from block_attention.core.blocks import text_digest
from block_attention.frameworks.documents import DocumentRef, documents_to_blocks


def test_keys_titles_scores_and_blanks() -> None:
    blocks = documents_to_blocks([DocumentRef("a", "id-a", title="T", score=1), DocumentRef("  "),
                                  DocumentRef("b")])
    assert [(b.doc_id, b.key, b.title, b.score) for b in blocks] == [
        ("id-a", "id-a", "T", 1.0), (None, "text:" + text_digest("b"), None, None)]


def test_shared_id_with_different_text_is_keyed_by_content() -> None:
    refs = [DocumentRef("chunk one", "file.md"), DocumentRef("chunk two", "file.md"), DocumentRef("x", "other")]
    keys = [b.key for b in documents_to_blocks(refs)]
    assert keys == [f"file.md#{text_digest('chunk one')}", f"file.md#{text_digest('chunk two')}", "other"]
    assert [b.key for b in documents_to_blocks(refs[::-1])] == keys[::-1]  # independent of order


def test_shared_id_with_same_text_is_one_passage() -> None:
    refs = [DocumentRef("same", "d"), DocumentRef("same", "d")]
    assert [b.key for b in documents_to_blocks(refs)] == ["d", "d"]
    assert [b.key for b in documents_to_blocks([DocumentRef("a", "d"), DocumentRef("b", "d")],
                                               duplicates="error")] == ["d", "d"]
