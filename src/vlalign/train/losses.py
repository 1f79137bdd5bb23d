"""The preference losses, each a short function of sequence log-probs.

DPO (Rafailov et al. 2023) with the sigmoid loss and optional label smoothing (cDPO), IPO (Azar et al.
2023), mDPO's reward anchor (Wang et al. 2024), and POVID's two-term loss (Zhou et al. 2024). Values match TRL's DPO loss on the same log-probs (tests check it).
With label smoothing the sigmoid loss is cDPO, as in earlier TRL releases; TRL 1.16's "sigmoid"
ignores `label_smoothing` (its cDPO formula survives only in "aot", which equals it on a single pair).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSS_TYPES = ("sigmoid", "ipo")


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, beta: float = 0.1,
             loss_type: str = "sigmoid", label_smoothing: float = 0.0
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-example losses and the implicit rewards beta * (log pi - log pi_ref) of chosen and rejected.

    For IPO the log-probs should be length-normalised (mean per token), as in the IPO paper and TRL.
    """
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    logits = chosen_logratios - rejected_logratios
    if loss_type == "sigmoid":
        losses = (-F.logsigmoid(beta * logits) * (1 - label_smoothing)
                  - F.logsigmoid(-beta * logits) * label_smoothing)
    elif loss_type == "ipo":
        losses = (logits - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; choose one of {LOSS_TYPES}")
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def nll_loss(chosen_logps_sum: torch.Tensor, chosen_lengths: torch.Tensor) -> torch.Tensor:
    """Per-example mean negative log-likelihood of the chosen answer (the RPO / "+SFT" term)."""
    return -chosen_logps_sum / chosen_lengths.clamp(min=1)


def anchor_loss(chosen_logratios: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-example reward anchor of mDPO (Wang et al. 2024, delta 0): -log sigmoid(beta * (log pi - log pi_ref))
    of the chosen answer. DPO only asks chosen to beat rejected, so both can fall together; the anchor asks
    the chosen answer's own reward to stay positive, which keeps the policy from dropping what the chosen
    answers say along with what the rejected ones say."""
    return -F.logsigmoid(beta * chosen_logratios)


def povid_loss(chosen_logps: torch.Tensor, injected_logps: torch.Tensor, noisy_logps: torch.Tensor,
               ref_chosen_logps: torch.Tensor, ref_injected_logps: torch.Tensor, ref_noisy_logps: torch.Tensor,
               beta: float = 0.1, gamma: float = 0.5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """POVID's stage-2 loss per example: gamma * DPO(gt vs injected) + (1 - gamma) * DPO(gt vs noisy), where
    the noisy answer is the policy's own output on a diffusion-noised image. Returns the losses and the
    two terms' losses (for logging)."""
    injected, _, _ = dpo_loss(chosen_logps, injected_logps, ref_chosen_logps, ref_injected_logps, beta)
    noisy, _, _ = dpo_loss(chosen_logps, noisy_logps, ref_chosen_logps, ref_noisy_logps, beta)
    return gamma * injected + (1 - gamma) * noisy, injected.detach(), noisy.detach()
