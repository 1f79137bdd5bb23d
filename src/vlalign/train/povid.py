"""POVID training (arXiv 2402.11411): ground truth preferred over two kinds of dispreferred answers.

Stage 1 is plain DPO on (ground truth, injected hallucination). Stage 2 adds the policy's own
dispreferred answer, made online: the image is noised by the DDPM forward process (fresh noise every
batch), the policy reads the ground-truth answer teacher-forced on that noisy image, and its argmax token
at every answer position is the "noisy answer". That answer is scored under the *clean* image (with
gradient for the policy), and the reference does the same with its own argmax. The loss is
gamma * DPO(gt, injected) + (1 - gamma) * DPO(gt, noisy), as in the reference code.

The reference is the adapter-disabled policy with LoRA, or a frozen copy of the starting policy.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from vlalign.data.corrupt import add_diffusion_noise
from vlalign.models.batching import IGNORE, encode, model_inputs, to_device
from vlalign.models.lora import reference_context
from vlalign.models.scoring import selective_log_softmax
from vlalign.train.losses import povid_loss
from vlalign.train.preference import Columns, PreferenceExample, fit_preferences, pair_collate, prepare_policy
from vlalign.train.settings import NoiseConfig, TrainConfig


def povid_collate(processor, noise: NoiseConfig):
    """Pair rows plus the ground truth under the clean image and under a freshly noised one (the noise of
    batch `number` is the same whenever that batch is drawn, so a resumed run draws it again)."""
    pairs = pair_collate(processor, Columns())

    def collate(items: list, number: int) -> dict:
        examples = [e for e, _ in items]
        generator = torch.Generator().manual_seed(noise.seed * 1_000_003 + number)
        instructions, chosen = [e.instruction for e in examples], [e.chosen for e in examples]
        noisy_images = [add_diffusion_noise(e.image, noise.step, noise.T, generator) for e in examples]
        return {**pairs(items, number),
                "clean": encode(processor, [e.image for e in examples], instructions, chosen),
                "noisy": encode(processor, noisy_images, instructions, chosen)}

    return collate


def _response_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of log-probs of the labelled tokens per row (logits and labels already shifted)."""
    mask = labels != IGNORE
    return (selective_log_softmax(logits, labels.clamp(min=0)) * mask).sum(-1)


def own_noisy_logps(clean_logits: torch.Tensor, noisy_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per row: sum over answer positions of log p_clean(argmax of the noisy-image logits). Only the answer
    positions are normalised, so a long image prefix and a large vocabulary cost nothing extra."""
    length = min(clean_logits.shape[1], noisy_logits.shape[1], labels.shape[1])
    mask = labels[:, :length] != IGNORE
    rows, cols = mask.nonzero(as_tuple=True)
    picked = noisy_logits[rows, cols].argmax(-1)
    logps = clean_logits[rows, cols].float().log_softmax(-1).gather(-1, picked[:, None]).squeeze(-1)
    return torch.zeros(len(labels), dtype=logps.dtype, device=logps.device).index_add(0, rows, logps)


def _forward(model, batch: dict) -> torch.Tensor:
    return model(**model_inputs(batch)).logits[:, :-1]


def make_povid_loss(config: TrainConfig, noise: NoiseConfig, reference):
    """Stage 2's loss for the shared loop; `reference` is the frozen copy, or the policy itself (LoRA),
    whose adapters are switched off for the reference passes."""

    def loss_fn(model, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        ref, clean, noisy = batch.pop("ref"), batch.pop("clean"), batch.pop("noisy")
        device, dtype = batch["input_ids"].device, next(model.parameters()).dtype
        clean, noisy = to_device(clean, device, dtype), to_device(noisy, device, dtype)
        n = len(ref["chosen"])
        logits = _forward(model, batch)
        sums = _response_logps(logits, batch["labels"][:, 1:])
        clean_labels = clean["labels"][:, 1:]
        with torch.no_grad():
            policy_noisy = _forward(model, noisy)
        own = own_noisy_logps(logits[:n], policy_noisy, clean_labels)
        with torch.no_grad(), reference_context(reference) as r:
            ref_own = own_noisy_logps(_forward(r, clean), _forward(r, noisy), clean_labels)
        losses, injected_term, noisy_term = povid_loss(sums[:n], sums[n:], own, ref["chosen"], ref["rejected"],
                                                       ref_own, config.beta, noise.gamma)
        return losses.mean(), {"injected_loss": float(injected_term.mean()), "noisy_loss": float(noisy_term.mean()),
                               "chosen_logp": float(sums[:n].detach().mean())}

    return loss_fn


def train_povid_stage2(model, processor, examples: Sequence[PreferenceExample], config: TrainConfig,
                       noise: NoiseConfig, out: Path | None = None, gradient_checkpointing: bool = False,
                       description: str = "POVID stage 2"):
    """Stage 2 from `model` (typically the stage-1 policy, which is then also the reference). Its loss is
    POVID's own; `config.loss` does not apply."""
    if config.lora is None:
        reference = copy.deepcopy(model).eval().requires_grad_(False)
    else:  # adapters go on now, so the reference is this very model with its adapters switched off
        model = prepare_policy(model, config, gradient_checkpointing)
        reference, config = model, replace(config, lora=None)
        gradient_checkpointing = False
    return fit_preferences(model, processor, examples, config, out=out, reference=reference,
                           loss_fn=make_povid_loss(config, noise, reference), collate=povid_collate(processor, noise),
                           description=description, gradient_checkpointing=gradient_checkpointing)
