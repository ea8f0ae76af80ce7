"""Loading evaluation data: both formats, limits, and clear errors for malformed files."""

import json

import pytest

from block_attention.core.errors import BlockAttentionError
from block_attention.evaluation.data import DataFormatError, load_examples

RECORD = {"question": "Who lit the lamp?", "answers": ["the keeper"],
          "blocks": [{"id": "d1", "title": "Keepers", "text": "The keeper lit the lamp."}, {"text": "Other text."}]}


def _jsonl(tmp_path, records, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n", encoding="utf-8")
    return path


def test_jsonl_format(tmp_path):
    second = {**RECORD, "question": "Second?", "answers": "one string"}
    examples = load_examples(_jsonl(tmp_path, [RECORD, second]))
    assert [e.question for e in examples] == ["Who lit the lamp?", "Second?"]
    first = examples[0]
    assert first.answers == ("the keeper",) and examples[1].answers == ("one string",)
    assert first.blocks[0].doc_id == "d1" and first.blocks[0].title == "Keepers"
    assert first.blocks[1].doc_id is None and first.blocks[1].title is None
    assert [e.id for e in examples] == ["0", "1"]


def test_ctxs_json_format(tmp_path):
    records = [{"question": f"Q{i}?", "answers": ["a", "b"], "ctxs": [{"title": "", "text": f"passage {i}"}]}
               for i in range(5)]
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    examples = load_examples(path, limit=3)
    assert [e.question for e in examples] == ["Q0?", "Q1?", "Q2?"]
    assert examples[0].blocks[0].title is None  # empty titles render untitled
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"data": records}), encoding="utf-8")
    assert len(load_examples(wrapped)) == 5


def test_shared_musique_loads():
    from pathlib import Path

    path = Path(__file__).resolve().parents[3] / "shared" / "data" / "musique_s.json"
    if not path.exists():
        pytest.skip("../shared/data/musique_s.json is not present in this checkout")
    examples = load_examples(path)
    assert len(examples) == 150 and all(len(e.blocks) == 10 for e in examples)
    assert all(e.answers and e.question for e in examples)


@pytest.mark.parametrize("content, fragment", [
    ("", "is empty"),
    ("[]", "holds no examples"),
    ('{"question": "q", "answers": ["a"], "blocks": [{"text": "t"}]}\n{not json', "line 2 is not valid JSON"),
    ('"just a string"', "expected a JSON list"),
    ('[{"answers": ["a"], "ctxs": [{"text": "t"}]}]', "'question' is missing"),
    ('[{"question": "q", "answers": [], "ctxs": [{"text": "t"}]}]', "'answers' is missing"),
    ('[{"question": "q", "answers": [3], "ctxs": [{"text": "t"}]}]', "'answers' is missing"),
    ('[{"question": "q", "answers": ["a"]}]', "'blocks'/'ctxs' is missing"),
    ('[{"question": "q", "answers": ["a"], "ctxs": [{"text": "  "}]}]', "passage 0"),
    ('[{"question": "q", "answers": ["a"], "ctxs": [{"text": "t", "title": 5}]}]', "'title' must be a string"),
    ('[7]', "expected a JSON object"),
])
def test_malformed_files_raise_clear_errors(tmp_path, content, fragment):
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataFormatError, match=fragment) as info:
        load_examples(path)
    assert isinstance(info.value, BlockAttentionError)
    assert str(path) in str(info.value)


def test_missing_file_and_bad_limit(tmp_path):
    with pytest.raises(DataFormatError, match="does not exist"):
        load_examples(tmp_path / "nope.jsonl")
    with pytest.raises(DataFormatError, match="limit"):
        load_examples(_jsonl(tmp_path, [RECORD]), limit=0)
