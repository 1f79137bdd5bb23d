"""Training settings as data: the optimizer, and a preference objective as weighted loss terms.

The term names are listed here, without torch, so a config is checked before any model loads;
`vlalign.train.losses.TERMS` implements them (a test keeps the two lists equal).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from importlib.util import find_spec
from typing import Any, ClassVar

from vlalign.config import Alias
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
SCHEDULES = ("cosine", "constant")
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
    row_tokens: int | None = None  # the most tokens one forward reads: a batch whose packed row is longer trains as several rows (a forward and backward each, gradients added before the step), which bounds activation memory by the row; null: one row per batch
    log_every: int = 10  # steps per logged history entry
    schedule: str = "cosine"  # the learning rate after warmup: cosine (decays to 0 at the last step) or constant

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"optim.schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"optim.steps must be at least 1 (or null), got {self.steps}")
        if self.lr <= 0 or not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"need lr > 0 and 0 <= warmup_ratio < 1, got {self.lr}, {self.warmup_ratio}")
        if self.grad_accum < 1 or self.log_every < 1:
            raise ValueError(f"grad_accum and log_every must be at least 1, got {self.grad_accum}, {self.log_every}")
        if self.row_tokens is not None and self.row_tokens < 1:
            raise ValueError(f"optim.row_tokens must be at least 1 (or null), got {self.row_tokens}")


def _terms(value: Any, current: Any) -> dict[str, float]:
    """TRL's `loss_type` (a name or a list) as loss terms of weight 1 each."""
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ValueError(f"expected a loss name or a list of them, got {value!r}")
    return dict.fromkeys(names, 1.0)


def _weights(value: Any, current: Any) -> dict[str, float]:
    """TRL's `loss_weights`: the weights of the loss terms, in the order `loss_type` lists them."""
    terms = list(current or {})
    if not isinstance(value, list) or len(value) != len(terms):
        raise ValueError(f"expected {len(terms)} weight(s), one per term of {terms}, got {value!r}")
    return dict(zip(terms, value, strict=True))


def _with_term(term: str):
    """An alias whose value is the weight of one loss term added to the others (0 or null: the term is off)."""
    def convert(value: Any, current: Any) -> dict[str, float]:
        rest = {k: v for k, v in (current or {}).items() if k != term}
        return rest if value in (None, 0, 0.0) else {**rest, term: value}
    return convert


def _steps(value: Any, current: Any) -> Any:
    return None if value == -1 else value  # TRL's max_steps -1: from the epochs


def _targets(value: Any, current: Any) -> Any:
    """LLaMA-Factory's `lora_target`: "all" (the decoder's projections) or "q_proj,v_proj"."""
    if value == "all":
        return None
    return [t.strip() for t in value.split(",")] if isinstance(value, str) else value


def _peft(value: Any, current: Any) -> Any:
    if value is True:
        return current if current is not None else {}
    if value is False:
        return None
    raise ValueError(f"expected true or false, got {value!r}")


PER_PROCESS = "vlalign's batch_size counts pairs per optimizer step over all processes; TRL's counts per device"
TRAIN_ALIASES: dict[str, Alias] = {
    "learning_rate": Alias("optim.lr"),
    "num_train_epochs": Alias("epochs"),
    "per_device_train_batch_size": Alias("batch_size", note=PER_PROCESS),
    "gradient_accumulation_steps": Alias("optim.grad_accum"),
    "warmup_ratio": Alias("optim.warmup_ratio"),
    "weight_decay": Alias("optim.weight_decay"),
    "max_grad_norm": Alias("optim.max_grad_norm"),
    "max_steps": Alias("optim.steps", _steps, "-1 (TRL's default) means from the epochs, as null does here"),
    "logging_steps": Alias("optim.log_every"),
    "save_steps": Alias("checkpoint_every", note="a resumable mid-training checkpoint"),
    "eval_steps": Alias("eval_every"),
    "loss_type": Alias("loss", _terms, "each term weighs 1 (TRL's names: sigmoid, hinge, ipo, robust, bco_pair, sft)"),
    "loss_weights": Alias("loss", _weights, "the weights of loss_type's terms, in its order"),
    "rpo_alpha": Alias("loss", _with_term("nll"), "the weight of the nll term (RPO), added to the other terms"),
    "use_peft": Alias("lora", _peft, "true: LoRA with the lora settings; false: full training"),
    "lora_r": Alias("lora.r", note="sets LoRA on"),
    "lora_alpha": Alias("lora.alpha", note="sets LoRA on"),
    "lora_dropout": Alias("lora.dropout", note="sets LoRA on"),
    "lora_target_modules": Alias("lora.target_modules", _targets, "sets LoRA on; all or null: the decoder's projections"),
    "pref_beta": Alias("beta", tool="LLaMA-Factory"),
    "pref_loss": Alias("loss", _terms, "sigmoid, hinge or ipo (weight 1)", tool="LLaMA-Factory"),
    "pref_ftx": Alias("loss", _with_term("nll"), "the weight of the nll term on the chosen answer", tool="LLaMA-Factory"),
    "lora_rank": Alias("lora.r", note="sets LoRA on", tool="LLaMA-Factory"),
    "lora_target": Alias("lora.target_modules", _targets, "sets LoRA on; all: the decoder's projections",
                         tool="LLaMA-Factory"),
}


