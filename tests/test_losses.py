"""The loss terms against TRL's DPOTrainer on identical log-probs (alone and weighted, as MPO mixes them),
and the terms TRL lacks (nll, anchor, conditional) by hand.

TRL 1.16 computes its loss inside `DPOTrainer._compute_loss`, after a forward pass. The test builds a
bare trainer (object.__new__, only the attributes that method reads) and a stub model whose per-token
log-probs sum to chosen values, so the real TRL code runs on exactly the numbers we give our function.
"""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig

from vlalign.train import settings
from vlalign.train.columns import Columns
from vlalign.train.losses import TERMS, Logps, columns_of, dpo_loss, objective, with_router
from vlalign.train.preference import make_loss
from vlalign.train.settings import TrainConfig

trl_dpo = pytest.importorskip("trl.trainer.dpo_trainer")

BETAS = (0.05, 0.1, 0.5, 2.0)


class _StubModel:
    """Returns fixed per-token log-probs the way TRL's fused LM head does (zeros outside the completion)."""

    training = True

    def __init__(self, per_token_logps: torch.Tensor, aux_loss: torch.Tensor | None = None):
        self.per_token_logps, self.aux_loss = per_token_logps, aux_loss

    def __call__(self, **kwargs):
        lp = self.per_token_logps
        return SimpleNamespace(log_probs=lp, entropy=torch.zeros_like(lp), mean_logits=torch.zeros_like(lp),
                               is_top1=torch.zeros_like(lp, dtype=torch.bool), aux_loss=self.aux_loss)


def _bare_trainer(loss_types: list[str], weights: list[float], beta: float, label_smoothing: float = 0.0,
                  router_aux_loss_coef: float = 0.0):
    trainer = object.__new__(trl_dpo.DPOTrainer)
    identity = lambda t: t  # noqa: E731
    trainer.__dict__.update(
        accelerator=SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=identity, gather=identity),
        aux_loss_enabled=router_aux_loss_coef != 0.0, router_aux_loss_coef=router_aux_loss_coef,
        ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl",
        loss_types=loss_types, loss_weights=weights, beta=beta, label_smoothing=label_smoothing,
        use_weighting=False, _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0, _tp_size=1,
    )
    return trainer


def trl_loss(loss_type: str | dict[str, float], beta: float, chosen, rejected, ref_chosen, ref_rejected, chosen_len,
             rejected_len, label_smoothing: float = 0.0, router: tuple[float, torch.Tensor] | None = None) -> float:
    """TRL's batch-mean loss for sequence log-prob sums with the given completion lengths (tokens); `router` is
    (router_aux_loss_coef, the model's aux_loss) for a mixture of experts."""
    lengths = torch.cat([chosen_len, rejected_len]).long()
    logps = torch.cat([chosen, rejected]).double()
    n, width = len(lengths), int(lengths.max()) + 2
    # Completion tokens sit at positions 1..len (position 0 is the prompt); the shifted mask drops position 0.
    completion_mask = torch.zeros(n, width, dtype=torch.long)
    for i, k in enumerate(lengths.tolist()):
        completion_mask[i, 1:1 + k] = 1
    shifted = completion_mask[:, 1:].double()
    per_token = shifted * (logps / lengths.clamp(min=1)).unsqueeze(1)  # spread each sum over its tokens
    terms = loss_type if isinstance(loss_type, dict) else {loss_type: 1.0}
    coef, aux = router or (0.0, None)
    trainer = _bare_trainer(list(terms), list(terms.values()), beta, label_smoothing, coef)
    trainer.model = _StubModel(per_token, aux)
    inputs = {"input_ids": torch.zeros(n, width, dtype=torch.long), "attention_mask": torch.ones(n, width),
              "completion_mask": completion_mask,
              "ref_chosen_logps": ref_chosen.double(), "ref_rejected_logps": ref_rejected.double()}
    return float(trainer._compute_loss(trainer.model, inputs, return_outputs=False))


def _random_logps(seed: int, n: int = 6):
    g = torch.Generator().manual_seed(seed)
    sums = [-(torch.rand(n, generator=g, dtype=torch.float64) * 40 + 1) for _ in range(4)]
    lengths = [torch.randint(1, 30, (n,), generator=g).double() for _ in range(2)]
    return (*sums, *lengths)


def _x(c, r, rc, rr, lc, lr, beta, eps=0.0) -> Logps:
    return Logps({"chosen": c, "rejected": r}, {"chosen": rc, "rejected": rr}, {"chosen": lc, "rejected": lr}, beta, eps)


def test_every_term_is_implemented_and_named_in_the_settings():
    assert tuple(TERMS) == settings.TERMS
    assert columns_of({"sigmoid": 1.0}) == ("chosen", "rejected")
    assert columns_of({"conditional": 1.0, "sft": 1.0}) == ("chosen", "rejected", "chosen_corrupt")


