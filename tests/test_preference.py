"""Preference training on the tiny random world model: the reference cache (named columns), first-step loss
values, learning, optim.steps, mid-training checkpoints, mDPO's corrupted column, saving."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

import vlalign.train.preference as preference
from vlalign.models.batching import encode
from vlalign.models.load import load, save
from vlalign.models.prefix import continuation_logps
from vlalign.models.scoring import sequence_logps
from vlalign.models.settings import LoraSettings
from vlalign.train.columns import Columns
from vlalign.train.examples import PreferenceExample
from vlalign.train.fit import fit
from vlalign.train.objectives import Preference
from vlalign.train.preference import reference_logps
from vlalign.train.settings import OptimConfig, TrainConfig
from vlalign.world.render import render
from vlalign.world.scene import PARTNERS, sample_scene

N_PAIRS = 8


@pytest.fixture(scope="module")
def examples() -> list[PreferenceExample]:
    out = []
    for i in range(N_PAIRS):
        scene = sample_scene(i, "prompts")
        obj = scene.objects[0]
        wrong = PARTNERS[obj.shape]
        out.append(PreferenceExample(
            id=f"pair-{i}", image=render(scene, 48), instruction="describe the image.",
            chosen=f"there is a {obj.color} {obj.shape}.", rejected=f"there is a {obj.color} {wrong} and a star."))
    return out


@pytest.fixture
def model_and_processor(tiny_world_model_dir):
    return load(tiny_world_model_dir, dtype="float32", device="cpu")


def _config(steps_epochs: float = 1.0, lr: float = 1e-4, **kw) -> TrainConfig:
    # batch_size == N_PAIRS: the first step sees every pair, so its loss can be computed by hand
    return TrainConfig(batch_size=N_PAIRS, epochs=steps_epochs, optim=OptimConfig(lr=lr, warmup_ratio=0.0, log_every=1),
                       **kw)


def test_reference_cache_written_and_reused(model_and_processor, examples, tmp_path, monkeypatch,
                                            tiny_world_model_dir):
    model, processor = model_and_processor
    out = tmp_path / "dpo"
    fit(model, processor, examples, _config(), out=out)
    saved = json.loads((out / "reference_logps.json").read_text())
    assert sorted(saved["logps"]) == sorted(e.id for e in examples)
    assert saved["columns"] == ["chosen", "rejected", ""]
    assert all(v["chosen"] < 0 and v["rejected"] < 0 for v in saved["logps"].values())
    history = json.loads((out / "train_history.json").read_text())
    assert history["n_pairs"] == N_PAIRS and len(history["history"]) == 1

    # A second run into the same directory reads the cache: the only forward is the one training step.
    calls = []

    def counting(model, batch):
        calls.append(torch.is_grad_enabled())
        return continuation_logps(model, batch)

    monkeypatch.setattr(preference, "continuation_logps", counting)
    model2, processor2 = load(tiny_world_model_dir, dtype="float32", device="cpu")
    fit(model2, processor2, examples, _config(), out=out)
    assert calls == [True]  # one training forward (with grad), no reference forward (no grad)


def test_reference_cache_values_are_used_and_recomputed_when_stale(model_and_processor, examples, tmp_path):
    model, processor = model_and_processor
    cache = tmp_path / "reference_logps.json"
    reference_logps(model, processor, examples, cache=cache)
    saved = json.loads(cache.read_text())
    planted = {**saved, "logps": {e.id: {"chosen": -1.0, "rejected": -2.0} for e in examples}}
    cache.write_text(json.dumps(planted))
    ref = reference_logps(model, processor, examples, cache=cache)
    assert all(ref[e.id] == {"chosen": -1.0, "rejected": -2.0} for e in examples)

    # Another model, edited text under the same id, other columns, a missing id: each is recomputed.
    stale = [({**planted, "model": "another-model"}, examples, Columns()),
             (planted, [replace(examples[0], chosen=examples[0].chosen + " extra"), *examples[1:]], Columns()),
             (planted, examples, Columns(("chosen", "rejected", "chosen_corrupt"),
                                         (("chosen_corrupt", lambda e: e.image),), key="same")),
             ({**planted, "logps": {k: v for k, v in planted["logps"].items() if k != examples[0].id}}, examples,
              Columns())]
    for content, exs, columns in stale:
        cache.write_text(json.dumps(content))
        assert reference_logps(model, processor, exs, columns, cache)[exs[1].id]["chosen"] != -1.0
    # a damaged cache file is recomputed, never trusted
    cache.write_text("{not json")
    ref = reference_logps(model, processor, examples, cache=cache)
    e = examples[1]
    with torch.no_grad():
        total, _ = sequence_logps(model, encode(processor, [e.image], [e.instruction], [e.chosen]))
    assert ref[e.id]["chosen"] == pytest.approx(float(total[0]), abs=1e-4)


def test_first_step_loss_and_nll_term(model_and_processor, examples, tmp_path):
    """At step 1 the policy equals the reference, so the sigmoid loss is log 2 for every pair; the NLL term
    adds w * mean(-chosen_sum / chosen_len) over the same (reference) log-probs."""
    model, processor = model_and_processor
    out = tmp_path / "nll"
    _, history = fit(model, processor, examples,
                                 _config(loss={"sigmoid": 1.0, "nll": 0.5}, lora=LoraSettings(r=4)), out=out)
    cache = json.loads((out / "reference_logps.json").read_text())["logps"]
    lengths = {e.id: len(processor.tokenizer(e.chosen, add_special_tokens=False)["input_ids"]) + 1 for e in examples}
    mean_nll = sum(-cache[i]["chosen"] / lengths[i] for i in cache) / len(cache)
    assert history[0]["loss"] == pytest.approx(math.log(2) + 0.5 * mean_nll, abs=1e-4)
    assert history[0]["loss_sigmoid"] == pytest.approx(math.log(2), abs=1e-5)
    assert history[0]["reward_margin"] == pytest.approx(0.0, abs=1e-5)
    assert history[0]["chosen_logp"] == pytest.approx(sum(v["chosen"] for v in cache.values()) / len(cache), abs=1e-4)


def test_sft_only_needs_no_reference(model_and_processor, examples, monkeypatch):
    model, processor = model_and_processor
    monkeypatch.setattr(preference, "reference_logps", lambda *a, **k: pytest.fail("sft needs no reference"))
    _, history = fit(model, processor, examples, _config(loss={"sft": 1.0}))
    assert history[0]["loss"] > 0 and "reward_margin" not in history[0]


def test_ipo_first_step_and_training(model_and_processor, examples):
    """IPO at zero margin: (0 - 1/(2 beta))^2 = 1/(4 beta^2) = 1 for beta = 0.5; then it trains (finite, lower)."""
    model, processor = model_and_processor
    _, history = fit(model, processor, examples,
                                 _config(steps_epochs=6, lr=1e-3, beta=0.5, loss={"ipo": 1.0}))
    assert history[0]["loss"] == pytest.approx(1.0, abs=1e-4)
    assert len(history) == 6 and all(math.isfinite(h["loss"]) for h in history)
    assert history[-1]["loss"] < history[0]["loss"]


def test_training_makes_margin_positive(model_and_processor, examples):
    model, processor = model_and_processor
    before = reference_logps(model, processor, examples)
    config = _config(steps_epochs=10, lr=2e-3, beta=0.1)
    trained, history = fit(model, processor, examples, config)
    after = reference_logps(trained, processor, examples)
    margins = [config.beta * ((after[e.id]["chosen"] - before[e.id]["chosen"])
                              - (after[e.id]["rejected"] - before[e.id]["rejected"])) for e in examples]
    assert all(m > 0 for m in margins), margins
    assert history[-1]["reward_margin"] > 0 and history[-1]["loss"] < math.log(2)


def test_optim_steps_is_honoured(model_and_processor, examples):
    """optim.steps wins over epochs (it used to be recomputed from epochs)."""
    model, processor = model_and_processor
    config = replace(_config(steps_epochs=1), optim=OptimConfig(steps=3, lr=1e-4, warmup_ratio=0.0, log_every=1))
    _, history = fit(model, processor, examples, config)
    assert [h["step"] for h in history] == [1, 2, 3]


def test_a_killed_training_resumes_from_its_checkpoint(examples, tmp_path, tiny_world_model_dir, monkeypatch):
    """Stopped after step 3 of 6 with a checkpoint every 2 steps, a rerun resumes at step 2 and ends with the
    same weights and losses as a run that was never stopped."""
    config = replace(_config(steps_epochs=6, lr=1e-3), batch_size=4, checkpoint_every=2)

    def fresh():
        return load(tiny_world_model_dir, dtype="float32", device="cpu")

    whole, whole_history = fit(*fresh(), examples, config, out=tmp_path / "whole")
    real_step = torch.optim.AdamW.step
    steps = {"n": 0}

    def stop_after_three(self, *args, **kwargs):
        steps["n"] += 1
        if steps["n"] > 3:
            raise KeyboardInterrupt("killed")
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", stop_after_three)
    with pytest.raises(KeyboardInterrupt):
        fit(*fresh(), examples, config, out=tmp_path / "killed")
    assert [p.name for p in (tmp_path / "killed" / "checkpoints").iterdir()] == ["checkpoint-2"]
    taken = []

    def count(self, *args, **kwargs):
        taken.append(1)
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", count)
    # how often checkpoints are written is no part of the job: a resume under another frequency takes it up
    resumed, history = fit(*fresh(), examples, replace(config, checkpoint_every=5, checkpoint_minutes=1.0),
                           out=tmp_path / "killed")
    assert len(taken) == len(whole_history) - 2, "from step 3 on only"
    assert [h["step"] for h in history] == [h["step"] for h in whole_history]
    assert [h["loss"] for h in history] == pytest.approx([h["loss"] for h in whole_history], abs=1e-6)
    for (name, a), (_, b) in zip(whole.named_parameters(), resumed.named_parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name


def test_a_checkpoint_is_written_every_few_minutes_by_default(model_and_processor, examples, tmp_path, monkeypatch):
    """With no `checkpoint_every`, training still saves a resumable checkpoint once `checkpoint_minutes` (5 by
    default) have passed since the last one; here a clock that moves one minute each time it is read."""
    import types

    import vlalign.train.loop as loop

    assert TrainConfig().checkpoint_every == 0 and TrainConfig().checkpoint_minutes == 5.0
    minutes = iter(range(10_000))
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(monotonic=lambda: 60.0 * next(minutes)))
    saved: list[int] = []
    real_save = loop.Checkpoints.save
    monkeypatch.setattr(loop.Checkpoints, "save", lambda self, step, *a: (saved.append(step), real_save(self, step, *a))[1])
    config = replace(_config(steps_epochs=6, lr=1e-3), batch_size=4)  # 12 steps
    fit(*model_and_processor, examples, config, out=tmp_path / "timed")
    # read at the start (minute 0), then once a step: due at step 5 (minute 5); read again once saved (6), so
    # due next at step 10 (minute 11); never at the last step, whose model the caller saves
    assert saved == [5, 10]
    assert [p.name for p in (tmp_path / "timed" / "checkpoints").iterdir()] == ["checkpoint-10"]
    saved.clear()
    fit(*model_and_processor, examples, replace(config, checkpoint_minutes=0.0, seed=1), out=tmp_path / "never")
    assert saved == [] and not (tmp_path / "never" / "checkpoints").exists()


def test_conditional_term_needs_a_corrupted_image(model_and_processor, examples):
    model, processor = model_and_processor
    with pytest.raises(ValueError, match="chosen_corrupt"):
        fit(model, processor, examples, _config(loss={"sigmoid": 1.0, "conditional": 1.0}))
    grey = Preference({"chosen_corrupt": lambda e: e.image.convert("L")}, key="grey")
    assert grey.columns(_config(loss={"conditional": 1.0})).names == ("chosen", "rejected", "chosen_corrupt")
    _, history = fit(model, processor, examples, _config(loss={"conditional": 1.0}), grey)
    assert history[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)  # policy = reference at step 1


def test_empty_examples_raise(model_and_processor):
    model, processor = model_and_processor
    with pytest.raises(ValueError, match="at least one preference pair"):
        fit(model, processor, [], _config())


@pytest.mark.parametrize("lora", [None, LoraSettings(r=4)])
def test_saved_model_loads_back(model_and_processor, examples, tmp_path, lora, tiny_world_model_dir):
    model, processor = model_and_processor
    out = tmp_path / "saved"
    trained, _ = fit(model, processor, examples, _config(steps_epochs=2, lr=1e-3, lora=lora))
    save(trained, processor, out)
    assert (out / ("adapter_config.json" if lora else "config.json")).exists()
    reloaded, processor2 = load(out, dtype="float32", device="cpu")
    e = examples[0]
    batch = encode(processor2, [e.image], [e.instruction], [e.chosen])
    with torch.no_grad():
        a = sequence_logps(trained.eval(), batch)[0]
        b = sequence_logps(reloaded, batch)[0]
        base = sequence_logps(load(tiny_world_model_dir, dtype="float32", device="cpu")[0], batch)[0]
    assert float(a) == pytest.approx(float(b), abs=1e-4)
    assert abs(float(a) - float(base)) > 1e-3  # what was saved is the trained model, not the base


@pytest.mark.parametrize("shape", ["cosine", "constant"])
@pytest.mark.parametrize(("warmup", "steps"), [(0, 1), (0, 8), (3, 10), (10, 10)])
def test_the_schedule_is_transformers_with_warmup(warmup, steps, shape):
    """The loop's schedules (written out so training does not import the Trainer's utilities) are transformers'."""
    from functools import partial

    from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

    from vlalign.train.loop import warmup_schedule

    def optimizer():
        return torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)

    reference = (partial(get_cosine_schedule_with_warmup, num_training_steps=steps) if shape == "cosine"
                 else get_constant_schedule_with_warmup)
    ours = warmup_schedule(optimizer(), warmup, steps, shape).lr_lambdas[0]
    theirs = reference(optimizer(), warmup).lr_lambdas[0]
    assert [ours(s) for s in range(steps + 2)] == pytest.approx([theirs(s) for s in range(steps + 2)], abs=1e-12)