@dataclass(frozen=True)
class TrainConfig:
    """Preference training: the objective (weighted terms), batches and optimizer, LoRA, checkpoints."""

    ALIASES: ClassVar[dict[str, Alias]] = TRAIN_ALIASES

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
    checkpoint_minutes: float = 5.0  # also save one once this many minutes passed since the last (0: never); bounds what a kill loses
    seed: int = 0  # shuffling and initialisation
    report_to: str = "none"  # also log the training metrics to tensorboard or wandb (WANDB_MODE=offline works), or none
    reference: str | None = None  # the DPO reference: a model directory (or world:<name>); null: the policy as the training starts
    eval_fraction: float = 0.0  # share of the pairs held out (chosen by id) for an evaluation loss and reward accuracy in the history (0: none)
    eval_every: int = 0  # optimizer steps between evaluations of the held-out pairs (0: after the last step only)

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
        if not 0 <= self.eval_fraction < 1 or self.eval_every < 0:
            problems.append(f"need 0 <= eval_fraction < 1 and eval_every >= 0; got {self.eval_fraction}, "
                            f"{self.eval_every}")
        if self.batch_size < 1 or self.epochs <= 0 or self.checkpoint_every < 0 or not self.checkpoint_minutes >= 0:
            problems.append(f"need batch_size >= 1, epochs > 0, checkpoint_every >= 0, checkpoint_minutes >= 0; got "
                            f"{self.batch_size}, {self.epochs}, {self.checkpoint_every}, {self.checkpoint_minutes}")
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


BASELINES = ("mean", "leave_one_out")
SCALES = ("group", "batch", "none")
AGGREGATES = ("sequence", "token", "constant")
RATIOS = ("token", "sequence")


@dataclass(frozen=True)
class PolicyGradientConfig:
    """A group-relative policy gradient on n scored answers per prompt. GRPO is the default; Dr. GRPO is
    `scale: none, aggregate: constant`; RLOO is `baseline: leave_one_out, scale: none`; DAPO is `aggregate:
    token` with `clip_high` above `clip_low` and several optimizer steps per rollout."""

    baseline: str = "mean"  # what an answer's reward is compared with: mean (its group's, GRPO) or leave_one_out (the others', RLOO)
    scale: str = "group"  # advantages divided by the std of rewards of the group (GRPO), of the whole rollout (batch), or none (Dr. GRPO)
    aggregate: str = "sequence"  # per-token losses averaged per answer then over answers (sequence, GRPO), over every token of the batch (token, DAPO), or summed over a constant: answers x max_new_tokens (constant, Dr. GRPO)
    ratio: str = "token"  # the importance ratio per token, or one per answer from its mean log-ratio (sequence, GSPO)
    clip_low: float = 0.2  # the ratio is clipped below at 1 - clip_low (a batch reused over several steps)
    clip_high: float = 0.2  # ... and above at 1 + clip_high (DAPO raises it to 0.28)
    kl: float = 0.0  # weight of the k3 estimate of KL(policy || reference) per token (0: no reference is read)

    def __post_init__(self) -> None:
        for key, value, choices in (("baseline", self.baseline, BASELINES), ("scale", self.scale, SCALES),
                                    ("aggregate", self.aggregate, AGGREGATES), ("ratio", self.ratio, RATIOS)):
            if value not in choices:
                raise ValueError(f"{key} must be one of {', '.join(choices)}, got {value!r}")
        if not (0 <= self.clip_low < 1 and self.clip_high >= 0 and self.kl >= 0):
            raise ValueError(f"need 0 <= clip_low < 1, clip_high >= 0 and kl >= 0; got {self.clip_low}, "
                             f"{self.clip_high}, {self.kl}")
