"""The one training loop: an optimizer, a schedule and `accelerate`, around a loss function.

SFT and every preference objective share it; what differs between methods is the loss function and the
batches, never a flag in here. Batches are drawn from a DataLoader of plain items and collated here, so a
resumed run skips the batches it has trained on without encoding them again. With `checkpoints`, the
trainable weights, the optimizer, the schedule and the log are saved every `checkpoint_every` steps and once
`checkpoint_minutes` have passed since the last save (a checkpoint is written to a temporary folder and
renamed, so it is whole or absent; its files' checksums are checked when it is read back), and a run that
finds one of the same job resumes from it. With `tracking`, every logged entry also goes to accelerate's
trackers (TensorBoard, Weights & Biases), written under the tracking folder.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from safetensors.torch import load_file, save_file
from torch.optim.lr_scheduler import LambdaLR

from vlalign import ranks
from vlalign.checksums import differences, read_sums, sums, sums_json
from vlalign.models.batching import to_device
from vlalign.progress import progress, warn
from vlalign.train.settings import OptimConfig

LossFn = Callable[[Any, dict], tuple[torch.Tensor, dict[str, float]]]  # (the model, or `Prepared`, a batch)
Collate = Callable[[list, int], dict]
STATE = "trainer_state.json"


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters; check freeze settings or the LoRA config")
    return params


def adamw(params: list[torch.nn.Parameter], config: OptimConfig) -> torch.optim.AdamW:
    """AdamW, fused into one kernel where every parameter's device and dtype allow it (as transformers'
    default `adamw_torch_fused`): on a CPU the unfused step loops over the tensors one by one."""
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    fusable = all(p.device.type in _get_fused_kernels_supported_devices() and p.is_floating_point()
                  and type(p.data) is torch.Tensor for p in params)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, fused=fusable or None)


class DamagedCheckpoint(ValueError):
    """A mid-training checkpoint whose files no longer read (they are written whole, so changed since)."""


@dataclass(frozen=True)
class Tracking:
    """Where the logged metrics also go: `report_to` (tensorboard, wandb) through accelerate's trackers, with
    their files under `folder`, the run named `name` and the training settings as its hyperparameters."""

    report_to: str
    folder: Path
    name: str = "training"
    config: dict[str, Any] = field(default_factory=dict)
    project: str = "vlalign"

    def accelerator_args(self) -> dict[str, Any]:
        return {"log_with": self.report_to, "project_dir": str(self.folder)}

    def start(self, accelerator: Accelerator) -> None:
        """Open the trackers (TensorBoard writes to folder/<project>; wandb to folder/wandb, as run `name`)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        accelerator.init_trackers(self.project, config=flat_scalars(self.config),
                                  init_kwargs={"wandb": {"name": self.name, "dir": str(self.folder)}})


