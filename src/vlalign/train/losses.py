"""The preference loss terms, each a short pure function of summed answer log-probs.

A training objective is a weighted sum of terms (`TrainConfig.loss`, e.g. MPO's `{sigmoid: 0.8,
bco_pair: 0.2, sft: 1.0}`). Every term reads the log-probs it needs from `Logps`, by column: `chosen` and
`rejected` are the two answers under the real image; `chosen_corrupt` is the chosen answer under a
corrupted image (mDPO's conditional term). The values match TRL's DPOTrainer loss types of the same
names on the same log-probs (tests check it); `nll`, `anchor` and `conditional` have no TRL counterpart.
`router` is a mixture of experts' load-balancing loss (TRL's `aux_loss`), weighted by `router_aux_loss_coef`
rather than listed under `loss` (`with_router`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Logps:
    """Per column: the policy's and the reference's summed answer log-probs, and the answer lengths."""

    policy: dict[str, torch.Tensor]
    ref: dict[str, torch.Tensor]
    counts: dict[str, torch.Tensor]
    beta: float
    label_smoothing: float = 0.0
    tokens: torch.Tensor | None = None  # chosen tokens the sft term divides by (default: this batch's)
    router: torch.Tensor | None = None  # the policy's MoE load-balancing loss on this batch (one value)

    def ratio(self, column: str) -> torch.Tensor:
        """log pi(y|x) - log pi_ref(y|x) of one column."""
        return self.policy[column] - self.ref[column]

    def margin(self) -> torch.Tensor:
        """The DPO margin: chosen's log-ratio minus rejected's."""
        return self.ratio("chosen") - self.ratio("rejected")


def sigmoid(x: Logps) -> torch.Tensor:
    return -F.logsigmoid(x.beta * x.margin())


def cdpo(x: Logps) -> torch.Tensor:
    z = x.beta * x.margin()
    return -F.logsigmoid(z) * (1 - x.label_smoothing) - F.logsigmoid(-z) * x.label_smoothing


def robust(x: Logps) -> torch.Tensor:
    z, eps = x.beta * x.margin(), x.label_smoothing
    return (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)


def hinge(x: Logps) -> torch.Tensor:
    return torch.relu(1 - x.beta * x.margin())


def ipo(x: Logps) -> torch.Tensor:
    chosen = x.ratio("chosen") / x.counts["chosen"].clamp(min=1)
    rejected = x.ratio("rejected") / x.counts["rejected"].clamp(min=1)
    return (chosen - rejected - 1 / (2 * x.beta)) ** 2


def bco_pair(x: Logps) -> torch.Tensor:
    return -F.logsigmoid(x.beta * x.ratio("chosen")) - F.logsigmoid(-x.beta * x.ratio("rejected"))


def sft(x: Logps) -> torch.Tensor:
    """One value for the batch (every chosen token weighs the same), repeated per example. Under a launcher
    `tokens` is the global batch's count per process, so the averaged gradients weigh every token once."""
    chosen = x.policy["chosen"]
    tokens = x.counts["chosen"].sum() if x.tokens is None else x.tokens
    return (-chosen.sum() / tokens.clamp(min=1)).expand(len(chosen))


def nll(x: Logps) -> torch.Tensor:
    return -x.policy["chosen"] / x.counts["chosen"].clamp(min=1)


def anchor(x: Logps) -> torch.Tensor:
    """DPO only asks chosen to beat rejected, so both can fall together; the anchor asks the chosen answer's
    own reward to stay positive, which keeps the policy from dropping what the chosen answers say."""
    return -F.logsigmoid(x.beta * x.ratio("chosen"))


def conditional(x: Logps) -> torch.Tensor:
    """The chosen answer is preferred with the real image over the same answer with a corrupted one, so the
    policy cannot satisfy the objective from the text alone (mDPO, Wang et al. 2024)."""
    return -F.logsigmoid(x.beta * (x.ratio("chosen") - x.ratio("chosen_corrupt")))


def router(x: Logps) -> torch.Tensor:
    """The MoE routers' load-balancing loss on the batch (one value, repeated per example): it reads no answer
    log-prob and no reference, so the cached reference holds without it."""
    if x.router is None:
        raise ValueError("the router term needs the policy's router loss; score the batch with "
                         "continuation_logps_and_router")
    return x.router.expand(len(x.policy["chosen"]))


Term = Callable[[Logps], torch.Tensor]
TERMS: dict[str, Term] = {"sigmoid": sigmoid, "cdpo": cdpo, "robust": robust, "hinge": hinge, "ipo": ipo,
                          "bco_pair": bco_pair, "sft": sft, "nll": nll, "anchor": anchor, "conditional": conditional,
                          "router": router}
# the answer columns each term reads, and whether it needs the reference's log-probs of them
COLUMNS: dict[str, tuple[str, ...]] = {name: ("chosen", "rejected") for name in TERMS} | {
    "sft": ("chosen",), "nll": ("chosen",), "anchor": ("chosen",), "conditional": ("chosen", "chosen_corrupt"),
    "router": ()}
NO_REFERENCE = frozenset({"sft", "nll", "router"})
ROUTER = "router"


def with_router(terms: dict[str, float], weight: float) -> dict[str, float]:
    """`terms` and, with a positive `weight` (`vlalign.models.moe.router_coefficient`), the router term."""
    return {**terms, ROUTER: weight} if weight > 0 else dict(terms)


def columns_of(terms: dict[str, float]) -> tuple[str, ...]:
    """The answer columns a weighted objective needs, in a fixed order (chosen, rejected, then the rest)."""
    needed = {c for t in terms for c in COLUMNS[t]} | {"chosen", "rejected"}
    return tuple(sorted(needed, key=lambda c: (c != "chosen", c != "rejected", c)))


def objective(terms: dict[str, float], x: Logps) -> tuple[torch.Tensor, dict[str, float]]:
    """The weighted sum of the terms' batch means, and each term's mean for the logs."""
    total: torch.Tensor | None = None
    parts: dict[str, float] = {}
    for name, weight in terms.items():
        value = TERMS[name](x).mean()
        parts[f"loss_{name}"] = float(value.detach())
        total = weight * value if total is None else total + weight * value
    assert total is not None
    return total, parts


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, beta: float = 0.1
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-example sigmoid DPO losses and the implicit rewards beta * (log pi - log pi_ref) of both answers."""
    x = Logps({"chosen": policy_chosen_logps, "rejected": policy_rejected_logps},
              {"chosen": ref_chosen_logps, "rejected": ref_rejected_logps}, {}, beta)
    return sigmoid(x), beta * x.ratio("chosen").detach(), beta * x.ratio("rejected").detach()


def povid_loss(chosen_logps: torch.Tensor, injected_logps: torch.Tensor, noisy_logps: torch.Tensor,
               ref_chosen_logps: torch.Tensor, ref_injected_logps: torch.Tensor, ref_noisy_logps: torch.Tensor,
               beta: float = 0.1, gamma: float = 0.5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """POVID's stage-2 loss per example: gamma * DPO(gt vs injected) + (1 - gamma) * DPO(gt vs noisy), where
    the noisy answer is the policy's own output on a diffusion-noised image. Returns the losses and the
    two terms' losses (for logging)."""
    injected, _, _ = dpo_loss(chosen_logps, injected_logps, ref_chosen_logps, ref_injected_logps, beta)
    noisy, _, _ = dpo_loss(chosen_logps, noisy_logps, ref_chosen_logps, ref_noisy_logps, beta)
    return gamma * injected + (1 - gamma) * noisy, injected.detach(), noisy.detach()
