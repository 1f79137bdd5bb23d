"""Confidence intervals and paired tests for every figure a benchmark reports.

A scorer keeps, for each unit its benchmark averages over (a POPE question, a CHAIR caption, an MME image,
a HallusionBench figure set, a world scene), the counts its figures are made of: `Outcomes`, one row per
unit and one column per count. Every figure is a function of the column sums, a registered `statistic`,
so the figure itself is the statistic of all rows (the official value, unchanged) and a bootstrap
replicate is the statistic of rows drawn again with replacement. Rows are drawn within their stratum
where a benchmark has strata (POPE's splits, MMHal's question types), so each keeps its size.

- `summarize(outcomes)`: the figures, each with a 95% percentile interval (`intervals`), and how they were
  drawn (`bootstrap`: unit, units, resamples, seed).
- `compare(a, b)`: for two evaluations of the same items (rows paired by id), every figure's difference
  b - a with a paired-bootstrap interval and p-value (the same draws for both), and for yes/no accuracy
  McNemar's exact test on the discordant questions.
- `verdict(base, run, interval, bar)`: met, missed or not distinguishable, judged on the interval.

Outcomes are written next to the metrics (`<name>.outcomes.json`), so two runs evaluated separately can be
compared later (`vlalign compare`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

LEVEL = 0.95
RESAMPLES = 1000
SEED = 0
_CHUNK = 200  # replicates drawn at once: bounds memory on large benchmarks, the same draws whatever n is

# name -> function(column sums, params) -> figures; sums are floats (all rows) or arrays (one per replicate)
Statistic = Callable[[Mapping[str, Any], Mapping[str, Any]], dict[str, Any]]
STATISTICS: dict[str, Statistic] = {}


def statistic(name: str) -> Callable[[Statistic], Statistic]:
    """Register a statistic under `name`, the name its `Outcomes` (and the files they are written to) carry."""
    def register(fn: Statistic) -> Statistic:
        if STATISTICS.get(name, fn) is not fn:
            raise ValueError(f"a statistic named {name!r} is registered already")
        STATISTICS[name] = fn
        return fn
    return register


class _Sums(dict):
    """Column sums; a column no row has sums to zero (a benchmark's part that a small file lacks)."""

    def __init__(self, values: Mapping[str, Any], zero: Any):
        super().__init__(values)
        self.zero = zero

    def __missing__(self, key: str) -> Any:
        return self.zero


def ratio(num, den):
    """num / den, and 0 where den is 0 (as every scorer here reports an empty ratio)."""
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den != 0)


def rounded(value, digits: int):
    """`round(value, digits)` as a figure is printed: Python's rounding for one number (the official value),
    numpy's for replicates (a last-digit difference there moves no interval)."""
    return round(float(value), digits) if np.ndim(value) == 0 else np.round(value, digits)


@dataclass(frozen=True)
class Outcomes:
    """Per-unit counts of one evaluation. `ids` pair rows of two evaluations of the same items; `strata`
    (one label per row, or empty) are resampled separately; `params` go to the statistic; `binary` names,
    for each yes/no accuracy, the 0/1 column of right answers and the column marking the rows it counts
    (None: all), for McNemar's test."""

    statistic: str
    unit: str
    ids: tuple[str, ...]
    columns: Mapping[str, np.ndarray]
    strata: tuple[str, ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict)
    binary: Mapping[str, tuple[str, str | None]] = field(default_factory=dict)

    @classmethod
    def from_rows(cls, statistic: str, unit: str, rows: Sequence[tuple[str, Mapping[str, float]]],
                  strata: Sequence[str] = (), **kwargs) -> Outcomes:
        """From (id, counts) rows; a count a row lacks is 0."""
        names = list(dict.fromkeys(k for _, r in rows for k in r))
        columns = {k: np.array([float(r.get(k, 0)) for _, r in rows]) for k in names}
        return cls(statistic, unit, tuple(str(i) for i, _ in rows), columns, tuple(strata), **kwargs)

    def __len__(self) -> int:
        return len(self.ids)

    def __post_init__(self) -> None:
        if len(set(self.ids)) != len(self.ids):
            raise ValueError(f"{self.statistic} outcomes repeat a {self.unit} id; every row needs its own")
        if self.strata and len(self.strata) != len(self.ids):
            raise ValueError(f"{len(self.strata)} strata for {len(self.ids)} {self.unit}s")

    def sums(self) -> dict[str, float]:
        return _Sums({k: float(v.sum()) for k, v in self.columns.items()}, 0.0)

    def select(self, ids: Sequence[str]) -> Outcomes:
        """The rows of `ids`, in that order."""
        index = {i: n for n, i in enumerate(self.ids)}
        rows = [index[i] for i in ids]
        return Outcomes(self.statistic, self.unit, tuple(ids), {k: v[rows] for k, v in self.columns.items()},
                        tuple(self.strata[r] for r in rows) if self.strata else (), self.params, self.binary)

    def to_json(self) -> dict:
        def plain(v: np.ndarray) -> list:
            return [int(x) if float(x).is_integer() else float(x) for x in v]
        return {"statistic": self.statistic, "unit": self.unit, "ids": list(self.ids),
                "strata": list(self.strata), "params": dict(self.params),
                "binary": {k: list(v) for k, v in self.binary.items()},
                "columns": {k: plain(v) for k, v in self.columns.items()}}

    @classmethod
    def from_json(cls, data: Mapping) -> Outcomes:
        return cls(data["statistic"], data["unit"], tuple(data["ids"]),
                   {k: np.asarray(v, dtype=float) for k, v in data["columns"].items()}, tuple(data.get("strata", ())),
                   data.get("params", {}), {k: (v[0], v[1]) for k, v in data.get("binary", {}).items()})


