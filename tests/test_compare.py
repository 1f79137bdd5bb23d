"""`vlalign compare` and a run's comparison with its base: paired differences worked out by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vlalign.cli import app
from vlalign.evaluate.intervals import write_outcomes
from vlalign.evaluate.pope import pope_result

DATA = Path(__file__).parent / "data" / "bench"


def answers(path: Path, said: list[str]) -> Path:
    """pope_answers.jsonl's ten questions with other answers."""
    rows = [json.loads(line) for line in (DATA / "pope_answers.jsonl").read_text().splitlines()]
    path.write_text("".join(json.dumps({**r, "answer": a}) + "\n" for r, a in zip(rows, said, strict=True)))
    return path


# labels: yes no yes no | yes no yes no | no yes (random | popular | adversarial)
A = ["yes", "no", "no", "yes", "yes", "no", "no", "no", "no", "no"]  # right: 1 1 0 0 | 1 1 0 1 | 1 0 -> 6/10
B = ["yes", "no", "yes", "no", "yes", "no", "yes", "no", "no", "no"]  # right: 1 1 1 1 | 1 1 1 1 | 1 0 -> 9/10


def score(tmp_path: Path, name: str, said: list[str]) -> Path:
    out = tmp_path / name / "pope.json"
    result = CliRunner().invoke(app, ["score", "pope", "--answers", str(answers(tmp_path / f"{name}.jsonl", said)),
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_compare_two_evaluations_of_the_same_questions(tmp_path):
    a, b = score(tmp_path, "a", A), score(tmp_path, "b", B)
    out = tmp_path / "diff.json"
    result = CliRunner().invoke(app, ["compare", str(a), str(b.parent), "--out", str(out)])
    assert result.exit_code == 0, result.output
    figures = json.loads(out.read_text())["benchmarks"]["pope"]["figures"]
    # random accuracy 2/4 -> 4/4, popular 3/4 -> 4/4, adversarial 1/2 -> 1/2: the mean gains (2/4 + 1/4) / 3
    assert figures["random_accuracy"]["diff"] == 0.5 and figures["adversarial_accuracy"]["diff"] == 0.0
    assert figures["accuracy"]["diff"] == pytest.approx(0.25)
    # B is right wherever A is: no resample makes it worse; McNemar: 0 against 3 discordant -> 2 / 2^3
    assert figures["accuracy"]["interval"][0] >= 0
    assert figures["accuracy"]["mcnemar_p"] == pytest.approx(0.25)
    assert figures["random_accuracy"]["mcnemar_p"] == pytest.approx(0.5)  # 0 against 2
    assert "accuracy" in result.output and "B - A" in result.output


def test_a_round_is_compared_with_the_base_of_its_run(tmp_path):
    from vlalign.evaluate.suite import _keep

    run = tmp_path / "run"
    (run / "base").mkdir(parents=True)
    (run / "run.json").write_text("{}")
    base = pope_result(answers(tmp_path / "a.jsonl", A))
    assert "vs_base" not in _keep(base, run / "base", "pope")  # the base is not compared with itself
    assert (run / "base" / "pope.outcomes.json").is_file()
    metrics = _keep(pope_result(answers(tmp_path / "b.jsonl", B)), run / "round1" / "eval", "pope")
    assert metrics["vs_base"]["accuracy"]["diff"] == pytest.approx(0.25)
    assert metrics["vs_base"]["accuracy"]["mcnemar_p"] == pytest.approx(0.25)
    # `vlalign compare RUN_A RUN_B` takes each run's final evaluation (its last round's eval/)
    other = tmp_path / "other"
    (other / "round1" / "eval").mkdir(parents=True)
    (other / "run.json").write_text("{}")
    write_outcomes(other / "round1" / "eval" / "pope.outcomes.json", pope_result(answers(tmp_path / "c.jsonl", A)).outcomes)
    result = CliRunner().invoke(app, ["compare", str(other), str(run), "--out", str(tmp_path / "d.json")])
    assert result.exit_code == 0, result.output
    diff = json.loads((tmp_path / "d.json").read_text())["benchmarks"]["pope"]["figures"]["accuracy"]["diff"]
    assert diff == pytest.approx(0.25)


def test_compare_says_what_is_missing(tmp_path):
    result = CliRunner().invoke(app, ["compare", str(tmp_path), str(tmp_path)])
    assert result.exit_code != 0 and "no evaluation outcomes" in str(result.exception)
