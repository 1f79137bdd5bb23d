"""Issue 28 through whole runs on the tiny world: a finished run refuses a changed recipe with its keys and
takes more rounds with a changed setting, each round recording its own config; a LoRA run saves its policy
in the run's dtype beside an adapter that `vlalign merge` turns into the same policy; held-out pairs give the
round's training history an evaluation loss."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import vlalign.runner as runner
from vlalign.config import load_config
from vlalign.models.saved import merge, recorded_dtype
from vlalign.plugins import METHODS

pytestmark = pytest.mark.slow


def _rlaif_v(*extra: str):
    return load_config(METHODS.get("rlaif-v").config, None, [
        "policy=world:base", "labeler=self", "rounds=1", "prompts.source=world", "prompts.per_round=6", "samples=3",
        "decoding.max_new_tokens=48", "decoding.temperature=1.0", "splitter=world", "batch_size=8",
        "train.batch_size=4", "train.optim.lr=1e-3", "train.optim.log_every=1", "report=false", *extra])


def test_a_finished_run_refuses_a_changed_recipe_and_records_each_rounds_config(tmp_path, capsys):
    method = METHODS.get("rlaif-v")
    runner.run(method, _rlaif_v("runtime.dtype=fp32"), tmp_path)
    with pytest.raises(ValueError, match=r"is finished \(1 round\(s\)\): train.beta: 0.1 -> 0.3"):
        runner.run(method, _rlaif_v("runtime.dtype=fp32", "train.beta=0.3"), tmp_path)
    capsys.readouterr()
    summary = runner.run(method, _rlaif_v("runtime.dtype=fp32", "rounds=2", "samples=4"), tmp_path)
    err = capsys.readouterr().err
    assert "resuming" in err and "round 1 finished" in err and "round 2 on use the new" in err
    used = [json.loads((tmp_path / f"round{k}" / "round.json").read_text())["config"]["samples"] for k in (1, 2)]
    assert used == [3, 4]
    assert summary["changes"] == [{"round": 2, "changes": {"samples": {"before": 3, "now": 4}}}]
    assert json.loads((tmp_path / "run.json").read_text())["config"]["samples"] == 4


def test_a_lora_run_saves_its_policy_in_its_dtype_beside_an_adapter_that_merges_to_it(tmp_path):
    config = _rlaif_v("runtime.dtype=bf16", "lora_r=4", "train.lora.alpha=8", "train.eval_fraction=0.3",
                      "train.epochs=2")
    runner.run(METHODS.get("rlaif-v"), config, tmp_path)
    round1 = tmp_path / "round1"
    policy = load_file(round1 / "policy" / "model.safetensors")
    assert {t.dtype for t in policy.values()} == {torch.bfloat16}
    assert recorded_dtype(round1 / "adapter") == "bf16"
    merge(round1 / "adapter", tmp_path / "merged")
    again = load_file(tmp_path / "merged" / "policy" / "model.safetensors")
    assert all(policy[k].equal(again[k]) for k in policy)
    history = json.loads((round1 / "training" / "train_history.json").read_text())["history"]
    assert "eval_loss" in history[-1] and "eval_reward_accuracy" in history[-1]
