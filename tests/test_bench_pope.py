"""POPE scoring of a hand-made answer file and the official split-building rules on hand-made objects."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from vlalign.evaluate.answers import AnswerFileError
from vlalign.evaluate.pope import build_pope, parse_yes_no, parse_yes_no_official, score_pope

DATA = Path(__file__).parent / "data" / "bench"


@pytest.mark.parametrize("parse", ["official", "robust"])
def test_pope_by_hand(parse):
    # every answer here reads the same under both rules (worked out line by line below)
    m = score_pope(DATA / "pope_answers.jsonl", parse=parse)
    assert m["parse"] == parse
    # random: TP (yes/yes), TN, FN ("There is not a cat"), FP -> acc 2/4, P 1/2, R 1/2, F1 1/2, yes 2/4
    assert [m[f"random_{k}"] for k in ("accuracy", "precision", "recall", "f1", "yes_ratio")] == \
        pytest.approx([0.5, 0.5, 0.5, 0.5, 0.5])
    # popular: TP, FP ("Yes. No wait." keeps the first sentence), TP, TN -> acc 3/4, P 2/3, R 1,
    # F1 = 2 * 2/3 * 1 / (2/3 + 1) = 4/5, yes 3/4
    assert [m[f"popular_{k}"] for k in ("accuracy", "precision", "recall", "f1", "yes_ratio")] == \
        pytest.approx([0.75, 2 / 3, 1.0, 0.8, 0.75])
    # adversarial ("Adversarial" is read case-insensitively): TN, TP -> all 1, yes 1/2
    assert [m[f"adversarial_{k}"] for k in ("accuracy", "precision", "recall", "f1", "yes_ratio")] == \
        pytest.approx([1.0, 1.0, 1.0, 1.0, 0.5])
    assert m["accuracy"] == pytest.approx((0.5 + 0.75 + 1.0) / 3)
    assert m["f1"] == pytest.approx((0.5 + 0.8 + 1.0) / 3)
    assert m["yes_ratio"] == pytest.approx((0.5 + 0.75 + 0.5) / 3)
    assert (m["random_n"], m["popular_n"], m["adversarial_n"]) == (4, 4, 2)


# The official rule (POPE's evaluate.py, LLaVA's eval_pope.py): text before the first ".", commas deleted,
# split on single spaces; "no" iff a piece is exactly No, not or no. The robust rule lower-cases and looks
# for the words no / not (commas become spaces).
@pytest.mark.parametrize("answer, official, robust", [
    ("NO", True, False),  # the piece "NO" is none of No / not / no
    ("Not really.", True, False),  # "Not" is capitalised
    ("No!", True, False),  # the piece is "No!"
    ("(no)", True, False),
    ("no-one is there", True, False),  # "no-one" is one piece
    ("No\nThere is none", True, False),  # pieces "No\nThere", "is", "none"
    ("", True, True),  # empty answers are yes
    ("There is not a dog, no.", False, False),
    ("nope, no", False, False),  # comma deleted: "nope no" -> piece "no"
    ("Yes,no", True, False),  # comma deleted: "Yesno" (robust: "yes no")
    ("Yes. No", True, True),  # only the first sentence counts
    (" no", False, False),  # the leading space gives an empty piece, then "no"
])
def test_official_and_robust_yes_no(answer, official, robust):
    assert (parse_yes_no_official(answer), parse_yes_no(answer)) == (official, robust)


def test_pope_quirks_by_hand():
    # pope_quirks.jsonl holds the ten answers above (same order); labels: no x 8, then yes, yes.
    # official reads: yes x 7, no ("There is not a dog, no."), no ("nope, no"), yes ("Yes,no")
    #   TP 1 (Yes,no), FP 7, TN 1, FN 1 -> acc 2/10, P 1/8, R 1/2, F1 = 2PR/(P+R) = (1/8)/(5/8) = 0.2, yes 8/10
    m = score_pope(DATA / "pope_quirks.jsonl")
    assert [m[f"random_{k}"] for k in ("accuracy", "precision", "recall", "f1", "yes_ratio")] == \
        pytest.approx([0.2, 1 / 8, 0.5, 0.2, 0.8], abs=1e-12)
    assert m["parse"] == "official"
    # robust reads no for all but the empty answer: TP 0, FP 1 (the empty one), TN 7, FN 2 -> acc 0.7, P = R = F1 = 0
    r = score_pope(DATA / "pope_quirks.jsonl", parse="robust")
    assert [r[f"random_{k}"] for k in ("accuracy", "precision", "recall", "f1", "yes_ratio")] == \
        pytest.approx([0.7, 0.0, 0.0, 0.0, 0.1], abs=1e-12)
    with pytest.raises(ValueError, match="unknown parse mode 'strict'; use one of official, robust"):
        score_pope(DATA / "pope_quirks.jsonl", parse="strict")


def test_unknown_category_names_the_line(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"question_id": 1, "answer": "yes", "label": "yes", "category": "random"}\n'
                    '{"question_id": 2, "answer": "yes", "label": "yes", "category": "hard"}\n')
    with pytest.raises(AnswerFileError, match=r"line 2: unknown category \"hard\"; use one of random, popular"):
        score_pope(path)
    m = score_pope(path, skip_bad=True)
    assert m["skipped"] == {"bad_category": 1} and m["splits"] == ["random"] and m["accuracy"] == 1.0


OBJECTS = {
    "A": ["person", "dog", "frisbee", "person"],  # duplicates collapse: person, dog, frisbee
    "B": ["car", "person", "bus"],
    "C": ["dog", "cat"],  # fewer than 3 objects: never drawn
    "D": ["person", "car", "umbrella"],
}


def pairs(questions, image):
    return [(q["object"], q["label"]) for q in questions if q["image"] == image]


def test_build_pope_follows_the_official_rules():
    splits = build_pope(OBJECTS, n_images=None)
    # frequency over A, B, D: person 3, car 2, then dog, frisbee, bus, umbrella once (insertion order)
    assert pairs(splits["popular"], "A") == [("person", "yes"), ("car", "no"), ("dog", "yes"), ("bus", "no"),
                                             ("frisbee", "yes"), ("umbrella", "no")]
    assert pairs(splits["popular"], "B") == [("car", "yes"), ("dog", "no"), ("person", "yes"), ("frisbee", "no"),
                                             ("bus", "yes"), ("umbrella", "no")]
    # co-occurrence with car: person 2, bus 1, umbrella 1; with person: car 2, dog, frisbee, bus, umbrella 1;
    # with bus: car, person (both in B) -> falls back to a uniform draw from what is left: only frisbee
    assert pairs(splits["adversarial"], "B") == [("car", "yes"), ("umbrella", "no"), ("person", "yes"),
                                                 ("dog", "no"), ("bus", "yes"), ("frisbee", "no")]
    assert pairs(splits["adversarial"], "A")[:2] == [("person", "yes"), ("car", "no")]
    for split, questions in splits.items():
        assert len(questions) == 3 * 6 and not pairs(questions, "C")
        assert [q["question_id"] for q in questions] == list(range(1, 19))
        for image in "ABD":
            asked = [o for o, _ in pairs(questions, image)]
            negatives = [o for o, label in pairs(questions, image) if label == "no"]
            assert len(set(asked)) == 6 and not set(negatives) & set(OBJECTS[image]), split
    texts = {q["object"]: q["text"] for q in splits["popular"]}
    assert texts["umbrella"] == "Is there an umbrella in the image?"
    assert texts["car"] == "Is there a car in the image?"


def test_build_pope_draws_images_reproducibly():
    a, b = build_pope(OBJECTS, n_images=2, per_image=1, seed=3), build_pope(OBJECTS, n_images=2, per_image=1, seed=3)
    assert a == b and len({q["image"] for q in a["random"]}) == 2
    assert {q["image"] for q in build_pope(OBJECTS, n_images=4, per_image=1)["random"]} == set("ABCD")
    with pytest.raises(ValueError, match="only 3 images have at least 3 objects"):
        build_pope(OBJECTS, n_images=4)
    with pytest.raises(ValueError, match="image 'A': no object left to ask about"):
        build_pope({"A": ["x", "y"], "B": ["y", "x"]}, n_images=None, per_image=1)


OFFICIAL = DATA / "pope_official"


def test_llava_answer_files_take_labels_by_position_from_pope_files():
    # LLaVA's answers (question ids 0-5, answer in `text`) name no split and no label: the splits come from
    # llava_pope_test.jsonl, the labels from POPE's files in order (LLaVA numbers its questions anew)
    files = [OFFICIAL / "llava_pope_test.jsonl", OFFICIAL / "coco_pope_adversarial.json",
             OFFICIAL / "coco_pope_random.json"]
    m = score_pope(OFFICIAL / "llava_answers.jsonl", annotations=files)
    # adversarial: said yes, no, no ("There is not a cat."), no against yes, no, yes, no:
    #   TP 1, TN 2, FN 1 -> acc 3/4, P 1, R 1/2, F1 2/3, yes 1/4
    assert [m[f"adversarial_{k}"] for k in ("accuracy", "precision", "recall", "f1", "yes_ratio")] == \
        pytest.approx([0.75, 1.0, 0.5, 2 / 3, 0.25])
    # random: said yes, yes against no, yes: TP 1, FP 1 -> acc 1/2, P 1/2, R 1, F1 2/3, yes 1
    assert [m[f"random_{k}"] for k in ("accuracy", "precision", "recall", "f1", "yes_ratio")] == \
        pytest.approx([0.5, 0.5, 1.0, 2 / 3, 1.0])
    assert m["accuracy"] == pytest.approx((0.75 + 0.5) / 2) and m["splits"] == ["random", "adversarial"]
    # the folder holding the same files gives the same figures (the answer file in it has neither field)
    assert score_pope(OFFICIAL / "llava_answers.jsonl", annotations=[OFFICIAL])["accuracy"] == m["accuracy"]


def test_answers_with_pope_ids_take_labels_by_id(tmp_path):
    # answers to coco_pope_adversarial.json in another order: matched by id, not position
    path = tmp_path / "answers.jsonl"
    path.write_text("".join(json.dumps({"question_id": q, "answer": a}) + "\n"
                            for q, a in ((2, "No"), (1, "Yes"), (4, "Yes"), (3, "Yes"))))
    m = score_pope(path, annotations=[OFFICIAL / "coco_pope_adversarial.json"])
    # labels by id: 2 no (said no: TN), 1 yes (TP), 4 no (FP), 3 yes (TP) -> acc 3/4, P 2/3, R 1
    assert (m["splits"], m["adversarial_accuracy"], m["adversarial_precision"], m["adversarial_recall"]) == \
        (["adversarial"], 0.75, pytest.approx(2 / 3), 1.0)
    path.write_text(json.dumps({"question_id": 9, "answer": "No"}) + "\n")
    with pytest.raises(AnswerFileError, match="adversarial has 1 answers without a label but its question file has 4"):
        score_pope(path, annotations=[OFFICIAL / "coco_pope_adversarial.json"])


def test_question_files_keep_their_ids_and_need_no_split(tmp_path):
    from vlalign.evaluate.benchmarks import BENCHMARKS, EvalInputs

    pope = BENCHMARKS["pope"]
    qs = pope.questions(EvalInputs(OFFICIAL / "coco_pope_adversarial.json"))
    assert [q.question_id for q in qs] == [1, 2, 3, 4]  # 1 stays 1
    assert {q.record["category"] for q in qs} == {"adversarial"}  # from the file name
    plain = tmp_path / "questions.jsonl"
    plain.write_text((OFFICIAL / "coco_pope_random.json").read_text())
    assert [(q.question_id, q.record["category"]) for q in pope.questions(EvalInputs(plain))] == [(1, "all"), (2, "all")]
    # two split files in a folder number from 1 each: then the split is named in the id
    both = tmp_path / "both"
    both.mkdir()
    for name in ("coco_pope_adversarial.json", "coco_pope_random.json"):
        (both / name).write_text((OFFICIAL / name).read_text())
    assert [q.question_id for q in pope.questions(EvalInputs(both))][:2] == ["adversarial-1", "adversarial-2"]
    # answers to a question file with no split are scored as one split, `all`
    answers = tmp_path / "answers.jsonl"
    answers.write_text('{"question_id": 1, "label": "no", "answer": "No"}\n'
                       '{"question_id": 2, "label": "yes", "answer": "No"}\n')
    m = score_pope(answers)
    assert (m["splits"], m["all_accuracy"], m["accuracy"], m["all_n"]) == (["all"], 0.5, 0.5, 2)


def test_score_pope_prints_and_writes_an_interval_for_every_figure(tmp_path):
    from typer.testing import CliRunner

    from vlalign.cli import app

    out = tmp_path / "m.json"
    result = CliRunner().invoke(app, ["score", "pope", "--answers", str(DATA / "pope_answers.jsonl"),
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    m = json.loads(out.read_text())
    figures = [k for k, v in m.items() if isinstance(v, float)]
    assert len(figures) == 20 and set(m["intervals"]) == set(figures)  # 5 figures x (3 splits + mean)
    for k in figures:
        lo, hi = m["intervals"][k]
        assert lo <= m[k] <= hi, k
        assert re.search(rf"{k} +│ +{m[k]:.3f} \[{lo:.3f}, {hi:.3f}\]", result.output), k
    # the adversarial split's accuracy: both answers right, so every resample of its 2 questions is too
    assert m["intervals"]["adversarial_accuracy"] == [1.0, 1.0]
    assert m["bootstrap"]["unit"] == "question" and m["bootstrap"]["units"] == 10
    assert "intervals: 95%, 1000 bootstrap resamples of 10 questions" in result.output
    assert (tmp_path / "m.outcomes.json").is_file()
