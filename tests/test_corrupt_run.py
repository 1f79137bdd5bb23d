"""A run directory damaged by hand, then resumed: truncated and duplicated shards, empty markers and
manifests, edited manifests, missing images, truncated weights, damaged training files. Each case ends in
the result of an unharmed run (compared bit for bit), or in one message that names the file and the fix,
after which the fix it names leads there.

`stopped` is a run that stopped during training (its stages are done, with a mid-training checkpoint);
`finished` is the whole run. Both are copies of one reference run of RLAIF-V on the shipped world base.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from _runs import differences

import vlalign.runner as runner
from vlalign.config import load_config
from vlalign.data.shards import DuplicateRecords
from vlalign.data.store import Stage
from vlalign.models.load import IncompleteCheckpoint
from vlalign.plugins import METHODS

METHOD = METHODS.get("rlaif-v")
CONFIG = load_config(METHOD.config, None, [
    "policy=world:base", "runtime.dtype=fp32", "labeler=self", "rounds=1", "prompts.source=world",
    "prompts.per_round=6", "samples=3", "decoding.max_new_tokens=32", "decoding.temperature=1.0", "splitter=world",
    "batch_size=8", "train.batch_size=2", "train.epochs=2", "train.optim.lr=1e-3", "train.optim.log_every=1",
    "train.checkpoint_every=1"])  # two steps, so a mid-training checkpoint is left


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corrupt") / "reference"
    runner.run(METHOD, CONFIG, out)
    assert list((out / "round1" / "training" / "checkpoints").glob("checkpoint-*")), "the config must checkpoint"
    return out


def _copy(reference: Path, tmp_path: Path, stopped: bool) -> Path:
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    if stopped:  # as if killed in training: the stages and a mid-training checkpoint are there, no policy
        for name in ("round.json", "arm.json", "summary.json"):
            (run / "round1" / name).unlink(missing_ok=True)
        (run / "summary.json").unlink()
        shutil.rmtree(run / "round1" / "policy")
    return run


def _same(reference: Path, run: Path, shards: bool = True) -> None:
    runner.run(METHOD, CONFIG, run)
    assert differences(reference, run, shards) == []


def _truncate(path: Path, keep: int = 200) -> None:
    path.write_bytes(path.read_bytes()[:keep])


@pytest.mark.parametrize("stage", ["responses", "feedback", "pairs"])
def test_a_truncated_shard_is_set_aside_and_made_again(reference, tmp_path, capsys, stage):
    run = _copy(reference, tmp_path, stopped=True)
    _truncate(run / "round1" / stage / "shard-00000.parquet")
    _same(reference, run)
    assert "moved it aside" in capsys.readouterr().err
    assert (run / "round1" / stage / ".shard-00000.parquet.corrupt").exists()


def test_a_copied_shard_is_read_once(reference, tmp_path, capsys):
    run = _copy(reference, tmp_path, stopped=True)
    shard = run / "round1" / "responses" / "shard-00000.parquet"
    shutil.copy(shard, shard.with_name("shard-00000 - Copy.parquet"))
    _same(reference, run, shards=False)
    assert "shard-00000 - Copy.parquet" in capsys.readouterr().err


def test_a_shard_that_contradicts_another_is_refused_with_both_files_named(reference, tmp_path):
    run = _copy(reference, tmp_path, stopped=True)
    stage = Stage(run / "round1" / "pairs")
    row = stage.rows()[0]
    stage.write_shard([{**row, "chosen": "an edited answer."}])
    with pytest.raises(DuplicateRecords) as e:
        runner.run(METHOD, CONFIG, run)
    text = str(e.value)
    assert row["id"] in text and "shard-00000.parquet" in text and "shard-00001.parquet" in text
    assert "delete the one that does not belong" in text
    (stage.dir / "shard-00001.parquet").unlink()  # the fix it names
    _same(reference, run)


@pytest.mark.parametrize("marker", ["round.json", "arm.json"])
def test_an_empty_marker_is_warned_about_and_its_step_runs_again(reference, tmp_path, capsys, marker):
    run = _copy(reference, tmp_path, stopped=False)
    if marker == "arm.json":  # the arm's marker is read only while its round is not done
        (run / "round1" / "round.json").unlink()
    (run / "round1" / marker).write_text("")
    _same(reference, run)
    assert f"{run / 'round1' / marker} is damaged" in capsys.readouterr().err


def test_an_empty_manifest_is_named_with_the_fix(reference, tmp_path):
    run = _copy(reference, tmp_path, stopped=True)
    manifest = run / "round1" / "feedback" / ".manifest.json"
    manifest.write_text("")
    with pytest.raises(ValueError, match="not valid JSON") as e:
        runner.run(METHOD, CONFIG, run)
    assert str(manifest) in str(e.value) and "delete it and run the stage again" in str(e.value)
    manifest.unlink()  # the fix it names
    _same(reference, run)


@pytest.mark.parametrize(("stage", "key", "value"), [("feedback", "model", "world:labeler"), ("responses", "seed", 7),
                                                     ("pairs", "config", {"rules": "edited"})])
def test_an_edited_manifest_is_refused_naming_the_stage(reference, tmp_path, stage, key, value):
    run = _copy(reference, tmp_path, stopped=True)
    path = run / "round1" / stage / ".manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), key: value}))
    with pytest.raises(ValueError, match=f"different {key}") as e:
        runner.run(METHOD, CONFIG, run)
    assert str(run / "round1" / stage) in str(e.value) and "delete" in str(e.value)
    shutil.rmtree(run / "round1" / stage)  # the fix it names: the stage is made again
    _same(reference, run)


def test_a_missing_image_is_named_with_the_fix(reference, tmp_path):
    run = _copy(reference, tmp_path, stopped=True)
    image = run / "images" / f"{Stage(run / 'round1' / 'pairs').rows()[0]['image']}.png"  # one a pair needs
    image.unlink()
    with pytest.raises(FileNotFoundError) as e:
        runner.run(METHOD, CONFIG, run)
    assert image.stem in str(e.value) and "delete the stage that stored the image" in str(e.value)
    shutil.rmtree(run / "round1" / "prompts")  # the fix it names
    _same(reference, run)


@pytest.mark.parametrize("marker", [True, False], ids=["with its size marker", "without it"])
def test_truncated_weights_of_a_finished_round_are_named_with_the_fix(reference, tmp_path, marker):
    run = _copy(reference, tmp_path, stopped=False)
    policy = run / "round1" / "policy"
    _truncate(policy / "model.safetensors", 5000)
    if not marker:
        (policy / "vlalign_checkpoint.json").unlink()
    with pytest.raises(IncompleteCheckpoint) as e:
        runner.run(METHOD, CONFIG, run)
    text = str(e.value)
    assert "model.safetensors" in text and str(policy) in text and "run the same command again" in text
    assert text.count("Delete") == 1, "one fix, the run's"
    shutil.rmtree(policy)  # the fix it names: round 1 trains again from its pairs
    _same(reference, run)


@pytest.mark.parametrize("damage", ["empty", "not JSON", "a list", "values missing"])
def test_a_damaged_reference_cache_is_recomputed(reference, tmp_path, damage):
    run = _copy(reference, tmp_path, stopped=True)
    cache = run / "round1" / "training" / "reference_logps.json"
    saved = json.loads(cache.read_text())
    cache.write_text({"empty": "", "not JSON": '{"model": "', "a list": "[]",
                      "values missing": json.dumps({**saved, "logps": {k: {} for k in saved["logps"]}})}[damage])
    _same(reference, run)


def test_a_stopped_training_resumes_from_its_checkpoint_to_the_same_weights(reference, tmp_path):
    run = _copy(reference, tmp_path, stopped=True)
    _same(reference, run)


def test_a_damaged_training_checkpoint_is_warned_about_and_training_starts_over(reference, tmp_path, capsys):
    run = _copy(reference, tmp_path, stopped=True)
    [checkpoint] = (run / "round1" / "training" / "checkpoints").glob("checkpoint-*")
    _truncate(checkpoint / "trainable.safetensors", 100)
    _same(reference, run)
    err = capsys.readouterr().err
    assert str(checkpoint) in err and "training starts from the beginning" in err


@pytest.mark.parametrize("name", ["trainable.safetensors", "optimizer.pt"])
def test_a_training_checkpoint_with_overwritten_bytes_is_not_resumed(reference, tmp_path, capsys, name):
    """Bytes overwritten in place (same size, so every reader still opens the file) are caught by the checksum
    written with the checkpoint; training starts over and ends as the unharmed run."""
    run = _copy(reference, tmp_path, stopped=True)
    [checkpoint] = (run / "round1" / "training" / "checkpoints").glob("checkpoint-*")
    path = checkpoint / name
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)  # in the tensors' bytes, past the headers
        f.write(b"\x7f" * 32)
    _same(reference, run)
    err = capsys.readouterr().err
    assert f"{name} holds other bytes than when it was written" in err and "training starts from the beginning" in err


def test_a_round_does_not_start_from_a_policy_whose_bytes_changed(reference, tmp_path):
    """Round 2 of a longer run loads round 1's policy: overwritten bytes are found there even when the file's
    modification time was set back, and round 2 does not train from them."""
    run = _copy(reference, tmp_path, stopped=False)
    weights = run / "round1" / "policy" / "model.safetensors"
    before = weights.stat()
    with open(weights, "r+b") as f:
        f.seek(before.st_size // 2)
        f.write(b"\x7f" * 64)
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))
    with pytest.raises(IncompleteCheckpoint) as e:
        runner.run(METHOD, replace(CONFIG, rounds=2), run)
    text = str(e.value)
    assert "model.safetensors holds other bytes than when it was written" in text and str(weights.parent) in text
    assert "round 1 is trained again" in text and not (run / "round2" / "policy").exists()
