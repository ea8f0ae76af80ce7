"""The wire form of a request's block structure: round trip, refusals that name the fix, and the cache salt."""

from __future__ import annotations

import pytest

from block_attention.core.errors import InvalidRequestError
from block_attention.vllm_connector.protocol import PARAM, BlockRef, BlockRequest, cache_salt, parse


def test_round_trip_and_spans():
    req = BlockRequest("serve", (BlockRef("prefix:ab", 4), BlockRef("d1", 7), BlockRef("d2", 3)))
    back = parse(req.to_params(), prompt_len=20)
    assert back == req
    assert back.context_len == 14
    assert [(b.doc_id, s, e) for b, s, e in back.spans()] == [("prefix:ab", 0, 4), ("d1", 4, 11), ("d2", 11, 14)]


def test_plain_requests_carry_no_structure():
    assert parse(None, 5) is None
    assert parse({}, 5) is None
    assert parse({"other_connector": {"x": 1}}, 5) is None


@pytest.mark.parametrize("raw, needle", [
    ({"v": 2, "role": "serve", "blocks": [{"id": "a", "n": 1}]}, "'v': 1"),
    ({"v": 1, "role": "load", "blocks": [{"id": "a", "n": 1}]}, "'serve' or 'encode'"),
    ({"v": 1, "role": "serve", "blocks": []}, "non-empty list"),
    ({"v": 1, "role": "serve", "blocks": [{"id": "a", "n": 0}]}, "positive int"),
    ({"v": 1, "role": "serve", "blocks": [{"id": 3, "n": 2}]}, "positive int"),
    ({"v": 1, "role": "serve", "blocks": [{"id": "a", "n": True}]}, "positive int"),
    ({"v": 1, "role": "serve", "blocks": [{"id": "a", "n": 5}]}, "non-empty final block"),
    ({"v": 1, "role": "encode", "blocks": [{"id": "a", "n": 4}]}, "whole prompt"),
    ({"v": 1, "role": "encode", "blocks": [{"id": "a", "n": 2}, {"id": "b", "n": 3}]}, "exactly one block"),
])
def test_malformed_structure_is_refused_with_the_fix(raw, needle):
    with pytest.raises(InvalidRequestError, match=needle):
        parse({PARAM: raw}, prompt_len=5)


def test_encode_request_spans_its_prompt():
    req = parse({PARAM: {"v": 1, "role": "encode", "blocks": [{"id": "a", "n": 5}]}}, prompt_len=5)
    assert req.role == "encode" and req.context_len == 5


def test_salt_depends_on_the_layout_only():
    a = BlockRequest("serve", (BlockRef("d1", 7), BlockRef("d2", 3)))
    assert cache_salt(a) == cache_salt(BlockRequest("serve", (BlockRef("d1", 7), BlockRef("d2", 3))))
    assert cache_salt(a) != cache_salt(BlockRequest("serve", (BlockRef("d2", 3), BlockRef("d1", 7))))  # reordered
    assert cache_salt(a) != cache_salt(BlockRequest("serve", (BlockRef("d1", 7), BlockRef("d2", 4))))
    assert cache_salt(a) != cache_salt(BlockRequest("serve", (BlockRef("d1", 10),)))  # same tokens, one block