@dataclass(frozen=True)
class Result:
    """What a scorer returns: its metrics (figures, intervals, notes) and the outcomes they came from."""

    metrics: dict
    outcomes: Outcomes | None = None


def _statistic(name: str) -> Statistic:
    if name not in STATISTICS:  # the modules that define statistics register them when the benchmarks load
        from vlalign.plugins import BENCHMARKS

        BENCHMARKS.names()
    if name not in STATISTICS:
        raise ValueError(f"no statistic {name!r} is registered (known: {', '.join(sorted(STATISTICS))}); the "
                         f"outcomes were written by a benchmark this installation lacks")
    return STATISTICS[name]


def figures(outcomes: Outcomes) -> dict[str, float]:
    """The figures of all rows: the benchmark's official values."""
    out = _statistic(outcomes.statistic)(outcomes.sums(), outcomes.params)
    return {k: float(v) for k, v in out.items()}


def _groups(outcomes: Outcomes) -> list[np.ndarray]:
    if not outcomes.strata:
        return [np.arange(len(outcomes))]
    labels = np.asarray(outcomes.strata)
    return [np.flatnonzero(labels == s) for s in dict.fromkeys(outcomes.strata)]


def replicates(outcomes: Sequence[Outcomes], resamples: int = RESAMPLES, seed: int = SEED) -> list[dict[str, np.ndarray]]:
    """Bootstrap replicates of every figure of each of `outcomes` (evaluations of the same rows, in the same
    order), all drawn with the same rows: paired when there are several."""
    first = outcomes[0]
    if any(o.ids != first.ids for o in outcomes):
        raise ValueError("paired replicates need the same rows in the same order")
    rng = np.random.default_rng(seed)
    groups = _groups(first)
    names = [list(o.columns) for o in outcomes]
    tables = [np.stack([o.columns[k] for k in n], axis=1) if n else np.zeros((len(o), 0))
              for o, n in zip(outcomes, names, strict=True)]
    parts: list[list[dict[str, np.ndarray]]] = [[] for _ in outcomes]
    for start in range(0, resamples, _CHUNK):
        size = min(_CHUNK, resamples - start)
        weights = np.zeros((size, len(first)))
        for idx in groups:
            m = len(idx)
            draws = rng.integers(0, m, size=(size, m)) + np.arange(size)[:, None] * m
            weights[:, idx] = np.bincount(draws.ravel(), minlength=size * m).reshape(size, m)
        for o, n, table, part in zip(outcomes, names, tables, parts, strict=True):
            sums = weights @ table
            out = _statistic(o.statistic)(_Sums({k: sums[:, j] for j, k in enumerate(n)}, np.zeros(size)), o.params)
            part.append({k: np.broadcast_to(np.asarray(v, dtype=float), (size,)) for k, v in out.items()})
    return [{k: np.concatenate([p[k] for p in part]) for k in part[0]} for part in parts]


def _interval(values: np.ndarray, level: float) -> list[float]:
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return [float(lo), float(hi)]


def summarize(outcomes: Outcomes, extra: Mapping | None = None, level: float = LEVEL, resamples: int = RESAMPLES,
              seed: int = SEED) -> dict:
    """The figures, their intervals, how the intervals were drawn, then `extra` (the scorer's notes)."""
    point = figures(outcomes)
    reps = replicates([outcomes], resamples, seed)[0]
    return {**point, "intervals": {k: _interval(reps[k], level) for k in point},
            "bootstrap": {"unit": outcomes.unit, "units": len(outcomes), "resamples": resamples, "level": level,
                          "seed": seed}, **(extra or {})}