@pytest.mark.parametrize("term", ["sigmoid", "hinge", "ipo", "bco_pair", "sft"])
@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("seed", [0, 3])
def test_term_matches_trl(term, beta, seed):
    c, r, rc, rr, lc, lr = _random_logps(seed)
    loss, _ = objective({term: 1.0}, _x(c, r, rc, rr, lc, lr, beta))
    assert float(loss) == pytest.approx(trl_loss(term, beta, c, r, rc, rr, lc, lr), abs=1e-6)


@pytest.mark.parametrize("coef", [0.001, 0.01, 0.5])
def test_the_router_term_enters_the_loss_as_trls_aux_loss(coef):
    """A mixture of experts: TRL adds router_aux_loss_coef x the model's aux_loss to its terms; the router term
    with that weight adds the same (its value from the same rows is TRL's: tests/test_moe.py)."""
    c, r, rc, rr, lc, lr = _random_logps(7)
    aux = torch.tensor(1.37, dtype=torch.float64)
    x = Logps({"chosen": c, "rejected": r}, {"chosen": rc, "rejected": rr}, {"chosen": lc, "rejected": lr}, 0.1,
              router=aux)
    loss, parts = objective(with_router({"sigmoid": 1.0, "sft": 0.5}, coef), x)
    theirs = trl_loss({"sigmoid": 1.0, "sft": 0.5}, 0.1, c, r, rc, rr, lc, lr, router=(coef, aux))
    assert float(loss) == pytest.approx(theirs, abs=1e-6)
    assert parts["loss_router"] == pytest.approx(1.37)
    assert "loss_router" not in objective(with_router({"sigmoid": 1.0}, 0.0), x)[1]


@pytest.mark.parametrize("term", ["sigmoid", "hinge", "ipo", "bco_pair"])
def test_per_example_terms_match_trl_one_pair_at_a_time(term):
    c, r, rc, rr, lc, lr = _random_logps(5)
    ours = TERMS[term](_x(c, r, rc, rr, lc, lr, 0.3))
    assert ours.shape == (6,)
    for i in range(len(c)):
        s = slice(i, i + 1)
        assert float(ours[i]) == pytest.approx(trl_loss(term, 0.3, c[s], r[s], rc[s], rr[s], lc[s], lr[s]), abs=1e-6)


@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_robust_matches_trl(eps):
    c, r, rc, rr, lc, lr = _random_logps(2)
    loss, _ = objective({"robust": 1.0}, _x(c, r, rc, rr, lc, lr, 0.2, eps))
    assert float(loss) == pytest.approx(trl_loss("robust", 0.2, c, r, rc, rr, lc, lr, label_smoothing=eps), abs=1e-6)


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_cdpo_is_label_smoothed_sigmoid(beta, eps):
    """cDPO: -(1-e) log s(b h) - e log s(-b h). TRL 1.16's "sigmoid" ignores label_smoothing; its "aot" loss on a
    single pair reduces to exactly the cDPO formula (sorting a batch of one is the identity)."""
    c, r, rc, rr, lc, lr = _random_logps(7)
    ours = TERMS["cdpo"](_x(c, r, rc, rr, lc, lr, beta, eps))
    for i in range(len(c)):
        s = slice(i, i + 1)
        ref = trl_loss("aot", beta, c[s], r[s], rc[s], rr[s], lc[s], lr[s], label_smoothing=eps)
        assert float(ours[i]) == pytest.approx(ref, abs=1e-6)
        h = float((c[i] - rc[i]) - (r[i] - rr[i]))
        by_hand = -(1 - eps) * math.log(1 / (1 + math.exp(-beta * h))) - eps * math.log(1 / (1 + math.exp(beta * h)))
        assert float(ours[i]) == pytest.approx(by_hand, abs=1e-6)


@pytest.mark.parametrize("terms", [{"sigmoid": 0.8, "bco_pair": 0.2, "sft": 1.0}, {"ipo": 0.5, "hinge": 2.0},
                                   {"sigmoid": 1.0, "sft": 0.3}])
def test_weighted_terms_match_trl(terms):
    """MPO (InternVL) is {sigmoid: 0.8, bco_pair: 0.2, sft: 1.0}: TRL's loss_type list with loss_weights."""
    c, r, rc, rr, lc, lr = _random_logps(11)
    loss, parts = objective(terms, _x(c, r, rc, rr, lc, lr, 0.1))
    assert float(loss) == pytest.approx(trl_loss(terms, 0.1, c, r, rc, rr, lc, lr), abs=1e-6)
    assert set(parts) == {f"loss_{t}" for t in terms}


