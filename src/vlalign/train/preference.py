"""Preference training for VLMs: pairs in, a trained policy out, with any weighted objective of
`vlalign.train.losses`.

A batch holds one row per example and answer column (`chosen`, `rejected`, and `chosen_corrupt` for
mDPO's conditional term), column after column. The reference's log-probs of every column are computed
once, before the first step, and cached next to the run: at step 0 the policy *is* the reference (a fresh
LoRA adapter changes nothing), so no frozen copy has to sit in memory during training. Pass `reference`
to use another model instead.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from vlalign import ranks
from vlalign.config import to_dict
from vlalign.models import prefix
from vlalign.models.batching import pad_id, to_device
from vlalign.models.prefix import continuation_logps, shares_prefix
from vlalign.progress import progress
from vlalign.train.examples import PreferenceExample, Shuffled
from vlalign.train.loop import Checkpoints, Collate, LossFn, Tracking, train
from vlalign.train.losses import NO_REFERENCE, Logps, columns_of, objective
from vlalign.train.settings import TrainConfig

ImageOf = Callable[[PreferenceExample], Image.Image]


@dataclass(frozen=True)
class Columns:
    """The answer columns of a batch: which text each reads, and under which image. `images` maps a column
    beyond chosen and rejected to the function that makes its image; `key` names those functions, so a
    cached reference is reused only for the same images."""

    names: tuple[str, ...] = ("chosen", "rejected")
    images: tuple[tuple[str, ImageOf], ...] = ()
    key: str = ""

    def text(self, column: str, e: PreferenceExample) -> str:
        return e.rejected if column == "rejected" else e.chosen

    def image(self, column: str, e: PreferenceExample) -> Image.Image:
        return dict(self.images)[column](e) if column not in ("chosen", "rejected") else e.image


def columns_for(config: TrainConfig, images: dict[str, ImageOf] | None = None, key: str = "") -> Columns:
    """The columns `config.loss` reads; a term that needs an image no one provided is an error now."""
    names = columns_of(config.loss)
    images = images or {}
    missing = [c for c in names if c not in ("chosen", "rejected") and c not in images]
    if missing:
        raise ValueError(f"the loss terms {sorted(config.loss)} need the column(s) {missing}, which only a method "
                         f"that corrupts images provides (mdpo); drop those terms or use that method")
    return Columns(names, tuple((c, images[c]) for c in names if c in images), key)


def batch_rows(processor, examples: Sequence[PreferenceExample], columns: Columns, shared: bool = True) -> dict:
    """One packed batch (`vlalign.models.prefix`): each example's prompt once per image, the answers of the
    columns read under that image continuing it (chosen and rejected share the real image; mDPO's
    `chosen_corrupt` has its own). Scores come back column after column: every example's first column, then
    the next (`split_columns`). With `shared=False` every answer gets a row of its own."""
    n = len(examples)
    under: dict[str, list[int]] = {}  # image ("" for the real one) -> the columns read under it
    for c, name in enumerate(columns.names):
        under.setdefault("" if name in ("chosen", "rejected") else name, []).append(c)
    groups = []
    for i, e in enumerate(examples):
        for image, cs in under.items():
            groups.append(prefix.answers_group(processor, columns.image(image, e) if image else e.image, e.instruction,
                                               [columns.text(columns.names[c], e) for c in cs],
                                               [c * n + i for c in cs]))
    return prefix.collate(groups, pad_id(processor), shared)


def split_columns(values: torch.Tensor, columns: Columns) -> dict[str, torch.Tensor]:
    n = len(values) // len(columns.names)
    return {c: values[i * n:(i + 1) * n] for i, c in enumerate(columns.names)}


def model_fingerprint(model) -> str:
    """A cheap identity of a model's weights: shapes and sums of every parameter."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(f"{name}{tuple(p.shape)}{float(p.detach().double().sum()):.6e}".encode())
    return h.hexdigest()[:16]


def _digest(e: PreferenceExample) -> str:
    return hashlib.sha256("\x1f".join((e.instruction, e.chosen, e.rejected)).encode()).hexdigest()[:16]


class Reference(Mapping[str, dict[str, float]]):
    """The reference log-probs: per example (by id, or by position with `row`), each column's value. One
    row of a tensor per example, in the examples' order, so a large set costs no dict per pair."""

    def __init__(self, ids: Sequence[str], columns: Sequence[str], values: torch.Tensor):
        self.ids, self.columns, self.values = ids, tuple(columns), values
        self._index: dict[str, int] | None = None

    def row(self, position: int) -> dict[str, float]:
        return dict(zip(self.columns, self.values[position].tolist(), strict=True))

    def __getitem__(self, id: str) -> dict[str, float]:
        if self._index is None:
            self._index = {i: p for p, i in enumerate(self.ids)}
        return self.row(self._index[id])

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids)

    def __len__(self) -> int:
        return len(self.ids)


