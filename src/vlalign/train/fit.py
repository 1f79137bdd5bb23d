"""Training on a fixed list of examples under an objective (`vlalign.train.objectives`): the policy prepared
(frozen vision, LoRA, gradient checkpointing), the reference's log-probs cached once, the one loop
(`vlalign.train.loop.train`) over shuffled global batches, mid-training checkpoints and the history. Every
objective trains here, without a branch on which it is.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from vlalign import ranks
from vlalign.config import to_dict
from vlalign.models.lora import apply_lora, freeze_vision, prepare_quantized
from vlalign.models.prefix import shares_prefix
from vlalign.models.types import Model, Processor
from vlalign.train.columns import Columns
from vlalign.train.examples import PreferenceExample, Shuffled
from vlalign.train.heldout import held_out_split
from vlalign.train.loop import Carried, Checkpoints, Collate, Tracking, train
from vlalign.train.objectives import Objective, Preference
from vlalign.train.preference import Reference, reference_logps
from vlalign.train.settings import TrainConfig


def prepare_policy(model, config: TrainConfig, gradient_checkpointing: bool = False):
    """Freeze the vision tower, wrap in LoRA as configured, and turn on gradient checkpointing."""
    if config.freeze_vision:
        freeze_vision(model)
    if config.lora is not None:
        model = apply_lora(prepare_quantized(model, gradient_checkpointing), config.lora)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if config.lora is not None:
            model.enable_input_require_grads()
    return model


def tracking_for(config: TrainConfig, out: Path | None) -> Tracking | None:
    """`config.report_to`'s trackers, writing under `out/trackers` (the run named after the folder above
    `out`, the round); they need that folder, so training without one is refused before it starts."""
    if config.report_to == "none":
        return None
    if out is None:
        raise ValueError(f"report_to: {config.report_to} needs an output folder for its files; pass out=")
    out = Path(out).resolve()
    return Tracking(config.report_to, out / "trackers", name=out.parent.name or "training", config=to_dict(config))


def _job(config: TrainConfig, examples: Sequence[PreferenceExample], columns: Columns, objective: Objective) -> str:
    """What a mid-training checkpoint belongs to: the objective, the settings and the pairs (so no other job
    resumes it); where the metrics are reported and how often checkpoints are written change nothing that is
    trained, so they are left out."""
    settings = {k: v for k, v in to_dict(config).items() if k not in ("report_to", "checkpoint_every",
                                                                       "checkpoint_minutes")}
    blob = json.dumps([objective.name, settings, [*columns.names, columns.key], [e.digest() for e in examples]])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def frozen_copy(model: Model) -> Model:
    """The starting policy, frozen: the reference a full-parameter objective reads at every step."""
    return copy.deepcopy(model).eval().requires_grad_(False)


def fit(model: Model, processor: Processor, examples: Sequence[PreferenceExample], config: TrainConfig,
        objective: Objective | None = None, *, out: Path | None = None, reference: Model | None = None,
        collate: Collate | None = None, description: str = "DPO",
        gradient_checkpointing: bool = False, carried: Carried | None = None) -> tuple[Model, list[dict]]:
    """Train `model` on `examples` under `objective` (default: the weighted terms of `config.loss`): prepare
    it (frozen vision, LoRA, gradient checkpointing), cache the reference log-probs, loop over shuffled
    batches. The reference is `reference` when given, else the starting policy: its log-probs cached (at step
    0 the policy *is* the reference) and, for an objective that reads it at every step, the policy with its
    adapters switched off (LoRA) or a frozen copy. With `out`, the reference cache, mid-training checkpoints
    and the history live there; with `carried`, the optimizer's state goes on from an earlier training's.
    Saving the model is the caller's."""
    if not examples:
        raise ValueError(f"{description} needs at least one preference pair or group; the stage before it made none")
    if config.batch_size % ranks.world_size():
        raise ValueError(f"batch_size {config.batch_size} (pairs per optimizer step, over all processes) must be a "
                         f"multiple of the {ranks.world_size()} processes, which each train on an equal share")
    if objective is None:
        objective = Preference()
    columns = objective.columns(config)
    tracking = tracking_for(config, out)
    torch.manual_seed(config.seed)
    model = prepare_policy(model, config, gradient_checkpointing)
    if reference is None and objective.live_reference:
        reference = model if config.lora is not None else frozen_copy(model)
    cache = Path(out) / "reference_logps.json" if out is not None else None
    ref = (reference_logps(reference if reference is not None else model, processor, examples, columns, cache)
           if objective.cached_reference(config) else Reference([], (), torch.zeros(len(examples), 0)))
    trained, row, evaluation = held_out_split(examples, ref, config)
    batches = Shuffled(trained, row, config.batch_size, config.seed)
    checkpoints = (Checkpoints(Path(out) / "checkpoints", _job(config, examples, columns, objective))
                   if out is not None and (config.checkpoint_every or config.checkpoint_minutes) else None)
    collate = collate or objective.collate(processor, columns, shares_prefix(model))
    history = train(model, batches, collate, objective.loss(config, columns, reference), config.optim,
                    config.steps_for(len(trained)), description=description, checkpoints=checkpoints,
                    checkpoint_every=config.checkpoint_every, tracking=tracking,
                    checkpoint_minutes=config.checkpoint_minutes, evaluation=evaluation, carried=carried)
    if out is not None and ranks.is_main():
        Path(out).mkdir(parents=True, exist_ok=True)
        text = json.dumps({"config": to_dict(config), "objective": objective.name, "n_pairs": len(examples),
                           "history": history}, indent=1)
        tmp = Path(out) / ".train_history.json.tmp"
        tmp.write_text(text)
        os.replace(tmp, Path(out) / "train_history.json")
    return model, history
