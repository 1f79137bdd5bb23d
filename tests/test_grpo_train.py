"""The group policy gradient on a tiny world model: a group's rows (the prompt once, its answers after it) score
every answer token as rows of their own do, the log-prob stage's values are what training's step 1 reads
(ratio 1), the first step's loss is the policy gradient's by hand, training raises the better answers'
log-probs, and the optimizer's moments carry from one training to the next."""

from __future__ import annotations

import pytest
import torch

from vlalign.models.load import load
from vlalign.train.fit import fit
from vlalign.train.groups import GroupExample, group_collate, group_logps, group_rows, make_group_loss
from vlalign.train.loop import Carried
from vlalign.train.objectives import GroupPolicyGradient
from vlalign.train.settings import OptimConfig, PolicyGradientConfig, TrainConfig
from vlalign.world.render import render
from vlalign.world.scene import sample_scene

ANSWERS = ("there is a red circle.", "there is a blue star and a green square.", "there is a circle.")


@pytest.fixture
def model_and_processor(tiny_world_model_dir):
    return load(tiny_world_model_dir, dtype="float32", device="cpu")


def _groups(n: int = 4, advantages=(1.0, -1.0, 0.0), **kw) -> list[GroupExample]:
    return [GroupExample(f"g{i}", render(sample_scene(i, "prompts"), 48), "describe the image.", ANSWERS,
                         tuple(advantages), **kw) for i in range(n)]


def _config(batch: int = 4, epochs: float = 1.0, lr: float = 1e-3) -> TrainConfig:
    return TrainConfig(batch_size=batch, epochs=epochs, optim=OptimConfig(lr=lr, warmup_ratio=0.0, log_every=1,
                                                                           schedule="constant"))


def test_group_rows_score_each_answer_as_its_own_row(model_and_processor):
    model, processor = model_and_processor
    groups = [(e.image, e.instruction, e.answers) for e in _groups(2)]
    shared = group_logps(model, processor, groups)
    alone = [group_logps(model, processor, [(im, q, [a])])[0] for im, q, answers in groups for a in answers]
    assert [len(x) for x in shared] == [len(x) for x in alone]
    assert all(torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-5) for a, b in zip(shared, alone, strict=True))
    batch = group_rows(processor, groups)
    assert batch["input_ids"].shape[0] == 1, "the groups packed into one row, without padding"


def test_first_step_is_on_policy_and_its_loss_is_the_policy_gradient(model_and_processor):
    """With the stage's `old` log-probs the ratio is 1 at step 1 (nothing clipped) and the GRPO loss is minus
    the mean over answers of their advantage; the KL to a reference equal to the policy is 0."""
    model, processor = model_and_processor
    plain = _groups(2, advantages=(1.0, -0.5, 0.25))
    logps = group_logps(model, processor, [(e.image, e.instruction, e.answers) for e in plain])
    per_group = [tuple(map(tuple, logps[3 * i:3 * i + 3])) for i in range(2)]
    examples = [GroupExample(e.id, e.image, e.instruction, e.answers, e.advantages, old=o, ref=o)
                for e, o in zip(plain, per_group, strict=True)]
    batch = group_collate(processor)([(e, {}) for e in examples], 0)
    loss, metrics = make_group_loss(PolicyGradientConfig(kl=0.1), 24)(model, batch)
    assert metrics["ratio"] == pytest.approx(1.0, abs=1e-5) and metrics["clip_fraction"] == 0.0
    assert metrics["kl"] == pytest.approx(0.0, abs=1e-6)
    assert loss.item() == pytest.approx(-0.25, abs=1e-6)


def test_a_mismatched_log_prob_row_is_named(model_and_processor):
    model, processor = model_and_processor
    bad = _groups(1, old=((-1.0,), (-1.0,), (-1.0,)))
    with pytest.raises(ValueError, match="group g0: an answer has"):
        group_collate(processor)([(e, {}) for e in bad], 0)


def test_training_raises_the_better_answers_and_carries_the_optimizer(model_and_processor, tmp_path):
    model, processor = model_and_processor
    groups = _groups(4)
    before = group_logps(model, processor, [(groups[0].image, groups[0].instruction, groups[0].answers)])
    state = tmp_path / "round1.pt"
    trained, history = fit(model, processor, groups, _config(batch=2, epochs=2), GroupPolicyGradient(max_tokens=24),
                           carried=Carried(None, state))
    after = group_logps(trained, processor, [(groups[0].image, groups[0].instruction, groups[0].answers)])
    assert len(history) == 4 and all({"clip_fraction", "ratio", "answer_tokens"} <= set(h) for h in history)
    assert sum(after[0]) > sum(before[0]) and sum(after[1]) < sum(before[1]), "advantage +1 up, -1 down"
    saved = torch.load(state, weights_only=True)["state"]
    assert {int(s["step"]) for s in saved.values()} == {4}
    _, more = fit(trained, processor, groups, _config(batch=4), GroupPolicyGradient(max_tokens=24),
                  carried=Carried(state, tmp_path / "round2.pt"))
    carried = torch.load(tmp_path / "round2.pt", weights_only=True)["state"]
    assert {int(s["step"]) for s in carried.values()} == {5}, "Adam's step count goes on"


def test_an_optimizer_state_of_other_parameters_is_not_loaded(model_and_processor, tmp_path, monkeypatch):
    model, processor = model_and_processor
    first = tmp_path / "first.pt"
    fit(model, processor, _groups(2), _config(batch=2), GroupPolicyGradient(max_tokens=24), carried=Carried(None, first))
    state = torch.load(first, weights_only=True)
    state["state"] = {i: {**s, "exp_avg": s["exp_avg"][..., :1]} for i, s in state["state"].items()}
    torch.save(state, first)
    warned: list[str] = []
    monkeypatch.setattr("vlalign.train.loop.warn", warned.append)
    fit(model, processor, _groups(2), _config(batch=2), GroupPolicyGradient(max_tokens=24),
        carried=Carried(first, tmp_path / "second.pt"))
    assert len(warned) == 1 and "other parameters" in warned[0]
    second = torch.load(tmp_path / "second.pt", weights_only=True)["state"]
    assert {int(s["step"]) for s in second.values()} == {1}


def test_temperature_scales_the_log_probs_read(model_and_processor):
    model, processor = model_and_processor
    group = [(g.image, g.instruction, g.answers) for g in _groups(1)]
    hot = group_logps(model, processor, group, temperature=2.0)
    cold = group_logps(model, processor, group)
    assert [len(x) for x in hot] == [len(x) for x in cold] and hot != cold
    assert all(v <= 0 for row in hot for v in row)