def flat_scalars(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as the flat scalar hyperparameters trackers take (`optim.lr`; lists and None as text)."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        if isinstance(v, dict) and v:
            out.update(flat_scalars(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (bool, int, float, str)) else json.dumps(v)
    return out


def finish_tracking(accelerator: Accelerator) -> None:
    """Close the trackers (not `end_training`, which would also end the process group of a launched run)."""
    for tracker in accelerator.trackers:
        tracker.finish()


@dataclass(frozen=True)
class Carried:
    """The optimizer's moments carried from one training to the next (an online run trains once per rollout,
    and Adam restarted every rollout would take sign-sized steps): read from `before` at the start, unless
    a mid-training checkpoint resumes, and written to `after` at the end (whole or not at all)."""

    before: Path | None
    after: Path

    def load(self, optimizer) -> None:
        if self.before is None or not self.before.exists():
            return
        saved = torch.load(self.before, weights_only=True)["state"]
        current = optimizer.state_dict()
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if any(not 0 <= i < len(params) or s["exp_avg"].shape != params[i].shape for i, s in saved.items()):
            warn(f"the optimizer state in {self.before} belongs to other parameters; this training starts afresh")
            return
        optimizer.load_state_dict({**current, "state": saved})  # the moments; lr and betas stay the config's

    def save(self, optimizer) -> None:
        self.after.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.after.with_name(f".{self.after.name}.tmp")
        torch.save({"state": optimizer.state_dict()["state"]}, tmp)
        os.replace(tmp, self.after)


class Checkpoints:
    """Resumable training state in `folder/checkpoint-<step>`; `job` names the training it belongs to."""

    def __init__(self, folder: Path, job: str):
        self.folder, self.job = Path(folder), job

    def latest(self) -> Path | None:
        found = []
        for d in self.folder.glob("checkpoint-*"):
            try:
                state = json.loads((d / STATE).read_text())
            except (OSError, ValueError):
                continue
            if state.get("job") == self.job:
                found.append((state["step"], d))
        return max(found)[1] if found else None

    def save(self, step: int, model, optimizer, scheduler, history: list, running: dict) -> Path:
        final = self.folder / f"checkpoint-{step}"
        tmp = self.folder / f".checkpoint-{step}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        weights = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        save_file(weights, str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        state = {"job": self.job, "step": step, "history": history, "running": running,
                 "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state().tolist(),
                 "sums": sums_json(sums(tmp, ["trainable.safetensors", "optimizer.pt"]))}
        (tmp / STATE).write_text(json.dumps(state))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in self.folder.glob("checkpoint-*"):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
        return final

    def restore(self, path: Path, model, optimizer, scheduler) -> tuple[int, list, dict]:
        """Load the checkpoint at `path` into the model, optimizer and schedule. Everything is read before
        anything is changed, so a damaged checkpoint (`DamagedCheckpoint`, naming the file) leaves them as they were."""
        try:
            state = json.loads((path / STATE).read_text())
            changed = differences(path, read_sums(state.get("sums", {})), full=True)  # both files are read anyway
            if changed:
                raise ValueError("; ".join(changed))
            weights = load_file(str(path / "trainable.safetensors"))
            optimizer_state = torch.load(path / "optimizer.pt", weights_only=True)
            step, history, running, schedule, rng = (state["step"], state["history"], state["running"],
                                                     state["scheduler"], state["rng"])
        except Exception as e:  # any reader's error (safetensors, torch, JSON, a missing key) means damaged
            raise DamagedCheckpoint(f"the training checkpoint {path} is damaged ({type(e).__name__}: {e})") from e
        params = dict(model.named_parameters())
        missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
        if missing or set(weights) - set(params):
            raise ValueError(f"the checkpoint {path} does not fit this model ({len(missing)} trainable tensors "
                             f"missing); delete {self.folder} to train from the start")
        with torch.no_grad():
            for name, tensor in weights.items():
                params[name].copy_(tensor)
        optimizer.load_state_dict(optimizer_state)
        scheduler.load_state_dict(schedule)
        torch.set_rng_state(torch.tensor(rng, dtype=torch.uint8))
        return step, history, running

    def resume(self, model, optimizer, scheduler) -> tuple[int, list, dict]:
        """(step, history, running metrics) of the latest checkpoint of this job, loaded; from the start when
        there is none, or when it is damaged (with a warning: training again gives the same model)."""
        found = self.latest()
        if found is None:
            return 0, [], {}
        try:
            return self.restore(found, model, optimizer, scheduler)
        except DamagedCheckpoint as e:
            warn(f"{e}; training starts from the beginning (the next checkpoint replaces it)")
            return 0, [], {}


@dataclass
class CheckpointDue:
    """When a mid-training checkpoint is due: every `every` steps (0: not by steps), and once `minutes` have passed
    since the last save or the start (0: not by time). The clock is the main process's, so every process of a
    launched job saves at the same step."""

    every: int = 0
    minutes: float = 0.0
    last: float = field(default_factory=lambda: time.monotonic())

    def __call__(self, step: int) -> bool:
        if self.every and step % self.every == 0:
            return True
        return bool(self.minutes) and ranks.broadcast(time.monotonic() - self.last >= 60 * self.minutes)

    def saved(self) -> None:
        self.last = time.monotonic()


@dataclass(frozen=True)
class Evaluation:
    """Held-out global batches the loop scores with the training's own loss (no gradient) every `every` steps
    and after the last; their metrics enter the history as `eval_<name>` (eval_loss, eval_reward_accuracy)."""

    batches: list[list]
    every: int = 0  # 0: after the last step only

    def due(self, step: int, steps: int) -> bool:
        return step == steps or (self.every > 0 and step % self.every == 0)


def evaluate(forward: Prepared, evaluation: Evaluation, collate: Collate, loss_fn: LossFn, accelerator: Accelerator,
             dtype: torch.dtype) -> dict[str, float]:
    """The loss function's metrics over the held-out batches, each pair weighing the same (every process
    scores its share of each batch, and the sums are added over the processes)."""
    sums: dict[str, float] = {}
    with torch.no_grad():
        for number, items in enumerate(evaluation.batches):
            mine, weight = share_of(items, accelerator.num_processes, accelerator.process_index)
            pairs = len(mine) * (weight > 0)
            batch = to_device(collate(mine, number), accelerator.device, dtype)
            loss, metrics = loss_fn(forward, batch)
            for k, v in {"loss": float(loss), **metrics, "pairs": 1.0}.items():
                sums[k] = sums.get(k, 0.0) + v * pairs
    if accelerator.num_processes > 1:
        keys = sorted(sums)
        total = accelerator.reduce(torch.tensor([sums[k] for k in keys], device=accelerator.device), "sum")
        sums = dict(zip(keys, total.tolist(), strict=True))
    total_pairs = sums.pop("pairs", 0.0) or 1.0
    return {f"eval_{k}": v / total_pairs for k, v in sums.items()}


def train(model: torch.nn.Module, batches: Iterable[list], collate: Collate, loss_fn: LossFn, config: OptimConfig,
          steps: int, accelerator: Accelerator | None = None, description: str = "training",
          checkpoints: Checkpoints | None = None, checkpoint_every: int = 0,
          tracking: Tracking | None = None, checkpoint_minutes: float = 0.0,
          evaluation: Evaluation | None = None, carried: Carried | None = None) -> list[dict[str, float]]:
    """Run `steps` optimizer steps over `batches` (global batches: lists of items, cycled if shorter), each
    process collating its share of every batch with `collate(items, batch_number)`; return the logged
    metrics. A given `accelerator` logs with the trackers it was made with; `tracking` applies to the one
    made here. With `evaluation`, its held-out batches are scored as it says, through the same accelerator
    and loss. `model` is trained in place (the caller saves it, unwrapped). With `carried`, the optimizer
    starts from the state an earlier training left, and leaves its own."""
    tracked = tracking is not None and tracking.report_to != "none" and accelerator is None
    accelerator = accelerator or make_accelerator(config, tracking if tracked else None)
    if tracked and tracking is not None:
        tracking.start(accelerator)
    optimizer = adamw(trainable_parameters(model), config)
    scheduler = warmup_schedule(optimizer, math.ceil(config.warmup_ratio * steps), steps, config.schedule)
    wrapped, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    start, history, running = (checkpoints.resume(model, optimizer, scheduler) if checkpoints is not None
                               else (0, [], {}))
    if start == 0 and carried is not None:
        carried.load(optimizer)
    forward = Prepared(wrapped, model)
    due = CheckpointDue(checkpoint_every, checkpoint_minutes)
    dtype = next(model.parameters()).dtype
    wrapped.train()
    stream = _cycle(batches)
    for _ in range(start * config.grad_accum):
        next(stream)
    number = start * config.grad_accum
    with progress(description, total=steps, disable=not accelerator.is_main_process) as bar:
        bar.advance(start)
        for step in range(start + 1, steps + 1):
            for _ in range(config.grad_accum):
                items, weight = share_of(next(stream), accelerator.num_processes, accelerator.process_index)
                parts = rows_of(items, collate, number, config.row_tokens)
                number += 1
                with accelerator.accumulate(wrapped):
                    for part, share in parts:
                        loss, metrics = loss_fn(forward, to_device(part, accelerator.device, dtype))
                        accelerator.backward(loss * (weight * share))
                        for k, v in {"loss": float(loss.detach()), **metrics}.items():
                            running[k] = running.get(k, 0.0) + v * share / (config.grad_accum * config.log_every)
                    if accelerator.sync_gradients and config.max_grad_norm:
                        accelerator.clip_grad_norm_(wrapped.parameters(), config.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
            bar.advance(1)
            if step % config.log_every == 0 or step == steps:
                scale = config.log_every / (step % config.log_every or config.log_every)
                running = mean_over_processes(accelerator, running)
                entry = {"step": step, "lr": scheduler.get_last_lr()[0], **{k: v * scale for k, v in running.items()}}
                history.append(entry)
                accelerator.log({k: v for k, v in entry.items() if k != "step"}, step=step)
                bar.update(description=f"{description} loss {entry['loss']:.4f}")
                running = {}
            if evaluation is not None and evaluation.due(step, steps):
                wrapped.eval()
                scores = evaluate(forward, evaluation, collate, loss_fn, accelerator, dtype)
                wrapped.train()
                if history and history[-1]["step"] == step:
                    history[-1].update(scores)
                else:
                    history.append({"step": step, **scores})
                accelerator.log(scores, step=step)
            if checkpoints is not None and step < steps and due(step):
                if accelerator.is_main_process:
                    checkpoints.save(step, accelerator.unwrap_model(wrapped), optimizer, scheduler, history, running)
                accelerator.wait_for_everyone()
                due.saved()
    wrapped.eval()
    if carried is not None and accelerator.is_main_process:
        carried.save(optimizer)
    if tracked:
        finish_tracking(accelerator)
    return history


def warmup_schedule(optimizer: torch.optim.Optimizer, warmup: int, steps: int, shape: str = "cosine") -> LambdaLR:
    """The learning rate rises linearly over `warmup` steps, then stays (`constant`) or falls along half a cosine
    to 0 at `steps` (`cosine`): transformers' `get_constant_schedule_with_warmup` and
    `get_cosine_schedule_with_warmup` (a test holds them equal), written out because importing them loads the
    Trainer's utilities and peft before the first step."""

    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        if shape == "constant":
            return 1.0
        done = (step - warmup) / max(1, steps - warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * done)))

    return LambdaLR(optimizer, factor)


