"""A round of two arms (a policy and a baseline, as Silkie trains them) damaged by hand or stopped during an
arm's evaluation, then resumed: a damaged arm is named with the fix, never reported as finished; a lost
marker or a stopped evaluation costs only the evaluation, never the training; a copied run names its own
checkpoints. Each case ends as the unharmed reference run (compared bit for bit) once the fix it names is
applied.

The method here is the runner's plainest two-arm round: both arms train on the same fixed pairs, so the
reference takes seconds; `test_corrupt_run.py` damages a whole RLAIF-V run the same way.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from _runs import differences
from PIL import Image

import vlalign.runner as runner
from vlalign.config import load_config
from vlalign.data.records import PairRecord
from vlalign.data.store import RunStore
from vlalign.methods.base import Arm, Method
from vlalign.models.load import IncompleteCheckpoint
from vlalign.stages.settings import RunConfig

TWO_ARMS = Method("two-arms", "a policy arm and a baseline arm trained on the same pairs", RunConfig,
                  lambda r: [Arm("policy", r.given_pairs, r.config.train), Arm("longest", r.given_pairs, r.config.train)])


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    store = RunStore(tmp_path_factory.mktemp("pairs"))
    colors = [(200, 10, 10), (10, 200, 10), (10, 10, 200)]
    images = [store.images.put(Image.new("RGB", (48, 48), c)) for c in colors]
    store.stage("pairs").write_shard([
        PairRecord(id=f"q{i}", prompt_id=f"p{i}", image=images[i % 3], instruction="describe the image.",
                   chosen=f"a square {i}.", rejected=f"a dog and a star {i}.", method="fixed").to_row()
        for i in range(4)])
    return store.root


@pytest.fixture(scope="module")
def config(pairs):
    return load_config(RunConfig, None, [
        "policy=world:base", "runtime.dtype=fp32", f"pairs_from={pairs}", "report=false", "eval_base=false",
        "eval=[{name: world, limit: 2}]", "train.batch_size=2", "train.epochs=1", "train.optim.lr=1e-3",
        "train.optim.log_every=1"])


@pytest.fixture(scope="module")
def reference(tmp_path_factory, config) -> Path:
    out = tmp_path_factory.mktemp("arms") / "reference"
    runner.run(TWO_ARMS, config, out)
    return out


@pytest.fixture
def run(reference, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    return out


def _same(reference: Path, run: Path, config) -> None:
    runner.run(TWO_ARMS, config, run)
    assert differences(reference, run) == []


def _no_training(monkeypatch) -> None:
    monkeypatch.setattr(runner, "fit", lambda *a, **k: pytest.fail("an arm was trained again"))


def _overwrite(path: Path, keep_time: bool = False) -> None:
    """Bytes in the middle of the file overwritten in place: same size, other tensor values."""
    before = path.stat()
    with open(path, "r+b") as f:
        f.seek(before.st_size // 2)
        f.write(b"\x7f" * 64)
    if keep_time:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def _cut_baseline_and_resume(method: Method, config, run: Path, capsys) -> None:
    """The baseline arm's checkpoint cut to 30% and its arm.json emptied: a resume names the checkpoint with the fix
    (and the damaged marker); the fix applied (the checkpoint deleted), the arm is trained again."""
    baseline = run / "round1" / "longest"
    weights = baseline / "policy" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:int(weights.stat().st_size * 0.3)])
    (baseline / "arm.json").write_text("")
    with pytest.raises(IncompleteCheckpoint) as e:
        runner.run(method, config, run)
    text = str(e.value)
    assert str(baseline / "policy") in text and "model.safetensors" in text and "run the same command again" in text
    assert f"{baseline / 'arm.json'} is damaged" in capsys.readouterr().err
    shutil.rmtree(baseline / "policy")  # the fix it names: the baseline arm trains again from its pairs
    runner.run(method, config, run)


def test_a_baseline_arm_cut_short_with_its_marker_emptied_is_named_with_the_fix(reference, run, config, capsys):
    _cut_baseline_and_resume(TWO_ARMS, config, run, capsys)
    assert differences(reference, run) == []


def test_a_baseline_arm_with_overwritten_weights_is_named_with_the_fix(reference, run, config):
    baseline = run / "round1" / "longest"
    _overwrite(baseline / "policy" / "model.safetensors")
    with pytest.raises(IncompleteCheckpoint) as e:
        runner.run(TWO_ARMS, config, run)
    text = str(e.value)
    assert "model.safetensors holds other bytes than when it was written" in text
    assert str(baseline / "policy") in text and "the longest arm of round1 is trained again" in text
    shutil.rmtree(baseline / "policy")
    _same(reference, run, config)


def test_a_finished_policy_with_overwritten_weights_is_not_reported_finished(reference, run, config):
    _overwrite(run / "round1" / "policy" / "model.safetensors")
    with pytest.raises(IncompleteCheckpoint, match="holds other bytes than when it was written"):
        runner.run(TWO_ARMS, config, run)
    shutil.rmtree(run / "round1" / "policy")
    _same(reference, run, config)


def test_overwritten_weights_whose_time_was_kept_are_caught_when_loaded(reference, run, config):
    """The cheap check of a finished round trusts an unchanged modification time; loading hashes every byte."""
    _overwrite(run / "round1" / "policy" / "model.safetensors", keep_time=True)
    (run / "round1" / "longest" / "arm.json").unlink()  # the baseline runs again, after the policy is loaded
    with pytest.raises(IncompleteCheckpoint, match="holds other bytes than when it was written"):
        runner.run(TWO_ARMS, config, run)


@pytest.mark.parametrize("arm", ["policy", "longest"])
def test_a_lost_arm_marker_costs_its_evaluation_only(reference, run, config, capsys, monkeypatch, arm):
    folder = run / "round1" / ("" if arm == "policy" else arm)
    (folder / "arm.json").write_text("")
    _no_training(monkeypatch)
    _same(reference, run, config)
    assert f"{folder / 'arm.json'} is damaged" in capsys.readouterr().err


@pytest.mark.parametrize(("stop_at", "left"), [(1, ["longest"]), (2, [])],
                         ids=["policy's evaluation", "baseline's evaluation"])
def test_a_run_stopped_during_an_evaluation_resumes_without_training_again(reference, config, tmp_path,
                                                                            monkeypatch, stop_at, left):
    """Only the arms that had not been trained when the run stopped are trained on the resume."""
    out, calls = tmp_path / "run", []
    real_suite, real_fit = runner.run_suite, runner.fit

    def stop(*args, **kwargs):
        calls.append(1)
        if len(calls) == stop_at:
            raise KeyboardInterrupt("killed during the evaluation")
        return real_suite(*args, **kwargs)

    monkeypatch.setattr(runner, "run_suite", stop)
    with pytest.raises(KeyboardInterrupt):
        runner.run(TWO_ARMS, config, out)
    monkeypatch.setattr(runner, "run_suite", real_suite)
    trained = []

    def fit(*args, out, **kwargs):
        trained.append(Path(out).parent.name)
        return real_fit(*args, out=out, **kwargs)

    monkeypatch.setattr(runner, "fit", fit)
    _same(reference, out, config)
    assert trained == left


def test_a_copied_run_names_its_own_checkpoints(reference, run, config):
    summary = runner.run(TWO_ARMS, config, run)
    arms = summary["rounds"][0]["arms"]
    assert arms["policy"]["checkpoint"] == str(run / "round1" / "policy")
    assert arms["longest"]["checkpoint"] == str(run / "round1" / "longest" / "policy")
    assert summary["final"] == str(run / "round1" / "policy")
    on_disk = json.loads((run / "summary.json").read_text())
    assert on_disk["final"] == "round1/policy" and str(reference) not in json.dumps(on_disk)
    assert json.loads((run / "round1" / "longest" / "arm.json").read_text())["checkpoint"] == "round1/longest/policy"


@pytest.mark.slow
def test_silkies_baseline_arm_cut_short_with_its_marker_emptied_is_named_and_then_trained_again(tmp_path, capsys):
    """The case as the fault probe met it, on Silkie itself: a finished run whose longest-answer baseline has its
    checkpoint cut to 30% and its arm.json emptied."""
    from vlalign.plugins import METHODS

    silkie = METHODS.get("silkie")
    from test_kill_anywhere import CONFIGS  # the tiny Silkie run the kill tests use

    config = load_config(silkie.config, None, [*CONFIGS["silkie"], "eval_base=false", "eval=[{name: world, limit: 2}]"])
    reference, run = tmp_path / "reference", tmp_path / "run"
    runner.run(silkie, config, reference)
    shutil.copytree(reference, run)
    _cut_baseline_and_resume(silkie, config, run, capsys)
    assert differences(reference, run) == []