def _cached(cache: Path | None, fingerprint: str, columns: Columns, ids: Sequence[str], digests: Sequence[str]
            ) -> list[list[float]] | None:
    """The cached log-probs (one row per example) when `cache` holds every example's, made by these weights
    for these columns; None (recompute) for anything else, a damaged or emptied file included: a cache is
    never trusted."""
    if cache is None or not cache.exists():
        return None
    try:
        saved = json.loads(cache.read_text())
    except (ValueError, OSError):
        return None
    if not isinstance(saved, dict) or saved.get("model") != fingerprint \
            or saved.get("columns") != [*columns.names, columns.key]:
        return None
    logps, known = saved.get("logps"), saved.get("digests")
    if not isinstance(logps, dict) or not isinstance(known, dict):
        return None
    rows = []
    for i, d in zip(ids, digests, strict=True):
        values = logps.get(i)
        if known.get(i) != d or not isinstance(values, dict) or \
                not all(isinstance(values.get(c), (int, float)) for c in columns.names):
            return None
        rows.append([values[c] for c in columns.names])
    return rows


def _write_cache(cache: Path, fingerprint: str, columns: Columns, ids: Sequence[str], digests: Sequence[str],
                 rows: list[list[float]]) -> None:
    """The cache file (JSON, every example's digest and values by id), written entry by entry and renamed
    into place, so a large set is never one big string in memory."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    with open(tmp, "w") as f:
        f.write(f'{{"model": {json.dumps(fingerprint)}, "columns": {json.dumps([*columns.names, columns.key])}, '
                f'"digests": {{')
        f.write(", ".join(f"{json.dumps(i)}: {json.dumps(d)}" for i, d in zip(ids, digests, strict=True)))
        f.write('}, "logps": {')
        f.write(", ".join(f"{json.dumps(i)}: {json.dumps(dict(zip(columns.names, r, strict=True)))}"
                          for i, r in zip(ids, rows, strict=True)))
        f.write("}}")
    os.replace(tmp, cache)


@torch.no_grad()
def reference_logps(model, processor, examples: Sequence[PreferenceExample], columns: Columns = Columns(),
                    cache: Path | None = None, batch_size: int = 8) -> Reference:
    """Per example and column, the summed answer log-prob under `model`, cached in `cache`. The cache is
    used only when it was made by the same weights for the same texts and images; otherwise the values are
    recomputed, so a stale cache can never leak into a new run. Under a launcher every process scores its
    share, all receive every value, and the main process writes the cache."""
    fingerprint = model_fingerprint(model)
    ids, digests = [], []
    for e in examples:
        ids.append(e.id)
        digests.append(_digest(e))
    rows = _cached(cache, fingerprint, columns, ids, digests)
    if rows is None:
        rows = ranks.gather(_scored(model, processor, examples, columns, batch_size))
        if cache is not None and ranks.is_main():
            _write_cache(cache, fingerprint, columns, ids, digests, rows)
        ranks.barrier()
    return Reference(ids, columns.names, torch.tensor(rows, dtype=torch.float64).reshape(len(ids), len(columns.names)))


def _scored(model, processor, examples: Sequence[PreferenceExample], columns: Columns, batch_size: int
            ) -> list[list[float]]:
    """This process's share of the reference log-probs, a row of column values per example: one contiguous
    block of the examples (all of them without a launcher), so the shares gathered in rank order are the
    examples' order."""
    mine = ranks.block(len(examples))
    start, stop = mine.start, mine.stop
    p = next(model.parameters())
    was_training = model.training
    model.eval()
    out: list[list[float]] = []
    with progress("reference log-probs", total=stop - start, disable=not ranks.is_main()) as bar:
        for s in range(start, stop, batch_size):
            chunk = examples[s:min(s + batch_size, stop)]
            batch = batch_rows(processor, chunk, columns, shares_prefix(model))
            total, _ = continuation_logps(model, to_device(batch, p.device, p.dtype))
            by_column = split_columns(total, columns)
            out += torch.stack([by_column[c] for c in columns.names], 1).tolist()
            bar.advance(len(chunk))
    model.train(was_training)
    return out


