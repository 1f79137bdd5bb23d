"""The one training loop: an optimizer, a schedule and `accelerate`, around a loss function.

SFT and every preference loss share it; what differs between methods is the loss function and the
batches, never a flag in here. `accelerate launch` runs it on several GPUs unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from transformers import get_cosine_schedule_with_warmup

from vlalign.models.batching import to_device
from vlalign.progress import progress

LossFn = Callable[[torch.nn.Module, dict], tuple[torch.Tensor, dict[str, float]]]


@dataclass
class OptimConfig:
    steps: int = 100
    lr: float = 1e-4
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    grad_accum: int = 1
    log_every: int = 10


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters; check freeze settings or the LoRA config")
    return params


def train(model: torch.nn.Module, batches: Iterable[dict], loss_fn: LossFn, config: OptimConfig,
          accelerator: Accelerator | None = None, description: str = "training") -> list[dict[str, float]]:
    """Run `config.steps` optimizer steps over `batches` (cycled if shorter); return the logged metrics."""
    accelerator = accelerator or Accelerator(gradient_accumulation_steps=config.grad_accum)
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=config.lr,
                                  weight_decay=config.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(
        optimizer, math.ceil(config.warmup_ratio * config.steps), config.steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    if isinstance(batches, DataLoader):
        batches = accelerator.prepare(batches)
    dtype = next(model.parameters()).dtype
    model.train()
    history: list[dict[str, float]] = []
    running: dict[str, float] = {}
    stream = _cycle(batches)
    with progress(description, total=config.steps, disable=not accelerator.is_main_process) as bar:
        for step in range(1, config.steps + 1):
            for _ in range(config.grad_accum):
                batch = to_device(next(stream), accelerator.device, dtype)
                with accelerator.accumulate(model):
                    loss, metrics = loss_fn(model, batch)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and config.max_grad_norm:
                        accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
                for k, v in {"loss": float(loss.detach()), **metrics}.items():
                    running[k] = running.get(k, 0.0) + v / (config.grad_accum * config.log_every)
            bar.advance(1)
            if step % config.log_every == 0 or step == config.steps:
                scale = config.log_every / (step % config.log_every or config.log_every)
                entry = {"step": step, "lr": scheduler.get_last_lr()[0],
                         **{k: v * scale for k, v in running.items()}}
                history.append(entry)
                bar.update(description=f"{description} loss {entry['loss']:.4f}")
                running = {}
    model.eval()
    return history


def _cycle(batches: Iterable[dict]):
    while True:
        empty = True
        for b in batches:
            empty = False
            yield b
        if empty:
            raise ValueError("no training batches: the dataset is empty")
