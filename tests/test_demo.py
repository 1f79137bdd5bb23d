"""The end-to-end demo on the shipped world models (slow: about three minutes on 2 cores)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from vlalign.cli import app

REQUIRED = ("chair_s", "chair_i", "object_recall", "pope_f1", "pope_accuracy", "pope_yes_ratio", "mean_words")


@pytest.mark.slow
def test_quick_demo_writes_summary_and_lowers_chair_i(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    for method in ("base", "rlaif_v"):
        assert set(REQUIRED) <= set(summary[method])
    assert summary["seconds"] > 0
    assert summary["rlaif_v"]["chair_i"] < summary["base"]["chair_i"]
    # the run directory holds every stage, resumable, and the pairs export to TRL's format
    assert (out / "rlaif_v" / "round1" / "pairs" / "manifest.json").exists()
    again = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert json.loads((out / "summary.json").read_text())["rlaif_v"] == summary["rlaif_v"]


def test_base_path_points_at_a_loadable_model():
    result = CliRunner().invoke(app, ["world", "base-path"])
    assert result.exit_code == 0, result.output
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = result.output.strip()
    AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path)
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert 1e6 < sum(p.numel() for p in model.parameters()) < 20e6
