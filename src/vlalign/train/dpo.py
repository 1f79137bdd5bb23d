"""DPO for VLMs: preference examples in, an aligned model out.

The reference log-probs are computed once, before the first step, and cached next to the checkpoint:
at step 0 the policy *is* the reference (a fresh LoRA adapter changes nothing), so no frozen copy has
to sit in memory during training. Pass `reference` to use another model instead.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from vlalign.models.batching import encode, to_device
from vlalign.models.scoring import sequence_logps
from vlalign.progress import progress
from vlalign.train.loop import OptimConfig, train
from vlalign.train.losses import anchor_loss, dpo_loss, nll_loss


@dataclass
class PreferenceExample:
    id: str
    image: Image.Image
    instruction: str
    chosen: str
    rejected: str


@dataclass
class LoraSettings:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0


@dataclass
class DPOConfig:
    beta: float = 0.1
    loss_type: str = "sigmoid"
    label_smoothing: float = 0.0
    nll_weight: float = 0.0  # weight of the NLL term on the chosen answer (RPO); 0 turns it off
    anchor_weight: float = 0.0  # weight of mDPO's reward anchor on the chosen answer; 0 turns it off
    batch_size: int = 8
    epochs: float = 1.0
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-5, warmup_ratio=0.1))
    lora: LoraSettings | None = None
    freeze_vision: bool = True
    seed: int = 0

    def steps_for(self, n_examples: int) -> int:
        return max(1, round(self.epochs * n_examples / self.batch_size))


class _Pairs(Dataset):
    def __init__(self, examples: Sequence[PreferenceExample], ref: dict[str, torch.Tensor]):
        self.examples, self.ref = examples, ref

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> tuple[PreferenceExample, torch.Tensor]:
        return self.examples[i], self.ref[self.examples[i].id]


def _pair_batch(processor, examples: Sequence[PreferenceExample]) -> dict[str, torch.Tensor]:
    """Chosen rows first, then rejected rows, in one padded batch."""
    images = [e.image for e in examples] * 2
    instructions = [e.instruction for e in examples] * 2
    responses = [e.chosen for e in examples] + [e.rejected for e in examples]
    return encode(processor, images, instructions, responses)


def model_fingerprint(model) -> str:
    """A cheap identity of a model's weights: shapes and sums of every parameter."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(f"{name}{tuple(p.shape)}{float(p.detach().double().sum()):.6e}".encode())
    return h.hexdigest()[:16]


def _example_digest(e: PreferenceExample) -> str:
    return hashlib.sha256("\x1f".join((e.instruction, e.chosen, e.rejected)).encode()).hexdigest()[:16]


@torch.no_grad()
def reference_logps(model, processor, examples: Sequence[PreferenceExample], cache: Path | None = None,
                    batch_size: int = 8) -> dict[str, torch.Tensor]:
    """Per example: [chosen_sum, rejected_sum, chosen_len, rejected_len] under `model`, cached in `cache`.

    The cache is used only when it was made by the same weights for the same texts; otherwise the
    values are recomputed, so a stale cache can never leak into a new run."""
    fingerprint = model_fingerprint(model)
    digests = {e.id: _example_digest(e) for e in examples}
    if cache is not None and cache.exists():
        saved = json.loads(cache.read_text())
        if saved.get("model") == fingerprint and all(
                saved.get("digests", {}).get(i) == d and i in saved.get("logps", {}) for i, d in digests.items()):
            return {e.id: torch.tensor(saved["logps"][e.id]) for e in examples}
    p = next(model.parameters())
    was_training = model.training
    model.eval()
    out: dict[str, list[float]] = {}
    with progress("reference log-probs", total=len(examples)) as bar:
        for s in range(0, len(examples), batch_size):
            chunk = examples[s:s + batch_size]
            total, count = sequence_logps(model, to_device(_pair_batch(processor, chunk), p.device, p.dtype))
            n = len(chunk)
            for i, e in enumerate(chunk):
                out[e.id] = [total[i].item(), total[n + i].item(), float(count[i]), float(count[n + i])]
            bar.advance(n)
    model.train(was_training)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps({"model": fingerprint, "digests": digests, "logps": out}))
        os.replace(tmp, cache)
    return {k: torch.tensor(v) for k, v in out.items()}


