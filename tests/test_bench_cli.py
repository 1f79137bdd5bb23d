"""`vlalign score`: the same numbers as the Python scorers, a table on stderr, clear errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from vlalign.cli import app
from vlalign.evaluate.answers import AnswerFileError
from vlalign.evaluate.commands import resolve_judge

DATA = Path(__file__).parent / "data" / "bench"


@pytest.mark.parametrize("bench, answers, extra, key, value", [
    ("pope", "pope_answers.jsonl", [], "popular_f1", 0.8),  # worked out in test_bench_pope
    ("pope", "pope_quirks.jsonl", [], "random_accuracy", 0.2),  # official reading, test_bench_pope
    ("pope", "pope_quirks.jsonl", ["--parse", "robust"], "random_accuracy", 0.7),
    ("mme", "mme_answers.jsonl", [], "total", 175.0),  # worked out in test_bench_mme
    ("chair", "chair_answers.jsonl", ["--annotations", str(DATA / "coco")], "chair_i", 3 / 9),
    ("chair", "chair_quirks.jsonl", ["--annotations", str(DATA / "coco")], "chair_s", 2 / 3),  # test_bench_chair
    ("amber", "amber_answers.jsonl", ["--annotations", str(DATA / "amber"), "--parse", "robust"], "amber_score", 0.7),
    ("amber", "amber_official_answers.jsonl", ["--annotations", str(DATA / "amber")], "existence_f1_pct", 39.9),
    ("amber-discriminative", "amber_official_answers.jsonl", ["--annotations", str(DATA / "amber")], "f1_pct", 60.0),
    ("hallusionbench", "hallusionbench_result.json", [], "qAcc", 25.0),  # test_bench_hallusionbench
])
def test_score_writes_metrics_and_prints_a_table(tmp_path, bench, answers, extra, key, value):
    out = tmp_path / "m" / "metrics.json"
    result = CliRunner().invoke(app, ["score", bench, "--answers", str(DATA / answers), "--out", str(out), *extra])
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text())
    assert metrics["benchmark"] == bench and metrics[key] == pytest.approx(value)
    assert metrics["parse"] == ("robust" if "robust" in extra else "official")
    assert key in result.output  # the table (stderr is mixed into the runner's output)
    if metrics.get("approximate"):
        assert "approximate" in result.output  # said where the figures are read, not only in the JSON


def test_unknown_parse_mode_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(app, ["score", "pope", "--answers", str(DATA / "pope_answers.jsonl"),
                                      "--out", str(tmp_path / "m.json"), "--parse", "strict"])
    assert result.exit_code == 2 and "unknown parse mode 'strict'" in result.output


def test_score_reports_bad_lines(tmp_path):
    answers = tmp_path / "a.jsonl"
    answers.write_text('{"question_id": 1, "answer": "yes", "label": "yes", "category": "random"}\n'
                       '{"question_id": 2, "answer": "yes", "category": "random"}\n')
    out = tmp_path / "m.json"
    result = CliRunner().invoke(app, ["score", "pope", "--answers", str(answers), "--out", str(out)])
    assert isinstance(result.exception, AnswerFileError) and "line 2: missing field 'label'" in str(result.exception)
    result = CliRunner().invoke(app, ["score", "pope", "--answers", str(answers), "--out", str(out), "--skip-bad"])
    assert result.exit_code == 0 and json.loads(out.read_text())["skipped"] == {"missing_field": 1}
    assert "skipped" in result.output
    result = CliRunner().invoke(app, ["score", "nope", "--answers", str(answers), "--out", str(out)])
    assert isinstance(result.exception, ValueError) and "unknown benchmark 'nope'" in str(result.exception)


def test_judge_without_a_backend_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "vlalign.feedback.judges", None)  # as if the module did not exist
    with pytest.raises(typer.BadParameter, match="no judge backend is available"):
        resolve_judge("openai:gpt-4o")
    assert resolve_judge(None) is None