def test_a_batch_longer_than_row_tokens_trains_in_parts_to_the_same_weights(examples, tiny_world_model_dir,
                                                                             monkeypatch):
    """optim.row_tokens bounds the tokens of one forward: a batch of 8 pairs trains as several rows (each
    within the limit), and since the parts' losses are weighted by their share of the pairs, the weights after
    two steps are those of one row per batch."""
    import vlalign.train.loop as loop

    config = _config(steps_epochs=2, lr=1e-3, loss={"sigmoid": 1.0, "ipo": 0.5})

    def fresh():
        return load(tiny_world_model_dir, dtype="float32", device="cpu")

    whole, whole_history = fit(*fresh(), examples, config)
    seen: list[list[int]] = []
    real = loop.rows_of

    def watched(*args):
        parts = real(*args)
        seen.append([loop._tokens(p) for p, _ in parts])
        return parts

    monkeypatch.setattr(loop, "rows_of", watched)
    limit = 100  # a batch's row is 272 tokens
    cut = replace(config, optim=replace(config.optim, row_tokens=limit))
    parts, parts_history = fit(*fresh(), examples, cut)
    assert seen and all(len(s) > 1 and max(s) <= limit for s in seen), seen
    assert [h["loss"] for h in parts_history] == pytest.approx([h["loss"] for h in whole_history], abs=1e-5)
    for (name, a), (_, b) in zip(whole.named_parameters(), parts.named_parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-5), name


