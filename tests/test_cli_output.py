"""What a user sees: progress and messages on stderr (results alone on stdout), every long step named by
method and round, tables that fit 100 columns, and where the run left its models and its report."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.slow
def test_a_run_names_its_steps_fits_100_columns_and_says_where_its_models_and_report_are(tmp_path):
    out = tmp_path / "run"
    args = ["policy=world:base", "runtime.dtype=fp32", "labeler=self", "rounds=1", "prompts.source=world",
            "prompts.per_round=6", "samples=3", "decoding.max_new_tokens=48", "decoding.temperature=1.0",
            "splitter=world", "batch_size=8", "train.batch_size=4", "eval=[{name: world, limit: 4}]"]
    done = subprocess.run([sys.executable, "-m", "vlalign.cli", "run", "rlaif-v", "--out", str(out), *args],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    # stdout: the result only (the final policy's directory), so `$(vlalign run ...)` can be used
    assert done.stdout.strip().splitlines() == [str(out / "round1" / "policy")]
    err = done.stderr
    for step in ("rlaif-v base: eval descriptions", "rlaif-v round 1: prompts", "rlaif-v round 1: sampling",
                 "rlaif-v round 1: labeling", "rlaif-v round 1: pairs", "rlaif-v round 1: train: training",
                 "rlaif-v round 1: train: eval questions"):
        assert step in err, step
    assert "Loading weights" not in err and "Writing model" not in err  # no stray bars from the libraries
    assert max(len(line) for line in err.splitlines()) <= 100
    assert f"model at {out / 'round1' / 'policy'}" in err.replace("\n", "")  # long paths wrap at 100 columns
    assert "summary at" in err and "The run took " in err
    # the end-of-run table: the run's own benchmark, the base and the round against it, and its legend
    assert "rlaif-v on world" in err and "vs base [95% CI]" in err and " base " in err and " round 1 " in err
    assert "CHAIR_i  share of object mentions" in err
    assert f"report at {out / 'report' / 'index.html'}" in err.replace("\n", "")  # written when the run ends
    assert (out / "report" / "index.html").exists()
