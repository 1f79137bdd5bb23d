"""VL-RewardBench on hand-made pairs in its released format (the records of its data.jsonl), scored by the
rules of its inference.py and cal.py; and `vlalign eval vl-rewardbench` with the world's judge and labeler."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from vlalign.cli import app
from vlalign.evaluate.feedback import read_pairwise, swapped
from vlalign.evaluate.vl_rewardbench import vl_rewardbench_result


def pair(pid: str, source: str, responses: tuple[str, str], ranking: list[int], reply: str) -> dict:
    return {"id": pid, "image_path": f"images/{source}/{pid}.jpg", "query": "What is in the image?",
            "response": list(responses), "human_ranking": ranking, "models": ["a", "b"], "judge": "human",
            "rationale": None, "query_source": "COCO", "meta": {}, "answer": reply}


PAIRS = [
    # group, shown swapped?, the better one, the reply
    pair("p1", "rlaif-v", ("The cat sits on a red mat.", "A dog sleeps on the couch."), [0, 1],
         "Answer 1 names the cat.\nOverall Judgment: Answer 1 is better."),  # right
    pair("p2", "vlfeedback", ("Two people ride bikes.", "Three people walk dogs."), [1, 0],
         "**Overall Judgment**: Answer 2 is better."),  # shown swapped: Answer 2 is the first, rejected: wrong
    pair("p3", "reasoning_tasks", ("The answer is 12.", "The answer is 13."), [0, 1],
         "I think answer 1 is better."),  # no "Overall Judgment" / "Therefore": no verdict
    pair("p4", "povid", ("A plate with a fork.", "A plate with spoons."), [1, 0],
         "Therefore, Answer 3 is better."),  # not the rejected answer's number: right in inference.py's rule
    pair("p5", "wildvision-battle", ("A sunny beach.", "A rainy street"), [0, 1],
         "Overall Judgment:\n**Answer 1** is slightly better."),  # right
    pair("p6", "reasoning_tasks", ("x = 4", "x = 5"), [1, 0], "Overall Judgment: Answer 2 is better"),  # right
]


def test_the_pairs_are_shown_as_the_comments_say():
    assert [swapped(p["response"]) for p in PAIRS] == [False, True, False, False, False, False]


@pytest.mark.parametrize("reply, number", [
    ("Overall Judgment: Answer 2 is better.", 2),
    ("**Overall Judgment:** Answer 1 is the better one", 1),
    ("Therefore answer 2 is slightly better", 2),
    ("Overall Judgment: Answer 2 is better. Therefore, Answer 1 is better.", 1),  # the last verdict after the first
    ("Overall\nJudgment: Answer 1 is better.", None),  # newlines are removed: "OverallJudgment" matches nothing
    ("Answer 1 is better.", None),
])
def test_read_pairwise(reply, number):
    assert read_pairwise(reply) == number


def test_official_and_robust_by_hand(tmp_path):
    path = tmp_path / "answers.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    m = vl_rewardbench_result(path).metrics
    # official: p3 has no verdict and is left out; general p2 wrong, p5 right -> 1/2; hallucination p1, p4 right
    # -> 1; reasoning p6 right -> 1; overall 4/5; macro (1/2 + 1 + 1) / 3
    assert (m["general_accuracy"], m["hallucination_accuracy"], m["reasoning_accuracy"]) == (0.5, 1.0, 1.0)
    assert (m["overall_accuracy"], m["macro_accuracy"]) == (0.8, pytest.approx(2.5 / 3))
    assert (m["pairs"], m["counted"], m["unparsed"]) == (6, 5, 1)
    # robust: p3 counts wrong and p4 (Answer 3) too: every group 1 of 2
    r = vl_rewardbench_result(path, parse="robust").metrics
    assert (r["general_accuracy"], r["hallucination_accuracy"], r["reasoning_accuracy"]) == (0.5, 0.5, 0.5)
    assert (r["overall_accuracy"], r["macro_accuracy"], r["counted"]) == (0.5, 0.5, 6)
    assert set(r["intervals"]) == {k for k, v in r.items() if isinstance(v, float)}


def test_a_pair_with_no_group_is_named(tmp_path):
    path = tmp_path / "answers.jsonl"
    path.write_text(json.dumps({**PAIRS[0], "image_path": "images/elsewhere/p1.jpg"}) + "\n")
    with pytest.raises(ValueError, match="line 1: pair 'p1': no group for image_path 'images/elsewhere/p1.jpg'"):
        vl_rewardbench_result(path)


def world_pairs(folder: Path, n: int = 3) -> Path:
    """A small file in VL-RewardBench's format about world scenes: the exact description against one naming
    absent partners, the better one first or second."""
    from vlalign.world.metrics import held_out_scenes
    from vlalign.world.render import render
    from vlalign.world.text import describe

    (folder / "images" / "rlaif-v").mkdir(parents=True)
    rows = []
    for k, scene in enumerate(held_out_scenes("dev", n)):
        render(scene).save(folder / "images" / "rlaif-v" / f"{scene.id}.png")
        rng = np.random.default_rng(k)
        good, bad = describe(scene, rng), describe(scene, rng, hallucination=1.0)
        responses, ranking = ([good, bad], [0, 1]) if k % 2 == 0 else ([bad, good], [1, 0])
        rows.append({"id": f"RLAIF-V-{k}", "image_path": f"images/rlaif-v/{scene.id}.png",
                     "query": "describe the image in detail.", "response": responses, "human_ranking": ranking,
                     "models": ["world", "world"], "judge": "scene graph", "rationale": None, "query_source": "world",
                     "meta": {}})
    path = folder / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("feedback", [["--judge", "world:judge", "--judge-style", "world"],
                                      ["--labeler", "world:labeler", "--splitter", "world"]])
def test_eval_vl_rewardbench_with_the_world_judge_and_labeler(tmp_path, feedback):
    data = world_pairs(tmp_path)
    out = tmp_path / "m.json"
    result = CliRunner().invoke(app, ["eval", "vl-rewardbench", *feedback, "--data", str(data),
                                      "--images", str(tmp_path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    m = json.loads(out.read_text())
    answers = [json.loads(line) for line in (tmp_path / "m.answers.jsonl").read_text().splitlines()]
    assert len(answers) == 3 and all(a["choice"] in (1, 2, None) and a["swapped"] is False for a in answers)
    # the figures are those of the verdicts the answer file records: right when the choice is the better one
    chosen = [a for a in answers if a["choice"] is not None]
    right = [a["choice"] - 1 == a["human_ranking"].index(0) for a in chosen]
    assert m["counted"] == len(chosen) and m["unparsed"] == 3 - len(chosen)
    if chosen:
        assert m["overall_accuracy"] == pytest.approx(sum(right) / len(right))
        assert m["hallucination_accuracy"] == m["overall_accuracy"]
    assert m["model"] == m["feedback"] and m["feedback"].startswith("labeler:world:labeler" if "--labeler" in feedback
                                                                      else "model:world:judge")
    assert (tmp_path / "m.outcomes.json").is_file() or not chosen