def test_nll_by_hand():
    # -(-6)/3 = 2, -(-3)/1 = 3, an empty answer (length 0) counts as length 1: -(-0.5)/1 = 0.5
    x = Logps({"chosen": torch.tensor([-6.0, -3.0, -0.5])}, {}, {"chosen": torch.tensor([3, 1, 0])}, 0.1)
    assert TERMS["nll"](x).tolist() == pytest.approx([2.0, 3.0, 0.5])
    # TRL's sft weighs every token the same: (6 + 3 + 0.5) / (3 + 1 + 0) tokens
    assert TERMS["sft"](x).tolist() == pytest.approx([9.5 / 4] * 3)


def test_anchor_by_hand():
    # -log sigmoid(0.5 * 2) = 0.3133, -log sigmoid(0) = log 2, and a falling chosen reward costs more
    x = Logps({"chosen": torch.tensor([2.0, 0.0, -2.0])}, {"chosen": torch.zeros(3)}, {}, 0.5)
    assert TERMS["anchor"](x).tolist() == pytest.approx([0.31326, math.log(2), 1.31326], abs=1e-5)


def test_conditional_by_hand():
    """mDPO's conditional term: the chosen answer's log-ratio with the real image against with the corrupted one;
    (-2 - -3) - (-4 - -4) = 1 -> -log s(0.5) = 0.47408."""
    t = lambda *v: torch.tensor(v)  # noqa: E731
    x = Logps({"chosen": t(-2.0), "chosen_corrupt": t(-4.0)}, {"chosen": t(-3.0), "chosen_corrupt": t(-4.0)}, {}, 0.5)
    assert TERMS["conditional"](x).tolist() == pytest.approx([0.47408], abs=1e-5)


def test_anchor_raises_chosen_even_when_dpo_is_satisfied():
    """With the rejected answer far below, DPO's gradient on the chosen answer vanishes; the anchor's does not."""
    c = torch.tensor([-12.0], requires_grad=True)
    r, rc, rr = torch.tensor([-80.0]), torch.tensor([-10.0]), torch.tensor([-10.0])
    TERMS["sigmoid"](_x(c, r, rc, rr, None, None, 0.5)).sum().backward()
    dpo_grad = float(c.grad)
    c.grad = None
    TERMS["anchor"](_x(c, r, rc, rr, None, None, 0.5)).sum().backward()
    assert abs(dpo_grad) < 1e-6 < -float(c.grad)


def test_make_loss_reads_columns_and_reports_rewards(monkeypatch):
    """The training loss: sums and token counts from the model, column after column; reference per column."""
    c, r, rc, rr, lc, lr = _random_logps(11, n=4)
    import vlalign.train.preference as preference

    monkeypatch.setattr(preference, "continuation_logps", lambda model, batch: (torch.cat([c, r]), torch.cat([lc, lr])))
    config = TrainConfig(beta=0.2, loss={"sigmoid": 1.0, "nll": 0.5, "anchor": 1.5})
    dense = SimpleNamespace(config=LlamaConfig())  # a model without expert routers: no router term
    loss, metrics = make_loss(config, Columns())(dense, {"ref": {"chosen": rc, "rejected": rr}})
    expected = (trl_loss("sigmoid", 0.2, c, r, rc, rr, lc, lr) + 0.5 * float((-c / lc).mean())
                + 1.5 * float(-F.logsigmoid(0.2 * (c - rc)).mean()))
    assert float(loss) == pytest.approx(expected, abs=1e-5)
    margin = 0.2 * ((c - rc) - (r - rr))
    assert metrics["reward_margin"] == pytest.approx(float(margin.mean()), abs=1e-6)
    assert metrics["reward_accuracy"] == pytest.approx(float((margin > 0).double().mean()))
    assert metrics["chosen_logp"] == pytest.approx(float(c.mean()))


def test_unknown_terms_and_bad_weights_are_config_errors():
    with pytest.raises(ValueError, match="unknown loss term"):
        TrainConfig(loss={"sigmod": 1.0})
    with pytest.raises(ValueError, match="positive"):
        TrainConfig(loss={"sigmoid": -1.0})


def test_sigmoid_gradient_direction():
    """Minimising the loss raises the chosen log-prob and lowers the rejected one."""
    c = torch.tensor([-10.0], requires_grad=True)
    r = torch.tensor([-10.0], requires_grad=True)
    losses, _, _ = dpo_loss(c, r, torch.tensor([-10.0]), torch.tensor([-10.0]), beta=0.1)
    losses.sum().backward()
    # d/dc -log s(b(c - r)) = -b s(-b h) = -0.1 * 0.5 at h = 0
    assert float(c.grad) == pytest.approx(-0.05) and float(r.grad) == pytest.approx(0.05)
    assert float(losses.detach()) == pytest.approx(-F.logsigmoid(torch.tensor(0.0)).item())
