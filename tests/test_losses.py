"""The preference losses against TRL's DPOTrainer on identical log-probs, and the NLL term by hand.

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

from vlalign.train.dpo import DPOConfig, make_loss
from vlalign.train.losses import anchor_loss, dpo_loss, nll_loss

trl_dpo = pytest.importorskip("trl.trainer.dpo_trainer")

BETAS = (0.05, 0.1, 0.5, 2.0)


class _StubModel:
    """Returns fixed per-token log-probs the way TRL's fused LM head does (zeros outside the completion)."""

    training = True

    def __init__(self, per_token_logps: torch.Tensor):
        self.per_token_logps = per_token_logps

    def __call__(self, **kwargs):
        lp = self.per_token_logps
        return SimpleNamespace(log_probs=lp, entropy=torch.zeros_like(lp), mean_logits=torch.zeros_like(lp),
                               is_top1=torch.zeros_like(lp, dtype=torch.bool))


def _bare_trainer(loss_type: str, beta: float, label_smoothing: float = 0.0):
    trainer = object.__new__(trl_dpo.DPOTrainer)
    identity = lambda t: t  # noqa: E731
    trainer.__dict__.update(
        accelerator=SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=identity, gather=identity),
        aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl",
        loss_types=[loss_type], loss_weights=[1.0], beta=beta, label_smoothing=label_smoothing,
        use_weighting=False, _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0, _tp_size=1,
    )
    return trainer


def trl_loss(loss_type: str, beta: float, chosen, rejected, ref_chosen, ref_rejected, chosen_len, rejected_len,
             label_smoothing: float = 0.0) -> float:
    """TRL's batch-mean loss for sequence log-prob sums with the given completion lengths (tokens)."""
    lengths = torch.cat([chosen_len, rejected_len]).long()
    logps = torch.cat([chosen, rejected]).double()
    n, width = len(lengths), int(lengths.max()) + 2
    # Completion tokens sit at positions 1..len (position 0 is the prompt); the shifted mask drops position 0.
    completion_mask = torch.zeros(n, width, dtype=torch.long)
    for i, k in enumerate(lengths.tolist()):
        completion_mask[i, 1:1 + k] = 1
    shifted = completion_mask[:, 1:].double()
    per_token = shifted * (logps / lengths.clamp(min=1)).unsqueeze(1)  # spread each sum over its tokens
    trainer = _bare_trainer(loss_type, beta, label_smoothing)
    trainer.model = _StubModel(per_token)
    inputs = {"input_ids": torch.zeros(n, width, dtype=torch.long), "attention_mask": torch.ones(n, width),
              "completion_mask": completion_mask,
              "ref_chosen_logps": ref_chosen.double(), "ref_rejected_logps": ref_rejected.double()}
    return float(trainer._compute_loss(trainer.model, inputs, return_outputs=False))


