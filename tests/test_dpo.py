"""DPO training on the tiny random world model: reference cache, first-step loss values, learning, saving."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

import vlalign.train.dpo as dpo
from vlalign.models.batching import encode
from vlalign.models.load import load
from vlalign.models.scoring import sequence_logps
from vlalign.train.dpo import DPOConfig, LoraSettings, PreferenceExample, reference_logps, train_dpo
from vlalign.train.loop import OptimConfig
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


def _config(steps_epochs: float = 1.0, lr: float = 1e-4, **kw) -> DPOConfig:
    # batch_size == N_PAIRS: the first step sees every pair, so its loss can be computed by hand
    return DPOConfig(batch_size=N_PAIRS, epochs=steps_epochs, optim=OptimConfig(lr=lr, warmup_ratio=0.0, log_every=1),
                     **kw)


def _n_tokens(processor, text: str) -> int:
    return len(processor.tokenizer(text, add_special_tokens=False)["input_ids"]) + 1  # + EOS


def test_reference_cache_written_and_reused(model_and_processor, examples, tmp_path, monkeypatch,
                                            tiny_world_model_dir):
    model, processor = model_and_processor
    out = tmp_path / "dpo"
    train_dpo(model, processor, examples, _config(), out=out)
    cache = json.loads((out / "reference_logps.json").read_text())["logps"]
    assert sorted(cache) == sorted(e.id for e in examples)
    for e in examples:
        chosen_sum, rejected_sum, chosen_len, rejected_len = cache[e.id]
        assert chosen_sum < 0 and rejected_sum < 0
        # lengths are the response tokens plus EOS ("there is a red circle ." -> 6 words/punct + EOS = 7)
        assert chosen_len == _n_tokens(processor, e.chosen) == 7
        assert rejected_len == _n_tokens(processor, e.rejected) == 10
    history = json.loads((out / "train_history.json").read_text())
    assert history["n_pairs"] == N_PAIRS and len(history["history"]) == 1

    # A second run into the same directory reads the cache: the only forward is the one training step.
    calls = []

    def counting(model, batch):
        calls.append(torch.is_grad_enabled())
        return sequence_logps(model, batch)

    monkeypatch.setattr(dpo, "sequence_logps", counting)
    model2, processor2 = load(tiny_world_model_dir, dtype="float32", device="cpu")
    train_dpo(model2, processor2, examples, _config(), out=out)
    assert calls == [True]  # one training forward (with grad), no reference forward (no grad)


def test_reference_cache_values_are_used_and_recomputed_when_incomplete(model_and_processor, examples, tmp_path,
                                                                         monkeypatch):
    model, processor = model_and_processor
    cache = tmp_path / "reference_logps.json"
    reference_logps(model, processor, examples, cache)
    saved = json.loads(cache.read_text())
    planted = {**saved, "logps": {e.id: [-1.0, -2.0, 3.0, 4.0] for e in examples}}
    cache.write_text(json.dumps(planted))
    ref = reference_logps(model, processor, examples, cache)
    assert all(ref[e.id].tolist() == [-1.0, -2.0, 3.0, 4.0] for e in examples)

    # A cache made by other weights is stale: recomputed.
    cache.write_text(json.dumps({**planted, "model": "another-model"}))
    assert reference_logps(model, processor, examples, cache)[examples[0].id].tolist() != [-1.0, -2.0, 3.0, 4.0]

    # Changed text under the same id is stale too.
    cache.write_text(json.dumps(planted))
    edited = [replace(examples[0], chosen=examples[0].chosen + " extra"), *examples[1:]]
    assert reference_logps(model, processor, edited, cache)[examples[0].id].tolist() != [-1.0, -2.0, 3.0, 4.0]

    # One id missing from the cache: everything is recomputed and the cache rewritten.
    del planted["logps"][examples[0].id]
    cache.write_text(json.dumps(planted))
    ref = reference_logps(model, processor, examples, cache)
    fresh = json.loads(cache.read_text())["logps"]
    assert set(fresh) == {e.id for e in examples}
    assert ref[examples[1].id].tolist() != [-1.0, -2.0, 3.0, 4.0]
    # and equals a direct computation of the chosen row's log-prob sum
    e = examples[1]
    with torch.no_grad():
        total, count = sequence_logps(model, encode(processor, [e.image], [e.instruction], [e.chosen]))
    assert float(ref[e.id][0]) == pytest.approx(float(total[0]), abs=1e-4)
    assert float(ref[e.id][2]) == float(count[0])


def test_first_step_loss_and_nll_term(model_and_processor, examples, tmp_path):
    """At step 1 the policy equals the reference, so the sigmoid loss is log 2 for every pair; the NLL term
    adds w * mean(-chosen_sum / chosen_len) over the same (reference) log-probs."""
    model, processor = model_and_processor
    out = tmp_path / "nll"
    _, history = train_dpo(model, processor, examples, _config(nll_weight=0.5, lora=LoraSettings(r=4)), out=out)
    cache = json.loads((out / "reference_logps.json").read_text())["logps"]
    mean_nll = sum(-c / lc for c, _, lc, _ in cache.values()) / len(cache)
    assert history[0]["loss"] == pytest.approx(math.log(2) + 0.5 * mean_nll, abs=1e-4)
    assert history[0]["reward_margin"] == pytest.approx(0.0, abs=1e-5)
    assert history[0]["chosen_logp"] == pytest.approx(sum(c for c, _, _, _ in cache.values()) / len(cache), abs=1e-4)


def test_ipo_first_step_and_training(model_and_processor, examples):
    """IPO at zero margin: (0 - 1/(2 beta))^2 = 1/(4 beta^2) = 1 for beta = 0.5; then it trains (finite, lower)."""
    model, processor = model_and_processor
    _, history = train_dpo(model, processor, examples, _config(steps_epochs=6, lr=1e-3, beta=0.5, loss_type="ipo"))
    assert history[0]["loss"] == pytest.approx(1.0, abs=1e-4)
    assert len(history) == 6 and all(math.isfinite(h["loss"]) for h in history)
    assert history[-1]["loss"] < history[0]["loss"]


def test_training_makes_margin_positive(model_and_processor, examples):
    model, processor = model_and_processor
    before = reference_logps(model, processor, examples)
    config = _config(steps_epochs=10, lr=2e-3, beta=0.1)
    trained, history = train_dpo(model, processor, examples, config)
    after = reference_logps(trained, processor, examples)
    margins = [config.beta * ((after[e.id][0] - before[e.id][0]) - (after[e.id][1] - before[e.id][1]))
               for e in examples]
    assert all(float(m) > 0 for m in margins), margins
    assert history[-1]["reward_margin"] > 0 and history[-1]["loss"] < math.log(2)


def test_empty_examples_raise(model_and_processor):
    model, processor = model_and_processor
    with pytest.raises(ValueError, match="at least one preference pair"):
        train_dpo(model, processor, [], _config())


@pytest.mark.parametrize("lora", [None, LoraSettings(r=4)])
def test_saved_model_loads_back(model_and_processor, examples, tmp_path, lora, tiny_world_model_dir):
    model, processor = model_and_processor
    out = tmp_path / "saved"
    trained, _ = train_dpo(model, processor, examples, _config(steps_epochs=2, lr=1e-3, lora=lora), out=out)
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
