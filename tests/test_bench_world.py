"""The world's benchmarks through the same scorers and `vlalign eval` (a tiny random-weight world model)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from vlalign.cli import app
from vlalign.evaluate.answers import AnswerFileError
from vlalign.evaluate.benchmarks import BENCHMARKS, EvalInputs
from vlalign.evaluate.pope import score_pope
from vlalign.world.bench import score_world_attributes, score_world_chair
from vlalign.world.scene import Obj, Scene


def scene(*shapes: str, seed: int = 0) -> dict:
    return Scene(tuple(Obj(s, "red", "big", i, 0) for i, s in enumerate(shapes)), seed, "test").to_dict()


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_world_chair_by_hand(tmp_path):
    path = write(tmp_path / "a.jsonl", [
        {"question_id": 1, "scene": scene("circle", "square"), "answer": "a circle and two stars."},
        {"question_id": 2, "scene": scene("triangle"), "answer": "a triangle."},
    ])
    m = score_world_chair(path)
    # mentions: circle, star* | triangle -> CHAIR_s 1/2, CHAIR_i 1/3; recall (circle + triangle) / 3 shapes
    assert (m["chair_s"], m["chair_i"], m["object_recall"]) == pytest.approx((0.5, 1 / 3, 2 / 3))
    write(path, [{"question_id": 1, "scene": {"objects": [{"shape": "circle"}]}, "answer": "x"}])
    with pytest.raises(AnswerFileError, match="line 1: field 'scene' is not a world scene"):
        score_world_chair(path)


def test_world_attributes_and_pope_by_hand(tmp_path):
    path = write(tmp_path / "a.jsonl", [
        {"question_id": 1, "kind": "color", "truth": "red", "answer": "it is red."},
        {"question_id": 2, "kind": "color", "truth": "red", "answer": "red and blue."},  # names another colour
        {"question_id": 3, "kind": "count", "truth": "two", "answer": "there are two."},
    ])
    m = score_world_attributes(path)
    assert (m["color_accuracy"], m["count_accuracy"], m["color_n"]) == (0.5, 1.0, 2)
    pope = write(tmp_path / "p.jsonl", [
        {"question_id": "random-0", "label": "yes", "category": "random", "answer": "the answer is yes."},
        {"question_id": "random-1", "label": "no", "category": "random", "answer": "the answer is yes."},
    ])
    # one TP, one FP: accuracy 1/2, precision 1/2, recall 1, yes-ratio 1
    assert [score_pope(pope)[k] for k in ("accuracy", "precision", "recall", "yes_ratio")] == [0.5, 0.5, 1.0, 1.0]


def test_world_questions_carry_what_the_scorer_needs():
    qs = BENCHMARKS["world-pope"].questions(EvalInputs(limit=4, image_size=48))
    assert {q.record["category"] for q in qs} == {"random", "popular", "adversarial"}
    assert all(q.record["label"] in ("yes", "no") and q.prompt.startswith("is there") for q in qs)
    assert qs[0].image().size == (48, 48)
    with pytest.raises(ValueError, match="need a world model"):
        BENCHMARKS["world-chair"].questions(EvalInputs(limit=2))


@pytest.mark.parametrize("bench", ["world-chair", "world-attributes"])
def test_eval_writes_answers_and_metrics(tmp_path, tiny_world_model_dir, bench):
    out = tmp_path / "metrics.json"
    result = CliRunner().invoke(app, ["eval", bench, "--model", str(tiny_world_model_dir), "--limit", "2",
                                      "--max-new-tokens", "6", "--out", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text())
    answers = [json.loads(line) for line in (tmp_path / "metrics.answers.jsonl").read_text().splitlines()]
    assert metrics["benchmark"] == bench and metrics["answers"].endswith("metrics.answers.jsonl")
    if bench == "world-chair":
        assert len(answers) == 2 and all("scene" in a and isinstance(a["answer"], str) for a in answers)
        assert 0.0 <= metrics["chair_i"] <= 1.0
    else:
        assert {a["kind"] for a in answers} == {"color", "count"} and "count_accuracy" in metrics


F, H, E = "Visual Faithfulness", "Helpfulness", "Ethical Considerations"


def ratings(f, h, e):
    return {F: f, H: h, E: e}


def test_world_judge_counts_by_hand():
    from vlalign.evaluate.intervals import figures
    from vlalign.world.feedback_eval import judge_counts, world_judge_result  # noqa: F401

    truth = [ratings(5, 5, 5), ratings(3, 4, 5), ratings(1, 2, 5)]  # means 5, 4, 8/3
    judged = [ratings(5, 4, 5), ratings(3, None, 5), ratings(2, 2, 5)]
    c = judge_counts(truth, judged)
    # faithfulness: 3 rated, exact 2 (5, 3), errors 0 + 0 + 1; helpfulness: 2 rated, exact 1 (2), errors 1 + 0,
    # 1 missing; pairs of different true means: (1, 2), (1, 3), (2, 3); the judge's means 14/3, none, 3:
    # only (1, 3) can be ordered, and it is ordered as the truth -> 1 of 3
    assert (c["faithfulness_rated"], c["faithfulness_exact"], c["faithfulness_error"]) == (3, 2, 1)
    assert (c["helpfulness_rated"], c["helpfulness_exact"], c["helpfulness_error"], c["helpfulness_missing"]) == \
        (2, 1, 1, 1)
    assert (c["pairs"], c["pairs_agree"]) == (3, 1)
    from vlalign.evaluate.intervals import Outcomes

    m = figures(Outcomes.from_rows("world-judge", "scene", [("s", c)]))
    assert (m["faithfulness_exact"], m["helpfulness_mae"], m["helpfulness_missing"], m["pairwise_agreement"]) == \
        pytest.approx((2 / 3, 1 / 2, 1 / 3, 1 / 3))


def test_world_labeler_auc_by_hand():
    from vlalign.evaluate.intervals import Outcomes, figures
    from vlalign.world.feedback_eval import claim_counts

    claims = [{"question": "q", "p_yes": p, "true": t} for p, t in
              ((0.9, True), (0.6, True), (0.6, False), (0.2, False), (0.3, True))]
    m = figures(Outcomes.from_rows("world-labeler", "scene", [("s", claim_counts(claims))]))
    # AUC over true x false: (0.9 > 0.6, 0.9 > 0.2), (0.6 = 0.6: a half, 0.6 > 0.2), (0.3 < 0.6, 0.3 > 0.2)
    # -> (2 + 1.5 + 1) / 6; right at 0.5: 0.9, 0.6 (true), 0.2 (false) -> 3/5
    assert (m["auc"], m["accuracy"], m["true_share"]) == pytest.approx((4.5 / 6, 3 / 5, 3 / 5))
    assert (m["mean_p_yes_true"], m["mean_p_yes_false"]) == pytest.approx((1.8 / 3, 0.8 / 2))


@pytest.mark.parametrize("bench, feedback", [("world-judge", ["--judge", "world:judge"]),
                                             ("world-labeler", ["--labeler", "world:labeler"])])
def test_eval_world_feedback_benchmarks(tmp_path, bench, feedback):
    out = tmp_path / "m.json"
    result = CliRunner().invoke(app, ["eval", bench, *feedback, "--limit", "3", "--split", "dev", "--out", str(out)])
    assert result.exit_code == 0, result.output
    m = json.loads(out.read_text())
    figures = [k for k, v in m.items() if isinstance(v, float)]
    assert figures and set(m["intervals"]) == set(figures) and m["bootstrap"]["unit"] == "scene"
    key = "pairwise_agreement" if bench == "world-judge" else "auc"
    assert 0.0 <= m[key] <= 1.0
    records = [json.loads(line) for line in (tmp_path / "m.answers.jsonl").read_text().splitlines()]
    assert len(records) == (3 if bench == "world-judge" else 6)  # the labeler checks 2 answers a scene


def test_eval_world_runs_the_whole_evaluation_with_intervals_over_scenes(tmp_path, tiny_world_model_dir):
    out = tmp_path / "m.json"
    result = CliRunner().invoke(app, ["eval", "world", "--model", str(tiny_world_model_dir), "--limit", "3",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    m = json.loads(out.read_text())
    assert m["bootstrap"]["unit"] == "scene" and m["bootstrap"]["units"] == 3 and m["split"] == "test"
    for key in ("chair_i", "object_recall", "pope_accuracy", "count_accuracy", "refusal_rate"):
        lo, hi = m["intervals"][key]
        assert lo <= m[key] <= hi, key
    outcomes = json.loads((tmp_path / "m.outcomes.json").read_text())
    assert outcomes["statistic"] == "world" and len(outcomes["ids"]) == 3