def _random_logps(seed: int, n: int = 6):
    g = torch.Generator().manual_seed(seed)
    sums = [-(torch.rand(n, generator=g, dtype=torch.float64) * 40 + 1) for _ in range(4)]
    lengths = [torch.randint(1, 30, (n,), generator=g).double() for _ in range(2)]
    return (*sums, *lengths)


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("seed", [0, 1])
def test_sigmoid_matches_trl(beta, seed):
    c, r, rc, rr, lc, lr = _random_logps(seed)
    ours, _, _ = dpo_loss(c, r, rc, rr, beta=beta, loss_type="sigmoid")
    assert ours.shape == (6,)
    assert float(ours.mean()) == pytest.approx(trl_loss("sigmoid", beta, c, r, rc, rr, lc, lr), abs=1e-5)
    for i in range(len(c)):  # per example too, not only the mean
        one = trl_loss("sigmoid", beta, c[i:i + 1], r[i:i + 1], rc[i:i + 1], rr[i:i + 1], lc[i:i + 1], lr[i:i + 1])
        assert float(ours[i]) == pytest.approx(one, abs=1e-5)


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_label_smoothing_is_cdpo(beta, eps):
    """cDPO: -(1-e) log s(b h) - e log s(-b h). TRL 1.16's "sigmoid" ignores label_smoothing (it documents it
    for robust/EXO only); its "aot" loss on a single pair reduces to exactly the cDPO formula (sorting a batch
    of one is the identity), so that is the like-for-like TRL reference here."""
    c, r, rc, rr, lc, lr = _random_logps(7)
    ours, _, _ = dpo_loss(c, r, rc, rr, beta=beta, loss_type="sigmoid", label_smoothing=eps)
    for i in range(len(c)):
        s = slice(i, i + 1)
        ref = trl_loss("aot", beta, c[s], r[s], rc[s], rr[s], lc[s], lr[s], label_smoothing=eps)
        assert float(ours[i]) == pytest.approx(ref, abs=1e-5)
        h = float((c[i] - rc[i]) - (r[i] - rr[i]))
        by_hand = -(1 - eps) * math.log(1 / (1 + math.exp(-beta * h))) - eps * math.log(1 / (1 + math.exp(beta * h)))
        assert float(ours[i]) == pytest.approx(by_hand, abs=1e-6)
    plain, _, _ = dpo_loss(c, r, rc, rr, beta=beta, loss_type="sigmoid")
    assert not torch.allclose(ours, plain)  # smoothing changes the value


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("seed", [0, 3])
def test_ipo_matches_trl(beta, seed):
    """TRL normalises IPO by completion length inside; ours expects length-normalised log-probs."""
    c, r, rc, rr, lc, lr = _random_logps(seed)
    ours, _, _ = dpo_loss(c / lc, r / lr, rc / lc, rr / lr, beta=beta, loss_type="ipo")
    assert float(ours.mean()) == pytest.approx(trl_loss("ipo", beta, c, r, rc, rr, lc, lr), abs=1e-5)
    # Unnormalised sums give a different loss when lengths differ: the normalisation matters.
    raw, _, _ = dpo_loss(c, r, rc, rr, beta=beta, loss_type="ipo")
    assert abs(float(raw.mean()) - float(ours.mean())) > 1e-3


def test_ipo_by_hand():
    # h = (-2 - -3) - (-5 - -4) = 1 - (-1) = 2; beta = 0.25 -> 1/(2 beta) = 2 -> (2 - 2)^2 = 0
    # beta = 0.5 -> 1/(2 beta) = 1 -> (2 - 1)^2 = 1
    t = lambda x: torch.tensor([x], dtype=torch.float64)  # noqa: E731
    assert float(dpo_loss(t(-2.), t(-5.), t(-3.), t(-4.), beta=0.25, loss_type="ipo")[0]) == pytest.approx(0.0)
    assert float(dpo_loss(t(-2.), t(-5.), t(-3.), t(-4.), beta=0.5, loss_type="ipo")[0]) == pytest.approx(1.0)


def test_rewards_and_unknown_loss_type():
    # chosen log-ratio -2 - -3 = 1, rejected -5 - -4 = -1; rewards are beta times those
    t = lambda x: torch.tensor([x], dtype=torch.float64)  # noqa: E731
    losses, r_c, r_r = dpo_loss(t(-2.), t(-5.), t(-3.), t(-4.), beta=0.5)
    assert float(r_c) == pytest.approx(0.5) and float(r_r) == pytest.approx(-0.5)
    assert float(losses) == pytest.approx(-math.log(1 / (1 + math.exp(-1.0))))  # -log s(0.5 * 2)
    with pytest.raises(ValueError, match="loss_type"):
        dpo_loss(t(0.), t(0.), t(0.), t(0.), loss_type="hinge")


