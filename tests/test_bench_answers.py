"""Reading answer files: every bad line is an error naming the file, line, field and fix, or is counted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlalign.evaluate.answers import (
    YES_NO_LABEL,
    AnswerFileError,
    Field,
    Issues,
    read_answers,
    validate,
)

CATEGORY = Field("category", "the split", choices=("random", "popular"), lower=True)


def write(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "answers.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_reads_records_with_line_numbers_and_normalises_choices(tmp_path):
    path = write(tmp_path, json.dumps({"question_id": 1, "answer": "yes", "label": "Yes", "category": "RANDOM"}),
                 "", json.dumps({"question_id": "b", "answer": "no", "label": "no", "category": "popular"}))
    a, b = read_answers(path, [YES_NO_LABEL, CATEGORY])
    assert (a.line, a.question_id, a["label"], a["category"]) == (1, 1, "yes", "random")
    assert (b.line, b.question_id, b.answer) == (3, "b", "no")  # the blank line 2 is not a record


@pytest.mark.parametrize("line, words", [
    ('{"question_id": 1, "label": "yes"}', ["line 2", "missing field 'answer'", "every line needs"]),
    ('{"question_id": 1, "answer": "x", "label": "maybe"}', ["line 2", "unknown label", "yes, no"]),
    ('{"question_id": 1, "answer": 3, "label": "no"}', ["line 2", "'answer' must be a string"]),
    ('{"question_id": true, "answer": "x", "label": "no"}', ["line 2", "'question_id' must be a string or integer"]),
    ('{"question_id": 1, "answer": "x", "label": "no"', ["line 2", "not valid JSON"]),
    ('["a list"]', ["line 2", "expected a JSON object"]),
    ('{"question_id": 0, "answer": "x", "label": "no"}', ["line 2", "already used on line 1"]),
])
def test_bad_line_is_an_error_naming_line_and_fix(tmp_path, line, words):
    path = write(tmp_path, '{"question_id": 0, "answer": "fine", "label": "yes"}', line)
    with pytest.raises(AnswerFileError) as e:
        read_answers(path, [YES_NO_LABEL])
    assert str(path) in str(e.value)
    for w in words:
        assert w in str(e.value)


def test_empty_and_missing_files(tmp_path):
    with pytest.raises(AnswerFileError, match="no answers in the file"):
        read_answers(write(tmp_path, "", "  "))
    with pytest.raises(FileNotFoundError, match="no answers file"):
        read_answers(tmp_path / "absent.jsonl")


def test_skip_mode_counts_bad_lines_by_reason(tmp_path):
    path = write(tmp_path,
                 '{"question_id": 1, "answer": "yes", "label": "yes"}',
                 '{"question_id": 2, "answer": "yes"}',
                 '{"question_id": 3, "answer": "yes", "label": "perhaps"}',
                 'not json',
                 '{"question_id": 4, "answer": "no", "label": "no"}')
    issues = Issues(str(path), skip=True)
    kept = read_answers(path, [YES_NO_LABEL], issues)
    assert [a.question_id for a in kept] == [1, 4]
    # one of each reason, on lines 2, 3 and 4
    assert issues.report() == {
        "skipped": {"missing_field": 1, "bad_label": 1, "invalid_json": 1},
        "skipped_lines": {"missing_field": [2], "bad_label": [3], "invalid_json": [4]},
    }
    nothing = Issues(str(path), skip=True)
    with pytest.raises(AnswerFileError, match="nothing left to score"):
        nothing.require(validate(kept, [Field("image", "the image")], nothing))
