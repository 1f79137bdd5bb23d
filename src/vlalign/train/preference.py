"""Preference pairs as training reads them: their rows, the reference's cached log-probs, and the weighted
objective of `vlalign.train.losses` over them.

A batch holds one row per example and answer column (`chosen`, `rejected`, and `chosen_corrupt` for
mDPO's conditional term), column after column. The reference's log-probs of every column are computed
once, before the first step, and cached next to the run: at step 0 the policy *is* the reference (a fresh
LoRA adapter changes nothing), so no frozen copy has to sit in memory during training.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import torch

from vlalign import ranks
from vlalign.models import prefix
from vlalign.models.batching import pad_id, to_device
from vlalign.models.moe import router_coefficient
from vlalign.models.prefix import continuation_logps, continuation_logps_and_router, shares_prefix
from vlalign.progress import progress
from vlalign.train.columns import Columns
from vlalign.train.examples import PreferenceExample
from vlalign.train.loop import Collate, LossFn
from vlalign.train.losses import Logps, objective, with_router
from vlalign.train.settings import TrainConfig


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


def example_digest(e: PreferenceExample) -> str:
    return hashlib.sha256("\x1f".join((e.instruction, e.chosen, e.rejected)).encode()).hexdigest()[:16]


class Reference(Mapping[str, dict[str, float]]):
    """The reference log-probs: per example (by id, or by position with `row`), each column's value. One
    row of a tensor per example, in the examples' order, so a large set costs no dict per pair."""

    def __init__(self, ids: Sequence[str], columns: Sequence[str], values: torch.Tensor):
        self.ids, self.columns, self.table = ids, tuple(columns), values
        self._index: dict[str, int] | None = None

    def row(self, position: int) -> dict[str, float]:
        return dict(zip(self.columns, self.table[position].tolist(), strict=True))

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
        digests.append(example_digest(e))
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
        router = router_coefficient(model, config.router_aux_loss_coef)
        total, count, aux = (continuation_logps_and_router(model, batch) if router
                             else (*continuation_logps(model, batch), None))
        counts = split_columns(count, columns)
        x = Logps(split_columns(total, columns), ref, counts, config.beta, config.label_smoothing,
                  _tokens_per_process(counts["chosen"]) if "sft" in config.loss else None, router=aux)
        loss, parts = objective(with_router(config.loss, router), x)
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