def test_nll_loss_by_hand():
    # -(-6)/3 = 2, -(-3)/1 = 3, an empty answer (length 0) counts as length 1: -(-0.5)/1 = 0.5
    out = nll_loss(torch.tensor([-6.0, -3.0, -0.5]), torch.tensor([3, 1, 0]))
    assert out.tolist() == pytest.approx([2.0, 3.0, 0.5])


def test_anchor_loss_by_hand():
    # -log sigmoid(0.5 * 2) = 0.3133, -log sigmoid(0) = log 2, and a falling chosen reward costs more
    out = anchor_loss(torch.tensor([2.0, 0.0, -2.0]), beta=0.5)
    assert out.tolist() == pytest.approx([0.31326, math.log(2), 1.31326], abs=1e-5)


def test_anchor_raises_chosen_even_when_dpo_is_satisfied():
    """With the rejected answer far below, DPO's gradient on the chosen answer vanishes; the anchor's does not."""
    c = torch.tensor([-12.0], requires_grad=True)
    r, rc, rr = torch.tensor([-80.0]), torch.tensor([-10.0]), torch.tensor([-10.0])
    dpo_loss(c, r, rc, rr, beta=0.5)[0].sum().backward()
    dpo_grad = float(c.grad)
    c.grad = None
    anchor_loss(c - rc, beta=0.5).sum().backward()
    assert abs(dpo_grad) < 1e-6 < -float(c.grad)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
@pytest.mark.parametrize(("nll_weight", "anchor_weight"), [(0.0, 0.0), (0.5, 0.0), (0.0, 1.5)])
def test_make_loss_matches_trl(monkeypatch, loss_type, nll_weight, anchor_weight):
    """The training loss: sums and token counts from the model, reference [sum_c, sum_r, len_c, len_r]."""
    c, r, rc, rr, lc, lr = _random_logps(11, n=4)
    import vlalign.train.dpo as dpo

    monkeypatch.setattr(dpo, "sequence_logps", lambda model, batch: (torch.cat([c, r]), torch.cat([lc, lr])))
    config = DPOConfig(beta=0.2, loss_type=loss_type, nll_weight=nll_weight, anchor_weight=anchor_weight)
    loss, metrics = make_loss(config)(None, {"ref": torch.stack([rc, rr, lc, lr], dim=1)})
    ratio = (c - rc) if loss_type == "sigmoid" else (c / lc - rc / lc)  # the anchor uses the loss's scale
    expected = (trl_loss(loss_type, 0.2, c, r, rc, rr, lc, lr) + nll_weight * float((-c / lc).mean())
                + anchor_weight * float(-F.logsigmoid(0.2 * ratio).mean()))
    assert float(loss) == pytest.approx(expected, abs=1e-5)
    # Metrics: rewards on the scale the loss uses (sums for sigmoid, per-token means for IPO).
    sums, means = 0.2 * ((c - rc) - (r - rr)), 0.2 * ((c - rc) / lc - (r - rr) / lr)
    margin = sums if loss_type == "sigmoid" else means
    assert metrics["reward_margin"] == pytest.approx(float(margin.mean()), abs=1e-6)
    assert metrics["reward_accuracy"] == pytest.approx(float((margin > 0).double().mean()))
    assert metrics["chosen_logp"] == pytest.approx(float(c.mean()))


def test_sigmoid_gradient_direction():
    """Minimising the loss raises the chosen log-prob and lowers the rejected one."""
    c = torch.tensor([-10.0], requires_grad=True)
    r = torch.tensor([-10.0], requires_grad=True)
    losses, _, _ = dpo_loss(c, r, torch.tensor([-10.0]), torch.tensor([-10.0]), beta=0.1)
    losses.sum().backward()
    # d/dc -log s(b(c - r)) = -b s(-b h) = -0.1 * 0.5 at h = 0
    assert float(c.grad) == pytest.approx(-0.05) and float(r.grad) == pytest.approx(0.05)
    assert float(losses.detach()) == pytest.approx(-F.logsigmoid(torch.tensor(0.0)).item())
