"""Training metrics to accelerate's trackers (`train.report_to`): TensorBoard event files with the logged
scalars, an offline Weights & Biases run, the same numbers as without a tracker, and clear config errors."""

from __future__ import annotations

import json

import pytest
import torch

from vlalign.config import load_config
from vlalign.models.load import load
from vlalign.train.examples import PreferenceExample
from vlalign.train.fit import fit
from vlalign.train.settings import OptimConfig, TrainConfig
from vlalign.world.render import render
from vlalign.world.scene import PARTNERS, sample_scene

STEPS = 3


def _examples() -> list[PreferenceExample]:
    out = []
    for i in range(4):
        scene = sample_scene(i, "prompts")
        obj = scene.objects[0]
        out.append(PreferenceExample(f"pair-{i}", render(scene, 48), "describe the image.", f"a {obj.color} {obj.shape}.",
                                     f"a {obj.color} {PARTNERS[obj.shape]}."))
    return out


def _train(model_dir, out, report_to: str) -> list[dict]:
    torch.manual_seed(0)
    model, processor = load(model_dir, dtype="float32", device="cpu")
    config = TrainConfig(batch_size=2, report_to=report_to, optim=OptimConfig(steps=STEPS, lr=1e-3, log_every=1))
    return fit(model, processor, _examples(), config, out=out)[1]


def test_tensorboard_gets_every_logged_scalar_and_numerics_stay(tiny_world_model_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    history = _train(tiny_world_model_dir, tmp_path / "round1" / "training", "tensorboard")
    events = list((tmp_path / "round1" / "training" / "trackers").rglob("events.out.tfevents.*"))
    assert events
    scalars = {}
    for path in events:
        acc = EventAccumulator(str(path.parent))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars[tag] = [(e.step, e.value) for e in acc.Scalars(tag)]
    for key in ("loss", "lr", "reward_margin", "reward_accuracy"):
        assert [s for s, _ in scalars[key]] == list(range(1, STEPS + 1)), key
        assert [v for _, v in scalars[key]] == pytest.approx([h[key] for h in history], rel=1e-5), key
    plain = _train(tiny_world_model_dir, tmp_path / "plain", "none")
    assert [h["loss"] for h in plain] == [h["loss"] for h in history]  # logging changes no number
    assert not (tmp_path / "plain" / "trackers").exists()


def test_wandb_offline_run_is_written(tiny_world_model_dir, tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    _train(tiny_world_model_dir, tmp_path / "round2" / "training", "wandb")
    wandb.teardown()  # the run file is written by wandb's service process, which a busy machine may not have flushed yet
    runs = list((tmp_path / "round2" / "training" / "trackers" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    data = runs[0].read_bytes()
    assert b"reward_margin" in data and b"round2" in data  # the logged metrics, under the round's name


def test_report_to_is_checked_when_the_config_loads(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown report_to 'tensorbord'; choose from none, tensorboard, wandb"):
        TrainConfig(report_to="tensorbord")
    import vlalign.train.settings as settings

    monkeypatch.setattr(settings, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match=r"needs the tensorboard package: pip install 'vlalign\[tensorboard\]'"):
        load_config(TrainConfig, None, ["report_to=tensorboard"])


def test_report_to_needs_an_output_folder(tiny_world_model_dir):
    model, processor = load(tiny_world_model_dir, dtype="float32", device="cpu")
    config = TrainConfig(batch_size=2, report_to="tensorboard", optim=OptimConfig(steps=1))
    with pytest.raises(ValueError, match="needs an output folder"):
        fit(model, processor, _examples(), config)


def test_the_flat_hyperparameters_are_scalars():
    from vlalign.config import to_dict
    from vlalign.train.loop import flat_scalars

    flat = flat_scalars(to_dict(TrainConfig(loss={"sigmoid": 1.0, "nll": 0.5})))
    assert flat["loss.nll"] == 0.5 and flat["optim.lr"] == 5e-7 and flat["lora"] == json.dumps(None)
    assert all(isinstance(v, (bool, int, float, str)) for v in flat.values())