def make_accelerator(config: OptimConfig, tracking: Tracking | None = None) -> Accelerator:
    """The loop's accelerator, on the process group `vlalign.ranks` uses (gloo on CPUs). Its batches are
    global and split across the processes here, so the schedule steps once per optimizer step however many
    processes there are (accelerate's `split_batches`)."""
    return Accelerator(cpu=not torch.accelerator.is_available(), gradient_accumulation_steps=config.grad_accum,
                       dataloader_config=DataLoaderConfiguration(split_batches=True),
                       **(tracking.accelerator_args() if tracking is not None else {}))


class Prepared:
    """The model as the loss function sees it: called through accelerate's wrapper (DDP, FSDP), which syncs
    the gradients, with the attributes (config, parameters) of the model inside it."""

    def __init__(self, wrapped: torch.nn.Module, inner: torch.nn.Module):
        self._wrapped, self._inner = wrapped, inner

    def __call__(self, *args, **kwargs):
        return self._wrapped(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._inner, name)


def share_of(items: Any, processes: int, index: int) -> tuple[Any, float]:
    """This process's contiguous share of a global batch (a list), and the weight of its loss that makes the
    mean of the processes' gradients the mean over the whole batch (1 for equal shares). A process whose
    share would be empty trains on the first item with weight 0, since every process must take part in
    each step. A batch that is not a list (collated already) is every process's whole."""
    if processes == 1 or not isinstance(items, list):
        return items, 1.0
    mine = ranks.block(len(items), processes, index)
    part = items[mine.start:mine.stop]
    if not part:
        return items[:1], 0.0
    return part, len(part) * processes / len(items)


