"""AMBER on hand-made annotation, relation and safe-word files; numbers worked out in comments."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlalign.evaluate.amber import AmberData, amber_nouns, generative_counts, parse_amber_yes_no, score_amber
from vlalign.evaluate.answers import AnswerFileError

DATA = Path(__file__).parent / "data" / "bench"
AMBER = DATA / "amber"


def test_nouns_skip_modal_can_and_adjective_hot():
    data = AmberData.load([AMBER])
    text = "A man can stand by the trees. It is hot. A can lies on the grass."
    assert amber_nouns(text, data.vocabulary) == ["man", "tree", "can", "grass"]


def test_generative_counts_keep_the_first_match_quirk():
    data = AmberData.load([AMBER / name for name in ("annotations.json", "relation.json", "safe_words.txt")])
    c = generative_counts("A dog runs on the ground under the sky. A vehicle and a bird are nearby.",
                          ["grass", "ground", "dog"], ["car", "bird"], data)
    # nouns dog, ground, sky, vehicle, bird; sky is a safe word; "ground" is first found as grass's associate,
    # so it covers grass (not ground); vehicle (car's associate) and bird are hallucinations that cover both
    # hallucination targets
    assert c == {"nouns": 5, "hallucinated": 2, "covered": 2, "truth": 3, "cognised": 2, "targets": 2}
    # with a similarity function (the reference's spaCy step), a near word covers the true object
    assert generative_counts("A bird.", ["dog"], ["cat"], data)["hallucinated"] == 1
    near = generative_counts("A bird.", ["dog"], ["cat"], data, similar=lambda a, b: {a, b} == {"bird", "dog"})
    assert (near["hallucinated"], near["covered"]) == (0, 1)


@pytest.mark.parametrize("answer, said", [("Yes.", "yes"), ("No, there is none.", "no"), ("yes", "yes"),
                                          ("There are three.", "other"), ("", "other")])
def test_parse_amber_yes_no(answer, said):
    assert parse_amber_yes_no(answer) == said


def test_amber_by_hand():
    m = score_amber(DATA / "amber_answers.jsonl", [AMBER])
    # generative (ids 1, 2, 8): nouns 5 + 4 + 1, hallucinated 2 + 2 + 0 (id 2: "can" and grass)
    assert m["chair"] == pytest.approx(4 / 10)
    assert m["cover"] == pytest.approx((2 + 2 + 1) / (3 + 2 + 1))
    assert m["hal"] == pytest.approx(2 / 3)
    assert m["cog"] == pytest.approx((2 + 0 + 0) / (2 + 2 + 1))
    # yes/no (answer, truth): (yes, yes) (no, no) (yes, no) (other, yes) (no, no); "no" is positive:
    # right 3 of 5, said no 2 (both right), truth no 3 -> P 1, R 2/3, F1 = 2 * 2/3 / (5/3) = 0.8
    assert (m["accuracy"], m["precision"], m["recall"], m["f1"]) == pytest.approx((0.6, 1.0, 2 / 3, 0.8))
    assert (m["existence_accuracy"], m["existence_f1"], m["relation_f1"]) == (1.0, 1.0, 1.0)
    # attribute: state (yes for no) and number (other for yes) both wrong, nobody said no
    assert (m["attribute_accuracy"], m["attribute_precision"], m["attribute_n"]) == (0.0, 0.0, 2)
    assert m["amber_score"] == pytest.approx((1 - 0.4 + 0.8) / 2)
    assert m["unparsed"] == 1


def test_unknown_question_id_names_the_line(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"question_id": 3, "answer": "Yes"}\n{"question_id": 99, "answer": "No"}\n')
    with pytest.raises(AnswerFileError, match="line 2: question_id 99 is not an id in AMBER's annotations"):
        score_amber(path, [AMBER])
    with pytest.raises(FileNotFoundError, match="AMBER needs relation.json, safe_words.txt"):
        score_amber(path, [AMBER / "annotations.json"])