def scored(outcomes: Outcomes, extra: Mapping | None = None) -> Result:
    """`summarize` with the outcomes kept beside it."""
    return Result(summarize(outcomes, extra), outcomes)


def mcnemar(a: np.ndarray, b: np.ndarray) -> float:
    """McNemar's exact two-sided p-value for paired 0/1 outcomes (right answers of two models)."""
    only_a = int(np.sum((a > 0) & (b == 0)))
    only_b = int(np.sum((a == 0) & (b > 0)))
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1))
    return min(1.0, 2 * tail / 2 ** n)


@dataclass(frozen=True)
class Difference:
    """One figure of two evaluations of the same items: b - a, its paired interval and p-values; for a
    yes/no figure also McNemar's p and the agreement (the share of items both get right or both wrong:
    two judges of the same answers agree that often)."""

    a: float
    b: float
    diff: float
    interval: tuple[float, float]
    p: float
    mcnemar_p: float | None = None
    agreement: float | None = None

    def to_json(self) -> dict:
        return {"a": self.a, "b": self.b, "diff": self.diff, "interval": list(self.interval), "p": self.p,
                **({"mcnemar_p": self.mcnemar_p, "agreement": self.agreement} if self.mcnemar_p is not None else {})}


def paired(a: Outcomes, b: Outcomes) -> tuple[Outcomes, Outcomes]:
    """Both evaluations on the items they share, in a's order; an error when they share none."""
    if a.statistic != b.statistic:
        raise ValueError(f"cannot pair a {a.statistic} evaluation with a {b.statistic} one")
    common = [i for i in a.ids if i in set(b.ids)]
    if not common:
        raise ValueError(f"the two {a.statistic} evaluations share no {a.unit}: they were not run on the same items")
    return a.select(common), b.select(common)


def compare(a: Outcomes, b: Outcomes, level: float = LEVEL, resamples: int = RESAMPLES,
            seed: int = SEED) -> dict[str, Difference]:
    """Every figure's difference b - a on the items both evaluated, with a paired bootstrap interval and
    two-sided p-value, and McNemar's p for the yes/no accuracies."""
    a, b = paired(a, b)
    fa, fb = figures(a), figures(b)
    ra, rb = replicates([a, b], resamples, seed)
    out = {}
    for k in fa:
        if k not in fb:
            continue
        d = rb[k] - ra[k]
        p = 1.0 if np.all(d == 0) else min(1.0, 2 * min(float(np.mean(d <= 0)), float(np.mean(d >= 0))))
        test = agree = None
        if k in a.binary:
            right, mask = a.binary[k]
            rows = (a.columns[mask] > 0) & (b.columns[mask] > 0) if mask else np.ones(len(a), bool)
            ya, yb = a.columns[right][rows] > 0, b.columns[right][rows] > 0
            test = mcnemar(ya, yb)
            agree = float(np.mean(ya == yb)) if rows.any() else 1.0
        out[k] = Difference(fa[k], fb[k], fb[k] - fa[k], tuple(_interval(d, level)), p, test, agree)
    return out


def verdict(base: float, run: float, interval: Sequence[float], bar: float, higher_is_better: bool = True) -> str:
    """Whether `run` reaches `bar` ("met"), fails it ("missed"), or cannot be told apart from it ("not
    distinguishable"), judged on the paired interval of run - base: the bar asks run - base to reach
    bar - base, and the whole interval must lie on one side of that. `run` (the point value) is what the
    interval surrounds; it decides nothing alone."""
    need = bar - base
    lo, hi = interval
    if not higher_is_better:
        lo, hi, need = -hi, -lo, -need
    if lo >= need:
        return "met"
    if hi < need:
        return "missed"
    return "not distinguishable"


def outcomes_path(metrics_path: Path) -> Path:
    """Where the outcomes of the metrics written to `metrics_path` go: `<stem>.outcomes.json` beside them."""
    return metrics_path.with_name(f"{metrics_path.stem}.outcomes.json")


def write_outcomes(path: Path, outcomes: Outcomes) -> None:
    """Write outcomes atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(outcomes.to_json()))
    os.replace(tmp, path)


def read_outcomes(path: Path) -> Outcomes:
    try:
        return Outcomes.from_json(json.loads(Path(path).read_text(encoding="utf-8")))
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a vlalign outcomes file ({e!r}); evaluate again to write it") from e