def rows_of(items: Any, collate: Callable[[Any, int], dict], number: int, limit: int | None
            ) -> list[tuple[dict, float]]:
    """A process's share of a batch as collated parts whose rows hold at most `limit` tokens each (a single
    example longer than that is a part of its own), with each part's share of the examples: its loss weight,
    so that the parts' gradients add up to the batch's. Terms normalised over the batch's tokens (the sft
    term, GRPO's token mean) become per-part means weighted by examples, as under gradient accumulation.
    Every process trains on as many parts as the one that needs most (a loss that reduces across processes
    must be called equally often, and a share of one example takes part too); without a limit, or a list to
    split, the batch is one part."""
    whole = collate(items, number)
    if limit is None or not isinstance(items, list):
        return [(whole, 1.0)]

    def split(k: int) -> list[tuple[dict, float]]:  # k shares as `share_of` cuts them among processes
        return [(collate(part, number), weight / k) for part, weight in (share_of(items, k, j) for j in range(k))]

    k, parts = 1, [(whole, 1.0)]
    while k < len(items) and max(_tokens(p) for p, _ in parts) > limit:
        k = min(len(items), max(k + 1, math.ceil(_tokens(whole) / limit)))
        parts = split(k)
    agreed = max(ranks.gather([k])) if ranks.launched() else k
    return parts if agreed == k else split(agreed)


def _tokens(batch: dict) -> int:
    """The tokens a collated batch forwards (its packed row's length, or every padded row's)."""
    return int(batch["input_ids"].numel())


def mean_over_processes(accelerator: Accelerator, values: dict[str, float]) -> dict[str, float]:
    """The logged metrics averaged over the processes (each one's are its share's)."""
    if accelerator.num_processes == 1 or not values:
        return values
    keys = sorted(values)
    mean = accelerator.reduce(torch.tensor([values[k] for k in keys], device=accelerator.device), "mean")
    return {k: float(v) for k, v in zip(keys, mean.tolist(), strict=True)}


def _cycle(batches: Iterable[list]) -> Iterator[list]:
    while True:
        empty = True
        for b in batches:
            empty = False
            yield b
        if empty:
            raise ValueError("no training batches: the dataset is empty")
