"""Record types and JSONL I/O: malformed lines are reported with their line number."""

import json

import pytest
from pydantic import ValidationError

from aligners.schema import Pair, Provenance, RecordError, iter_jsonl, read_jsonl, write_jsonl


def pair(i=1, **kw):
    data = {
        "id": f"p{i}", "criterion": "harmless", "topic": "t", "prompt": "q", "misaligned": "bad", "critique": "c",
        "aligned": "good", "source": Provenance(teacher="human"),
    }
    return Pair(**{**data, **kw})


def test_round_trip(tmp_path):
    path = tmp_path / "pairs.jsonl"
    assert write_jsonl(path, [pair(1), pair(2)]) == 2
    assert read_jsonl(path, Pair) == [pair(1), pair(2)]
    assert not list(tmp_path.glob(".*tmp"))


def test_bad_lines_are_reported_with_line_numbers_and_the_rest_survive(tmp_path):
    path = tmp_path / "pairs.jsonl"
    good = pair(1).model_dump_json()
    path.write_text("\n".join([good, "{not json", "[1, 2]", json.dumps({"id": "x"}), "", good]) + "\n")
    items = list(iter_jsonl(path, Pair))
    errors = [i for i in items if isinstance(i, RecordError)]
    assert [e.line for e in errors] == [2, 3, 4]
    assert "invalid JSON" in errors[0].reason
    assert "expected a JSON object" in errors[1].reason
    assert "prompt" in errors[2].reason and "Field required" in errors[2].reason
    assert sum(isinstance(i, Pair) for i in items) == 2
    with pytest.raises(RecordError, match=r"pairs.jsonl:2: invalid JSON"):
        read_jsonl(path, Pair)


def test_keep_as_is_pairs_must_be_identical():
    assert pair(misaligned="same", aligned="same", needs_correction=False).needs_correction is False
    with pytest.raises(ValidationError, match="misaligned == aligned"):
        pair(needs_correction=False)


def test_unknown_fields_are_rejected():
    with pytest.raises(ValidationError, match="Extra inputs"):
        Pair.model_validate({**pair().model_dump(), "answer": "typo field"})
