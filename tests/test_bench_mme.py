"""MME scoring on a hand-made answer file: acc, acc+ (per image) and the totals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlalign.evaluate.answers import AnswerFileError
from vlalign.evaluate.mme import parse_mme, score_mme

DATA = Path(__file__).parent / "data" / "bench"


@pytest.mark.parametrize("answer, label", [
    ("Yes", "yes"), ("no", "no"), ("Yes, it is.", "yes"), ("No, there is not.", "no"),
    ("Not sure", "no"),  # the reference reads the first four characters: "not " holds "no"
    ("There are two", "other"), ("I think yes", "other"),
])
def test_parse_mme(answer, label):
    assert parse_mme(answer) == label


def test_mme_by_hand():
    m = score_mme(DATA / "mme_answers.jsonl")
    # existence: e1 both right; e2 "No, there is not." for yes is wrong -> acc 3/4, acc+ 1/2, score 75 + 50
    assert (m["existence_acc"], m["existence_acc_plus"], m["existence_score"]) == pytest.approx((0.75, 0.5, 125.0))
    # count: "Not sure" (no) for yes, "There are two" (other) for no -> acc 0, acc+ 0, one "other"
    assert (m["count_acc"], m["count_acc_plus"], m["count_score"], m["count_other"]) == (0.0, 0.0, 0.0, 1)
    # code_reasoning: yes right, "Yes" for no wrong -> acc 1/2, acc+ 0, score 50
    assert m["code_reasoning_score"] == pytest.approx(50.0)
    assert (m["perception"], m["cognition"], m["total"]) == pytest.approx((125.0, 50.0, 175.0))
    assert (m["perception_subtasks"], m["cognition_subtasks"], m["other"]) == (2, 1, 1)


def write(tmp_path, rows):
    path = tmp_path / "mme.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_an_image_needs_two_questions(tmp_path):
    rows = [{"question_id": i, "category": "color", "image": "x.jpg", "label": "yes", "answer": "yes"}
            for i in range(3)] + [{"question_id": 9, "category": "color", "image": "y.jpg", "label": "no",
                                   "answer": "no"}, {"question_id": 10, "category": "color", "image": "y.jpg",
                                                     "label": "yes", "answer": "no"}]
    path = write(tmp_path, rows)
    with pytest.raises(AnswerFileError, match=r"line 1: color image 'x.jpg' has 3 question\(s\) \(lines 1, 2, 3\)"):
        score_mme(path)
    m = score_mme(path, skip_bad=True)
    # x.jpg is left out (counted once); y.jpg: 1 of 2 right -> acc 1/2, acc+ 0
    assert m["skipped"] == {"not_two_questions": 1}
    assert m["color_score"] == pytest.approx(50.0)


def test_unknown_subtask_names_the_line(tmp_path):
    path = write(tmp_path, [{"question_id": 1, "category": "existance", "image": "x", "label": "yes", "answer": "y"}])
    with pytest.raises(AnswerFileError, match=r"line 1: unknown category \"existance\""):
        score_mme(path)
