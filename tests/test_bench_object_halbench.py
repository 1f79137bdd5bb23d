"""Object HalBench as RLAIF-V reports it, through a scripted judge on hand-made COCO files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlalign.evaluate.answers import AnswerFileError
from vlalign.evaluate.object_halbench import refined_vocabulary, score_object_halbench
from vlalign.feedback.judge import ChatReply

COCO = Path(__file__).parent / "data" / "bench" / "coco"


class ScriptedJudge:
    """Replies with the object list of the first key found in the prompt; None is a failed request."""

    name = "scripted"

    def __init__(self, replies: dict[str, str | None]):
        self.replies = replies
        self.prompts: list[str] = []

    def complete(self, requests):
        self.prompts += [r.prompt for r in requests]
        texts = [next(v for k, v in self.replies.items() if k in r.prompt) for r in requests]
        return [ChatReply(t) if t is not None else ChatReply(None, error="boom") for t in texts]


def write(tmp_path: Path, rows: list[dict]) -> Path:
    path = tmp_path / "answers.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_refined_vocabulary_repairs_spaces_and_adds_words():
    v = refined_vocabulary()
    assert v.synonyms["motor bike"] == "motorcycle" and v.synonyms["cheesecake"] == "cake"
    assert v.synonyms["iPhone"] == "cell phone" and "iphone" not in v.synonyms  # the capital is kept
    assert v.synonyms["coffee table"] == "dining table" and v.synonyms["pedestrian"] == "person"


def test_object_halbench_by_hand(tmp_path):
    path = write(tmp_path, [
        {"question_id": 1, "image_id": 1, "question": "Describe.", "answer": "A man and his dogs on a bench with a cat."},
        {"question_id": 2, "image_id": 2, "question": "Describe.", "answer": "A wooden table, chairs and two cats."},
        {"question_id": 3, "image_id": 3, "question": "Describe.", "answer": "Cars."},
        {"question_id": 4, "image_id": 3, "question": "Describe.", "answer": "Assistant: A quiet empty street at night."},
    ])
    judge = ScriptedJudge({"his dogs": '["man", "dogs", "bench", "cat"]',
                           "wooden table": '```json\n["wooden table", "chairs", "cats", "coffee table"]\n```',
                           "quiet empty": "[]"})
    m = score_object_halbench(path, [COCO], judge)
    # truths: 1 {person, dog, bench}, 2 {dining table, chair, cup}, 3 {car, traffic light} (twice)
    # 1: person, dog, bench, cat* -> 4 mentions, 1 bad; distinct right 3
    # 2: table and coffee table (both dining table), chair, cat* -> 4 mentions, 1 bad; distinct right 2
    # 3: three words or fewer: no judge, no objects; 4: the judge lists none
    assert len(judge.prompts) == 3
    assert (m["chair_s"], m["chair_s_refine"], m["chair_i"]) == pytest.approx((2 / 4, 2 / 2, 2 / 8), abs=1e-12)
    # recall: (3 + 2) right over 3 + 3 + 2 + 2 truth objects
    assert m["recall"] == pytest.approx(5 / 10, abs=1e-12)
    # words split on single spaces, "Assistant:" removed: 11, 7, 1, 6
    assert m["avg_word_len"] == pytest.approx(25 / 4, abs=1e-12)
    assert (m["sentence_num"], m["coco_sentence_num"], m["coco_word_count"], m["gt_word_count"]) == (4, 2, 5, 10)
    assert (m["response_hall_pct"], m["object_hall_pct"], m["object_recall_pct"]) == (100.0, 25.0, 50.0)
    assert (m["response_correct_pct"], m["object_correct_pct"]) == (0.0, 75.0)
    # the phrase mapping is not RLAIF-V's spaCy step, and the output says so
    assert m["approximate"] and any("en_core_web_trf" in why for why in m["approximate_because"])
    assert m["judge"] == "scripted" and m["parse"] == "official"


def test_object_halbench_needs_a_judge_and_counts_failures(tmp_path):
    path = write(tmp_path, [
        {"question_id": 1, "image_id": 1, "answer": "A man and his dogs on a bench."},
        {"question_id": 2, "image_id": 1, "answer": "The judge fails on this one."},
    ])
    with pytest.raises(AnswerFileError, match="extracts objects with a judge"):
        score_object_halbench(path, [COCO], None)
    m = score_object_halbench(path, [COCO], ScriptedJudge({"his dogs": '["man"]', "fails": None}))
    assert m["judge_skipped"] == {"judge_error": 1} and m["sentence_num"] == 1 and m["chair_s"] == 0.0