def test_every_process_trains_on_as_many_row_parts_as_the_one_that_needs_most(monkeypatch):
    """A loss that reduces across processes is called once per part, so a process whose share fits in fewer
    parts splits into as many as the others (an empty part weighs 0)."""
    import vlalign.train.loop as loop
    from vlalign import ranks

    def collate(items, number):
        return {"input_ids": torch.zeros(1, 10 * len(items))}

    assert [s for _, s in loop.rows_of(list(range(4)), collate, 0, 25)] == [0.5, 0.5]
    assert [s for _, s in loop.rows_of(list(range(4)), collate, 0, None)] == [1.0]
    monkeypatch.setattr(ranks, "launched", lambda: True)
    monkeypatch.setattr(ranks, "gather", lambda values: [*values, 5])  # another process needs 5 parts
    parts = loop.rows_of(list(range(4)), collate, 0, 25)
    assert sorted(s for _, s in parts) == [0.0, 0.25, 0.25, 0.25, 0.25]
    assert sum(s for _, s in parts) == 1.0


def test_a_share_of_one_example_still_agrees_on_the_parts(monkeypatch):
    """The last batch of an epoch can leave a process one example: it still joins the processes' count of
    parts (else the others would wait for it), and trains on its example with weight 1 in one of them."""
    import vlalign.train.loop as loop
    from vlalign import ranks

    asked: list[list[int]] = []

    def gathered(values):
        asked.append(values)
        return [*values, 3]

    monkeypatch.setattr(ranks, "launched", lambda: True)
    monkeypatch.setattr(ranks, "gather", gathered)
    parts = loop.rows_of([7], lambda items, number: {"input_ids": torch.zeros(1, 40 * len(items))}, 0, 25)
    assert asked == [[1]] and sorted(s for _, s in parts) == [0.0, 0.0, 1.0]


def test_adamw_is_fused_where_the_parameters_allow_and_steps_as_the_unfused_one():
    from vlalign.train.loop import adamw

    torch.manual_seed(0)
    plain = [torch.nn.Parameter(torch.randn(3, 5)), torch.nn.Parameter(torch.randn(7))]
    twins = [torch.nn.Parameter(p.detach().clone()) for p in plain]
    config = OptimConfig(lr=1e-2, weight_decay=0.1)
    fused, unfused = adamw(plain, config), torch.optim.AdamW(twins, lr=1e-2, weight_decay=0.1)
    assert fused.defaults["fused"] is True
    for _ in range(3):
        for a, b in zip(plain, twins, strict=True):
            a.grad = torch.randn_like(a)
            b.grad = a.grad.clone()
        fused.step()
        unfused.step()
    for a, b in zip(plain, twins, strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    assert not adamw([torch.nn.Parameter(torch.empty(2, device="meta"))], config).defaults["fused"]
