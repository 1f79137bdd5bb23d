"""The end-to-end demo on the shipped world models (slow: about a minute on 2 cores)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from vlalign.cli import app

REQUIRED = ("chair_s", "chair_i", "object_recall", "pope_f1", "pope_accuracy", "pope_yes_ratio", "mean_words")


@pytest.mark.slow
def test_quick_demo_writes_summary_and_resumes(quick_demo):
    out, summary = quick_demo
    for method in ("base", "rlaif_v"):
        assert set(REQUIRED) <= set(summary[method])
        assert 0 <= summary[method]["chair_i"] <= 1 and summary[method]["mean_words"] > 0
    assert summary["seconds"] > 0 and summary["rlaif_v"]["rounds"][0]["pairs"] > 0
    for stage in ("prompts", "responses", "feedback", "pairs"):
        assert json.loads((out / "rlaif_v" / "round1" / stage / ".manifest.json").read_text())["complete"]
    again = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert json.loads((out / "summary.json").read_text())["rlaif_v"] == summary["rlaif_v"]


@pytest.mark.slow
def test_quick_demo_lowers_chair_i(quick_demo):
    _, summary = quick_demo
    assert summary["rlaif_v"]["chair_i"] < summary["base"]["chair_i"]


@pytest.mark.slow
def test_quick_demo_compares_every_row_with_the_base_scene_by_scene(quick_demo):
    out, summary = quick_demo
    base = summary["base"]
    for row in ("rlaif_v", "rlaif_v_best_of_n", "rlaif_v_self", "silkie", "povid_stage1", "povid", "mdpo", "mpo",
                "povid_rlaif_v"):
        paired = summary[row]["vs_base"]["chair_i"]
        assert paired["b"] == pytest.approx(summary[row]["chair_i"]) and paired["interval"][0] <= paired["diff"]
        assert paired["diff"] <= paired["interval"][1]
        if row != "rlaif_v_best_of_n":  # best-of-N is paired on its own 100 scenes
            assert paired["a"] == pytest.approx(base["chair_i"])
    for run in ("rlaif_v", "silkie", "povid_rlaif_v"):  # each run holds the base's outcomes, not a base run
        assert (out / run / "base" / "world.outcomes.json").is_file()
        assert not (out / run / "base" / "eval.json").exists()


@pytest.mark.slow
def test_quick_demo_reports_on_test_scenes_that_no_stage_drew(quick_demo):
    import pyarrow.parquet as pq

    out, summary = quick_demo
    assert summary["split"] == "test" and summary["eval_scenes"] == 150
    for row in ("base", "rlaif_v", "povid", "povid_rlaif_v", "grpo", "grpo_self", "grpo_rlaif_v"):
        assert {"chair_i_unique", "pope_accuracy", "count_accuracy"} <= set(summary[row])
    drawn = 0
    for path in out.rglob("*.parquet"):
        text = json.dumps(pq.read_table(path).to_pylist(), default=str)
        assert "world-test-" not in text and "world-dev-" not in text, path
        drawn += "world-prompts-" in text
    assert drawn > 20  # every method's prompts, responses, feedback and pairs: all on prompt-split scenes


def test_base_path_points_at_a_loadable_model():
    result = CliRunner().invoke(app, ["world", "base-path"])
    assert result.exit_code == 0, result.output
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = result.output.strip()
    AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path)
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert 1e6 < sum(p.numel() for p in model.parameters()) < 20e6
