"""HallusionBench's official figures on a hand-made result file in its released format; every number is
worked out in a comment from the rules of its evaluation.py / utils.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlalign.evaluate.answers import AnswerFileError
from vlalign.evaluate.hallusionbench import read_verdict, score_hallusionbench
from vlalign.feedback.judge import ChatReply

DATA = Path(__file__).parent / "data" / "bench"
RESULT = DATA / "hallusionbench_result.json"

# The file (category, figure, question: the judge's verdict, truth):
#   VD set 0, figure 0 (original):  q0: 1, yes   q1: 2 (unclear), no
#   VD set 0, figure 1 (edited):    q0: 1, no    q1: 1, yes
#   VS set 0, figure 0 (no figure): q0: 2, yes   q1: 0, no
#   VS set 0, figure 1 (original):  q0: 0, yes   q1: 1, no
#   VS set 0, figure 2 (edited):    q0: 0, no
# Right: verdict 1, and for VS without a figure 1 or 2 (not knowing is no hallucination):
#   VD 1 0 | 1 1; VS 1 0 | 0 1 | 0 -> 5 of 9.


def test_official_figures_by_hand():
    m = score_hallusionbench(RESULT)
    assert m["all_accuracy"] == pytest.approx(5 / 9)
    # figures (VS's figure 0 is none): VD f0 (1, 0) no, VD f1 (1, 1) yes, VS f1 (0, 1) no, VS f2 (0) no -> 1/4
    assert m["figure_accuracy"] == 0.25
    # question pairs (one question over all figures of its set): VD q0 (1, 1) yes, VD q1 (0, 1) no,
    # VS q0 (1, 0, 0) no, VS q1 (0, 1) no -> 1/4
    assert m["question_pair_accuracy"] == 0.25
    # easy: the pairs over questions whose visual_input is not 2 (VD f0; VS f0 and f1): VD q0 (1) yes,
    # VD q1 (0) no, VS q0 (1, 0) no, VS q1 (0, 1) no -> 1/4; hard (visual_input 2: VD f1, VS f2):
    # VD q0 (1) yes, VD q1 (1) yes, VS q0 (0) no -> 2/3
    assert (m["easy_question_pair_accuracy"], m["hard_question_pair_accuracy"]) == (0.25, pytest.approx(2 / 3))
    # printed as the leaderboard does: round(100 * x, 4)
    assert (m["aAcc"], m["fAcc"], m["qAcc"], m["easy_aAcc"], m["hard_aAcc"]) == (55.5556, 25.0, 25.0, 25.0, 66.6667)
    # per category: VD 3/4 questions, 1/2 figures, 1/2 pairs; VS 2/5, 0/2, 0/2
    assert (m["vd_all_accuracy"], m["vd_figure_accuracy"], m["vd_question_pair_accuracy"]) == (0.75, 0.5, 0.5)
    assert (m["vs_all_accuracy"], m["vs_figure_accuracy"], m["vs_question_pair_accuracy"]) == (0.4, 0.0, 0.0)
    # yes/no bias: an answer counts as "yes" when its correctness equals its truth (the script's shortcut):
    # right 1 0 1 1 1 0 0 1 0 against truth 1 0 0 1 1 0 1 0 0 -> 6 "yes" of 9; truth yes 4 of 9 -> 2/9;
    # FP ratio: of the 4 wrong answers, 3 have truth no
    assert (m["yes_pct_diff"], m["fp_ratio"]) == (pytest.approx(2 / 9), 0.75)
    assert (m["questions"], m["figures"], m["question_pairs"], m["unclear"]) == (9, 4, 4, 2)
    assert m["bootstrap"]["unit"] == "figure set" and m["bootstrap"]["units"] == 2


@pytest.mark.parametrize("reply, verdict", [
    ("Correct.", 1), ("incorrect", 0), ("The prediction is Incorrect.", 0),
    ("The answer is not correct.", 1),  # "correct" is in it and "incorrect" is not: right, as the reference reads
    ("Unclear.", 2), ("I cannot tell.", 2),
])
def test_read_verdict_quirks(reply, verdict):
    assert read_verdict(reply) == verdict


class ScriptedJudge:
    name = "api:gpt-4o"

    def __init__(self, replies):
        self.replies, self.prompts = replies, []

    def complete(self, requests):
        self.prompts += [r.prompt for r in requests]
        return [ChatReply(self.replies[r.id]) for r in requests]


def test_official_scoring_asks_the_judge(tmp_path):
    rows = json.loads(RESULT.read_text())
    for r in rows:
        del r["gpt4v_output_gpt_check"]
    path = tmp_path / "result.json"
    path.write_text(json.dumps(rows))
    with pytest.raises(AnswerFileError, match="official HallusionBench scoring asks a judge"):
        score_hallusionbench(path)
    words = {"0": "Incorrect.", "1": "Correct.", "2": "Unclear."}
    verdicts = [json.loads(RESULT.read_text())[i]["gpt4v_output_gpt_check"] for i in range(len(rows))]
    replies = {"_".join(r[k] for k in ("category", "subcategory", "set_id", "figure_id", "question_id")): words[v]
               for r, v in zip(rows, verdicts, strict=True)}
    replies["VS_chart_0_1_0"] = "The answer is not correct."  # read as right: the quirk
    judge = ScriptedJudge(replies)
    m = score_hallusionbench(path, judge)
    # the same verdicts as the file but VS f1 q0 now right: 6/9 questions; VS f1 (1, 1) is a right figure
    # (2/4); VS q0 (1, 1, 0) is still a wrong pair (1/4)
    assert (m["all_accuracy"], m["figure_accuracy"], m["question_pair_accuracy"]) == (pytest.approx(6 / 9), 0.5, 0.25)
    assert "France was the largest importer in 2018." in judge.prompts[4]  # the judge sees the reference answer
    assert m["judge"] == "api:gpt-4o" and "judge_substituted" in m


def test_robust_reads_the_answers_yes_and_no():
    # "Yes, they are." yes; "It is hard to say." neither; "I do not know." neither (right: VS without a
    # figure); "No." no ...: the same verdicts as the file, so the same figures
    m = score_hallusionbench(RESULT, parse="robust")
    assert (m["all_accuracy"], m["figure_accuracy"], m["question_pair_accuracy"]) == (pytest.approx(5 / 9), 0.25, 0.25)
    assert m["unclear"] == 2


def test_a_question_answered_twice_is_named(tmp_path):
    rows = json.loads(RESULT.read_text())
    path = tmp_path / "result.json"
    path.write_text(json.dumps([*rows, rows[0]]))
    with pytest.raises(AnswerFileError, match="entry 10: question VD_illusion_0_0_0 already answered on entry 1"):
        score_hallusionbench(path)


def test_eval_asks_questions_without_a_figure_without_an_image(tmp_path):
    """`vlalign eval hallusionbench` on its released question format: a VS question with no `filename` is
    asked without an image, in a batch of its own."""
    from typer.testing import CliRunner

    from vlalign.cli import app
    from vlalign.world.metrics import held_out_scenes
    from vlalign.world.render import render

    (tmp_path / "VD" / "illusion").mkdir(parents=True)
    render(held_out_scenes("dev", 1)[0]).save(tmp_path / "VD" / "illusion" / "0_0.png")
    base = {"subcategory": "illusion", "set_id": "0", "figure_id": "0", "sample_note": "n", "question_id": "0",
            "gt_answer_details": "no"}
    rows = [{**base, "category": "VD", "visual_input": "1", "question": "is there a circle?", "gt_answer": "1",
             "filename": "./VD/illusion/0_0.png"},
            {**base, "category": "VS", "subcategory": "chart", "visual_input": "0", "question": "is there a star?",
             "gt_answer": "0", "filename": None}]
    (tmp_path / "HallusionBench.json").write_text(json.dumps(rows))
    out = tmp_path / "m.json"
    result = CliRunner().invoke(app, ["eval", "hallusionbench", "--model", "world:base", "--data",
                                      str(tmp_path / "HallusionBench.json"), "--images", str(tmp_path),
                                      "--parse", "robust", "--max-new-tokens", "8", "--out", str(out)])
    assert result.exit_code == 0, result.output
    answers = [json.loads(line) for line in (tmp_path / "m.answers.jsonl").read_text().splitlines()]
    assert [a["category"] for a in answers] == ["VD", "VS"] and all(isinstance(a["answer"], str) for a in answers)
    m = json.loads(out.read_text())
    assert (m["questions"], m["figures"], m["question_pairs"]) == (2, 1, 2)  # VS's figure 0 is no figure