def make_loss(config: TrainConfig, columns: Columns = Columns()) -> LossFn:
    """The weighted objective of `config.loss` for the shared loop, with the usual DPO metrics."""

    def loss_fn(model, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        ref = batch.pop("ref")
        total, count = continuation_logps(model, batch)
        counts = split_columns(count, columns)
        x = Logps(split_columns(total, columns), ref, counts, config.beta, config.label_smoothing,
                  _tokens_per_process(counts["chosen"]) if "sft" in config.loss else None)
        loss, parts = objective(config.loss, x)
        metrics = {"chosen_logp": float(x.policy["chosen"].detach().mean()), **parts}
        if x.ref:
            r_chosen, r_rejected = config.beta * x.ratio("chosen").detach(), config.beta * x.ratio("rejected").detach()
            metrics.update(reward_margin=float((r_chosen - r_rejected).mean()),
                           reward_accuracy=float((r_chosen > r_rejected).float().mean()))
        return loss, metrics

    return loss_fn


def _tokens_per_process(count: torch.Tensor) -> torch.Tensor | None:
    """The chosen tokens of the whole global batch divided by the processes (None in one process): each
    process's sft term then divides by it, and DDP's mean of the gradients is the global token mean."""
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return None
    total = count.sum().detach().clone()
    torch.distributed.all_reduce(total)
    return total / torch.distributed.get_world_size()


def pair_collate(processor, columns: Columns, shared: bool = True) -> Collate:
    """Rows of every column, and the cached reference log-probs under `ref` (one tensor per column)."""

    def pairs(items: list, number: int) -> dict:
        examples = [e for e, _ in items]
        ref = {c: torch.tensor([r[c] for _, r in items]) for c in columns.names} if items[0][1] else {}
        return {**batch_rows(processor, examples, columns, shared), "ref": ref}

    return pairs


def prepare_policy(model, config: TrainConfig, gradient_checkpointing: bool = False):
    """Freeze the vision tower, wrap in LoRA as configured, and turn on gradient checkpointing."""
    from vlalign.models.lora import apply_lora, freeze_vision

    if config.freeze_vision:
        freeze_vision(model)
    if config.lora is not None:
        model = apply_lora(model, config.lora)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if config.lora is not None:
            model.enable_input_require_grads()
    return model


def _job(config: TrainConfig, examples: Sequence[PreferenceExample], columns: Columns) -> str:
    """What a mid-training checkpoint belongs to: the settings and the pairs (so no other job resumes it);
    where the metrics are reported changes nothing that is trained, so it is left out."""
    settings = {k: v for k, v in to_dict(config).items() if k != "report_to"}
    blob = json.dumps([settings, [*columns.names, columns.key], [_digest(e) for e in examples]])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def tracking_for(config: TrainConfig, out: Path | None) -> Tracking | None:
    """`config.report_to`'s trackers, writing under `out/trackers` (the run named after the folder above
    `out`, the round); they need that folder, so training without one is refused before it starts."""
    if config.report_to == "none":
        return None
    if out is None:
        raise ValueError(f"report_to: {config.report_to} needs an output folder for its files; pass out=")
    out = Path(out).resolve()
    return Tracking(config.report_to, out / "trackers", name=out.parent.name or "training", config=to_dict(config))


def fit_preferences(model, processor, examples: Sequence[PreferenceExample], config: TrainConfig, *,
                    out: Path | None = None, reference=None, columns: Columns | None = None,
                    loss_fn: LossFn | None = None, collate: Collate | None = None, description: str = "DPO",
                    gradient_checkpointing: bool = False) -> tuple[torch.nn.Module, list[dict]]:
    """Train `model` on `examples`: prepare it, cache the reference log-probs, loop over shuffled batches
    with `loss_fn` (the weighted objective of `config.loss` by default). With `out`, the reference cache,
    mid-training checkpoints and the history live there. Saving the model is the caller's."""
    if not examples:
        raise ValueError(f"{description} needs at least one preference pair; the pair stage produced none")
    if config.batch_size % ranks.world_size():
        raise ValueError(f"batch_size {config.batch_size} (pairs per optimizer step, over all processes) must be a "
                         f"multiple of the {ranks.world_size()} processes, which each train on an equal share")
    columns = columns or columns_for(config)
    tracking = tracking_for(config, out)
    torch.manual_seed(config.seed)
    model = prepare_policy(model, config, gradient_checkpointing)
    needs_ref = loss_fn is not None or not set(config.loss) <= NO_REFERENCE
    cache = Path(out) / "reference_logps.json" if out is not None else None
    ref = (reference_logps(reference if reference is not None else model, processor, examples, columns, cache)
           if needs_ref else Reference([], (), torch.zeros(len(examples), 0)))
    batches = Shuffled(examples, ref.row, config.batch_size, config.seed)
    checkpoints = (Checkpoints(Path(out) / "checkpoints", _job(config, examples, columns))
                   if out is not None and config.checkpoint_every else None)
    collate = collate or pair_collate(processor, columns, shares_prefix(model))
    history = train(model, batches, collate, loss_fn or make_loss(config, columns), config.optim,
                    config.steps_for(len(examples)), description=description, checkpoints=checkpoints,
                    checkpoint_every=config.checkpoint_every, tracking=tracking)
    if out is not None and ranks.is_main():
        Path(out).mkdir(parents=True, exist_ok=True)
        text = json.dumps({"config": to_dict(config), "n_pairs": len(examples), "history": history}, indent=1)
        tmp = Path(out) / ".train_history.json.tmp"
        tmp.write_text(text)
        os.replace(tmp, Path(out) / "train_history.json")
    return model, history
