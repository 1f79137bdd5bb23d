"""Training settings as data: the optimizer, and a preference objective as weighted loss terms.

The term names are listed here, without torch, so a config is checked before any model loads;
`vlalign.train.losses.TERMS` implements them (a test keeps the two lists equal).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from importlib.util import find_spec

from vlalign.models.settings import LoraSettings

# term -> what it is (the `loss:` keys of a training config)
TERM_HELP = {
    "sigmoid": "DPO (Rafailov et al. 2023): -log sigmoid(beta * margin)",
    "cdpo": "conservative DPO: sigmoid with label_smoothing of the preferences",
    "robust": "robust DPO (Chowdhury et al. 2024), unbiased under label_smoothing noise",
    "hinge": "SLiC's hinge: relu(1 - beta * margin)",
    "ipo": "IPO (Azar et al. 2023) on length-normalised log-probs",
    "bco_pair": "BCO on pairs: chosen reward up, rejected reward down, each on its own",
    "sft": "NLL of the chosen answer, averaged over all its tokens in the batch (TRL's sft term)",
    "nll": "NLL of the chosen answer per token, averaged over examples (RPO)",
    "anchor": "mDPO's reward anchor: -log sigmoid(beta * chosen reward)",
    "conditional": "mDPO's conditional term: the chosen answer with the real image over a corrupted one",
    "router": "a mixture of experts' load-balancing loss (TRL's aux_loss); weighted by router_aux_loss_coef, "
              "not listed under loss",
}
TERMS = tuple(TERM_HELP)
# report_to -> the packages that can serve it (any one will do) and the extra that installs one
TRACKERS = {"none": ((), ""), "tensorboard": (("tensorboard", "tensorboardX"), "tensorboard"),
            "wandb": (("wandb",), "wandb")}


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with a cosine schedule and warmup."""

    steps: int | None = None  # optimizer steps; null: epochs x pairs / batch_size
    lr: float = 5e-7  # peak learning rate
    warmup_ratio: float = 0.1  # share of the steps spent warming up linearly
    weight_decay: float = 0.0  # AdamW weight decay
    max_grad_norm: float = 1.0  # clip the gradient norm (0: no clipping)
    grad_accum: int = 1  # batches per optimizer step
    log_every: int = 10  # steps per logged history entry

    def __post_init__(self) -> None:
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"optim.steps must be at least 1 (or null), got {self.steps}")
        if self.lr <= 0 or not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"need lr > 0 and 0 <= warmup_ratio < 1, got {self.lr}, {self.warmup_ratio}")
        if self.grad_accum < 1 or self.log_every < 1:
            raise ValueError(f"grad_accum and log_every must be at least 1, got {self.grad_accum}, {self.log_every}")


@dataclass(frozen=True)
class TrainConfig:
    """Preference training: the objective (weighted terms), batches and optimizer, LoRA, checkpoints."""

    # term: weight, the objective is their weighted sum; terms: sigmoid, cdpo, robust, hinge, ipo, bco_pair,
    # sft, nll, anchor, conditional (docs/configs.md says what each is)
    loss: dict[str, float] = field(default_factory=lambda: {"sigmoid": 1.0})
    beta: float = 0.1  # strength of the KL tie to the reference in every reward-based term
    label_smoothing: float = 0.0  # share of preferences assumed flipped (cdpo, robust)
    router_aux_loss_coef: float | None = None  # weight of a MoE's load-balancing term; null: the checkpoint's own (TRL's default), 0: off
    batch_size: int = 8  # pairs per batch
    epochs: float = 1.0  # passes over the pairs (unless optim.steps is set)
    optim: OptimConfig = field(default_factory=OptimConfig)  # the optimizer and its schedule
    lora: LoraSettings | None = None  # train a LoRA adapter instead of the full decoder (null: full)
    freeze_vision: bool = True  # keep the vision tower frozen (the projector trains)
    checkpoint_every: int = 0  # save a resumable checkpoint every N steps (0: never); a killed run resumes there
    seed: int = 0  # shuffling and initialisation
    report_to: str = "none"  # also log the training metrics to tensorboard or wandb (WANDB_MODE=offline works), or none

    def __post_init__(self) -> None:
        problems = []
        unknown = sorted(set(self.loss) - set(TERMS))
        if unknown:
            listed = ", ".join(t for t in TERMS if t != "router")
            problems.append(f"unknown loss term(s) {unknown}; choose from {listed}")
        if "router" in self.loss:
            problems.append("the router term takes its weight from router_aux_loss_coef (null: the checkpoint's own); "
                            "remove it from loss")
        if self.router_aux_loss_coef is not None and not (math.isfinite(self.router_aux_loss_coef)
                                                          and self.router_aux_loss_coef >= 0):
            problems.append(f"router_aux_loss_coef must be null or a number >= 0, got {self.router_aux_loss_coef}")
        if not self.loss:
            problems.append("loss needs at least one term, e.g. {sigmoid: 1.0}")
        bad = [k for k, w in self.loss.items() if not (isinstance(w, (int, float)) and math.isfinite(w) and w > 0)]
        if bad:
            problems.append(f"loss weights must be positive numbers; check {bad}")
        if self.beta <= 0:
            problems.append(f"beta must be positive, got {self.beta}")
        if not 0 <= self.label_smoothing < 0.5:
            problems.append(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.batch_size < 1 or self.epochs <= 0 or self.checkpoint_every < 0:
            problems.append(f"need batch_size >= 1, epochs > 0, checkpoint_every >= 0; got {self.batch_size}, "
                            f"{self.epochs}, {self.checkpoint_every}")
        problems += tracker_problems(self.report_to)
        if problems:
            raise ValueError("; ".join(problems))

    def steps_for(self, n_examples: int) -> int:
        """The optimizer steps of a run on `n_examples` pairs: `optim.steps` when set, else from epochs."""
        if self.optim.steps is not None:
            return self.optim.steps
        return max(1, round(self.epochs * n_examples / (self.batch_size * self.optim.grad_accum)))


def tracker_problems(report_to: str) -> list[str]:
    """What stops `report_to` from logging, found when the config loads rather than when training starts."""
    if report_to not in TRACKERS:
        return [f"unknown report_to {report_to!r}; choose from {', '.join(TRACKERS)}"]
    packages, extra = TRACKERS[report_to]
    if packages and not any(find_spec(p) for p in packages):
        return [f"report_to: {report_to} needs the {packages[0]} package: pip install 'vlalign[{extra}]'"]
    return []


@dataclass(frozen=True)
class NoiseConfig:
    """Stage 2's settings: the weight of the injected term and the diffusion noise."""

    gamma: float = 0.5  # weight of the injected-hallucination term; 1 - gamma weighs the noisy-image term
    step: int = 500  # forward-diffusion step k of the noise (the paper's 500 of 1000)
    T: int = 1000  # steps of the diffusion schedule
    seed: int = 0  # seed of the noise (fresh noise every batch, the same on a rerun)

    def __post_init__(self) -> None:
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma}")
        if not 0 <= self.step < self.T:
            raise ValueError(f"noise step must be in [0, T={self.T}), got {self.step}")