def make_loss(config: DPOConfig):
    """The DPO loss function for the shared training loop."""

    def loss_fn(model, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        ref = batch.pop("ref")
        total, count = sequence_logps(model, batch)
        n = len(ref)
        chosen, rejected = total[:n], total[n:]
        ref_chosen, ref_rejected = ref[:, 0], ref[:, 1]
        if config.loss_type == "ipo":  # IPO compares length-normalised log-probs
            chosen, rejected = chosen / count[:n], rejected / count[n:]
            ref_chosen, ref_rejected = ref_chosen / ref[:, 2], ref_rejected / ref[:, 3]
        losses, r_chosen, r_rejected = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, config.beta,
                                                config.loss_type, config.label_smoothing)
        loss = losses.mean()
        if config.nll_weight:
            loss = loss + config.nll_weight * nll_loss(total[:n], count[:n]).mean()
        if config.anchor_weight:
            loss = loss + config.anchor_weight * anchor_loss(chosen - ref_chosen, config.beta).mean()
        return loss, {
            "reward_margin": float((r_chosen - r_rejected).mean()),
            "reward_accuracy": float((r_chosen > r_rejected).float().mean()),
            "chosen_logp": float(total[:n].detach().mean()),
        }

    return loss_fn


def prepare_policy(model, config: DPOConfig):
    """Freeze the vision tower and wrap in LoRA as configured; returns the model to train."""
    from vlalign.models.lora import apply_lora, freeze_vision

    if config.freeze_vision:
        freeze_vision(model)
    if config.lora is not None:
        model = apply_lora(model, r=config.lora.r, alpha=config.lora.alpha, dropout=config.lora.dropout)
    return model


def pair_collate(processor, items) -> dict:
    """Chosen and rejected rows of a batch, with the cached reference log-probs under `ref`."""
    return {**_pair_batch(processor, [e for e, _ in items]), "ref": torch.stack([r for _, r in items])}


def fit_preferences(model, processor, examples: Sequence[PreferenceExample], config: DPOConfig, loss_fn,
                    collate, out: Path | None = None, reference=None, save_model: bool = True,
                    description: str = "DPO") -> tuple[torch.nn.Module, list[dict]]:
    """The part every preference method shares: prepare the policy, cache the reference log-probs of the
    pairs, loop over shuffled batches of `collate(processor, items)` with `loss_fn`, save."""
    if not examples:
        raise ValueError(f"{description} needs at least one preference pair; the pair stage produced none")
    torch.manual_seed(config.seed)
    model = prepare_policy(model, config)
    cache = Path(out) / "reference_logps.json" if out is not None else None
    ref = reference_logps(reference if reference is not None else model, processor, examples, cache)
    loader = DataLoader(_Pairs(examples, ref), batch_size=config.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(config.seed),
                        collate_fn=lambda items: collate(processor, items))
    optim = OptimConfig(**{**asdict(config.optim), "steps": config.steps_for(len(examples))})
    history = train(model, loader, loss_fn, optim, description=description)
    if out is not None:
        from vlalign.models.load import save

        Path(out).mkdir(parents=True, exist_ok=True)
        if save_model:
            save(model, processor, out)
        (Path(out) / "train_history.json").write_text(json.dumps(
            {"config": asdict(config), "n_pairs": len(examples), "history": history}, indent=1, default=str))
    return model, history


def train_dpo(model, processor, examples: Sequence[PreferenceExample], config: DPOConfig,
              out: Path | None = None, reference=None, save_model: bool = True) -> tuple[torch.nn.Module, list[dict]]:
    """Train `model` with DPO on `examples`. With `out`, the reference log-probs are cached there and the
    history (and, with `save_model`, the model + processor) is saved there."""
    return fit_preferences(model, processor, examples, config, make_loss(config), pair_collate, out, reference,
                           save_model)
