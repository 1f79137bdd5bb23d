"""A mixture of experts' router term: the load-balancing loss TRL adds (`router_aux_loss_coef * aux_loss`), from
shared-prefix rows, with TRL's coefficient convention, in the objective and its history, while the cached
reference log-probs stay what they were."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_archs import ARCHS, random_image

import vlalign.train.preference as preference
from vlalign.models import moe, prefix
from vlalign.models.batching import encode, model_inputs
from vlalign.train.columns import Columns
from vlalign.train.examples import PreferenceExample
from vlalign.train.fit import fit
from vlalign.train.preference import batch_rows
from vlalign.train.settings import OptimConfig, TrainConfig

INSTRUCTIONS = ["describe the image.", "is there a red circle?", "what color is the square?"]
CHOSEN = ["there is a red circle.", "yes", "it is blue."]
REJECTED = ["a blue square and a star on the left.", "no, there is a green triangle.", "red"]


@pytest.fixture(scope="module")
def built():
    return ARCHS["qwen3_vl_moe"]()


@pytest.fixture
def examples() -> list[PreferenceExample]:
    return [PreferenceExample(f"e{i}", random_image(i, size=32 + 8 * i), INSTRUCTIONS[i], CHOSEN[i], REJECTED[i])
            for i in range(3)]


def trl_aux_loss(model, processor, examples) -> torch.Tensor:
    """What TRL's DPOTrainer adds (times the coefficient): the model's own `aux_loss` over TRL's rows, one
    padded row per prompt and answer (chosen rows, then rejected), padding masked."""
    rows = encode(processor, [e.image for e in examples] * 2, [e.instruction for e in examples] * 2,
                  [e.chosen for e in examples] + [e.rejected for e in examples])
    return model(**model_inputs(rows), output_router_logits=True).aux_loss


def test_the_router_term_of_shared_rows_is_trls(built, examples):
    """Each prompt is forwarded once for both answers, and its tokens count twice, as in TRL's two rows: the
    load-balancing loss equals TRL's to 1e-6 (with shared rows and with one row per answer). Counted once it
    would not, and it trains the routers."""
    model, processor = built
    model.train()
    _, _, shared = prefix.continuation_logps_and_router(model, batch_rows(processor, examples, Columns()))
    _, _, apart = prefix.continuation_logps_and_router(model, batch_rows(processor, examples, Columns(), shared=False))
    with torch.no_grad():
        theirs = trl_aux_loss(model, processor, examples)
    assert float(theirs) > 0
    torch.testing.assert_close(shared.detach(), theirs, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(apart.detach(), theirs, rtol=1e-6, atol=1e-6)
    batch = batch_rows(processor, examples, Columns())
    with moe.captured_router_logits(model) as logits, torch.no_grad():
        prefix.continuation_logps(model, batch)
    once = moe.load_balancing_loss(model, logits, (batch["packing"]["segment"] >= 0).long())
    assert abs(float(once) - float(theirs)) > 1e-4
    model.zero_grad()
    shared.backward()
    routers = [p.grad for n, p in model.named_parameters() if n.endswith("mlp.gate.weight")]
    assert routers and all(g is not None and g.abs().sum() > 0 for g in routers)
    model.zero_grad()
    model.eval()


def test_the_router_term_is_the_same_under_gradient_checkpointing(examples):
    """The router logits are taken by hooks that are gone before backward, so recomputing the forward in
    backward adds none: the same value, and gradients that reach the routers."""
    model, processor = ARCHS["qwen3_vl_moe"](seed=1)
    model.train()
    batch = batch_rows(processor, examples, Columns())
    _, _, plain = prefix.continuation_logps_and_router(model, batch)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    total, _, checkpointed = prefix.continuation_logps_and_router(model, batch)
    (total.sum() + checkpointed).backward()
    torch.testing.assert_close(checkpointed, plain, rtol=1e-6, atol=1e-7)
    assert all(p.grad is not None for n, p in model.named_parameters() if n.endswith("mlp.gate.weight"))


def test_the_coefficient_follows_trls_convention(built):
    """Unset, the checkpoint's own router_aux_loss_coef; 0 turns the term off; a weight for a model without
    routers is an error that says so; a model without routers has no term."""
    model, _ = built
    assert moe.is_moe(model) and moe.router_coefficient(model, None) == pytest.approx(0.01)
    assert moe.router_coefficient(model, 0.0) == 0.0 and moe.router_coefficient(model, 0.3) == 0.3
    dense, _ = ARCHS["qwen3_vl"]()
    assert not moe.is_moe(dense) and moe.router_coefficient(dense, None) == 0.0
    with pytest.raises(ValueError, match="no expert routers"):
        moe.router_coefficient(dense, 0.3)


def test_the_router_term_is_weighted_by_its_own_setting():
    with pytest.raises(ValueError, match="router term takes its weight from router_aux_loss_coef"):
        TrainConfig(loss={"sigmoid": 1.0, "router": 0.1})
    with pytest.raises(ValueError, match="router_aux_loss_coef must be null or a number >= 0"):
        TrainConfig(router_aux_loss_coef=-0.1)


def test_a_moe_dpo_run_logs_its_router_loss_and_keeps_its_reference_cache(examples, tmp_path, monkeypatch):
    """A tiny Qwen3-VL-MoE DPO run: every history entry has the router loss, and the loss is the DPO terms plus
    coefficient x router loss. The reference log-probs hold no router term: a run without it reads the same
    cache file, and the cache equals the plain log-probs."""
    scored = []
    real = preference._scored
    monkeypatch.setattr(preference, "_scored", lambda *a, **k: scored.append(1) or real(*a, **k))
    config = TrainConfig(batch_size=3, optim=OptimConfig(lr=1e-3, warmup_ratio=0.0, log_every=1, steps=2))
    model, processor = ARCHS["qwen3_vl_moe"](seed=3)
    _, history = fit(model, processor, examples, config, out=tmp_path)
    assert len(history) == 2 and all(h["loss_router"] > 0 for h in history)
    for h in history:
        assert h["loss"] == pytest.approx(h["loss_sigmoid"] + 0.01 * h["loss_router"], rel=1e-5)
    assert history[0]["loss_sigmoid"] == pytest.approx(0.6931, abs=1e-4)
    cache = json.loads((tmp_path / "reference_logps.json").read_text())
    fresh, _ = ARCHS["qwen3_vl_moe"](seed=3)
    with torch.no_grad():
        plain, _ = prefix.continuation_logps(fresh, batch_rows(processor, examples, Columns()))
    assert [cache["logps"][e.id]["chosen"] for e in examples] == pytest.approx(plain[:3].tolist(), abs=1e-4)
    assert scored == [1]

    off = TrainConfig(batch_size=3, router_aux_loss_coef=0.0,
                      optim=OptimConfig(lr=1e-3, warmup_ratio=0.0, log_every=1, steps=2))
    _, quiet = fit(fresh, processor, examples, off, out=tmp_path)
    assert scored == [1]  # the cache made with the router term served the run without it
    assert "loss_router" not in quiet[0] and quiet[0]["loss"] == pytest.approx(quiet[0]["loss_sigmoid"])
