"""What every reported figure means, which way is better, and how a model's figure moved from the base's.

The terminal's tables and the report read their labels, legends and colours from here, so a figure is
named and judged the same way everywhere. A benchmark that reports figures of its own names them in its
`Benchmark.glossary` (the world's do); the names below are the core benchmarks' (CHAIR, POPE, MMHal-Bench,
MME, AMBER) and serve any benchmark that reports a figure of the same name.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

Better = Literal["lower", "higher"] | None  # None: neither way is better (words per answer, the yes-ratio)


@dataclass(frozen=True)
class Figure:
    """A metric's short label (terminal columns, chart titles), which way is better, and what it measures."""

    label: str
    better: Better
    meaning: str


CORE: dict[str, Figure] = {
    "chair_i": Figure("CHAIR_i", "lower", "share of object mentions in free descriptions that name an object the "
                      "image does not hold (hallucinated mentions / all mentions)"),
    "chair_s": Figure("CHAIR_s", "lower", "share of descriptions that name at least one object the image does not hold"),
    "chair_s_refine": Figure("CHAIR_s (naming)", "lower", "CHAIR_s over the descriptions that name any object"),
    "chair_i_unique": Figure("CHAIR_i per object", "lower", "CHAIR_i counting each distinct object once per "
                             "description (a repeated false object counts once)"),
    "recall": Figure("recall", "higher", "share of the objects in the image that the description names"),
    "object_recall": Figure("recall", "higher", "share of the objects in the image that the description names"),
    "mean_words": Figure("words", None, "mean words per description: shorter answers hallucinate less and cover "
                         "less, so read CHAIR with recall and length"),
    "accuracy": Figure("accuracy", "higher", "share of yes/no questions answered right"),
    "precision": Figure("precision", "higher", "share of yes answers that are right"),
    "f1": Figure("F1", "higher", "harmonic mean of yes-precision and yes-recall"),
    "yes_ratio": Figure("yes-ratio", None, "share of questions answered yes (0.5 when the model is unbiased: "
                        "half the questions are about present objects)"),
    "average_score": Figure("MMHal score", "higher", "MMHal-Bench's judge score, 0-6"),
    "hallucination_rate": Figure("hallucination rate", "lower", "share of MMHal-Bench answers the judge scores below 3"),
    "perception": Figure("MME perception", "higher", "MME's perception score (acc + acc+ summed over its subtasks)"),
    "cognition": Figure("MME cognition", "higher", "MME's cognition score (acc + acc+ summed over its subtasks)"),
    "chair": Figure("AMBER CHAIR", "lower", "AMBER's CHAIR: hallucinated objects / objects named"),
    "cover": Figure("AMBER cover", "higher", "AMBER's cover: share of annotated objects the answer names"),
    "hal": Figure("AMBER hal", "lower", "AMBER's Hal: share of answers with any hallucinated object"),
    "cog": Figure("AMBER cog", "lower", "AMBER's Cog: share of hallucinated objects that are ones humans tend to imagine"),
    "refusal_rate": Figure("refusals", "higher", "share of harmful requests the model refuses"),
    "over_refusal": Figure("over-refusals", "lower", "share of harmless requests the model refuses"),
}

for _split in ("random", "popular", "adversarial"):
    for _key, _label, _better in (("f1", "F1", "higher"), ("accuracy", "acc.", "higher"), ("precision", "precision", "higher"),
                                  ("recall", "recall", "higher"), ("yes_ratio", "yes-ratio", None)):
        CORE[f"{_split}_{_key}"] = Figure(f"POPE {_split} {_label}", _better, f"{_label} on POPE's {_split} split")


# The figures a table shows first, where a benchmark reports them: the lead (hallucination), then what tells a
# shorter answer from a truer one (recall, length), then yes/no and the rest.
PREFERRED = ("chair_i", "chair", "hallucination_rate", "f1", "average_score", "perception", "chair_s", "hal",
             "object_recall", "recall", "cover", "mean_words", "pope_f1", "accuracy", "count_accuracy", "cognition",
             "precision", "yes_ratio", "pope_accuracy", "cog")


def table_keys(present: Iterable[str], limit: int = 5) -> list[str]:
    """The columns of a table of these figures: the preferred ones present, in order, at most `limit`."""
    have = set(present)
    return [k for k in PREFERRED if k in have][:limit] or sorted(have)[:limit]


def glossary(benchmarks: Iterable[str] = ()) -> dict[str, Figure]:
    """The figures these benchmarks report (their own names first), over the core ones."""
    from vlalign.plugins import BENCHMARKS

    out = dict(CORE)
    for name in benchmarks:
        if name in BENCHMARKS:
            out.update(getattr(BENCHMARKS.get(name), "glossary", None) or {})
    return out


def label(key: str, names: Mapping[str, Figure]) -> str:
    return names[key].label if key in names else key


@dataclass(frozen=True)
class Change:
    """A model's figure against the base's: the difference, in points of the base's scale and in percent of
    it; the paired 95% interval of the difference (when both were evaluated on the same items); and the
    verdict: "better" or "worse" when the interval excludes 0, "within noise" when it does not, "" when
    there is no interval or no better direction."""

    base: float
    value: float
    diff: float
    percent: float | None
    interval: tuple[float, float] | None
    verdict: str
    _direction: str = ""

    @property
    def rate(self) -> bool:
        return 0 <= self.base <= 1 and 0 <= self.value <= 1

    def _amount(self, x: float) -> str:
        return f"{100 * x if self.rate else x:+.1f}"

    @property
    def text(self) -> str:
        """`-4.4 pts (-21%)`: a rate's change in percentage points, another figure's in its own unit, and
        either in percent of the base."""
        unit = " pts" if self.rate else ""
        return self._amount(self.diff) + unit + (f" ({self.percent:+.0f}%)" if self.percent is not None else "")

    @property
    def interval_text(self) -> str:
        return f"[{self._amount(self.interval[0])}, {self._amount(self.interval[1])}]" if self.interval else ""

    @property
    def direction(self) -> str:
        """"better" or "worse" by the sign of the change alone (the verdict says whether it is beyond noise)."""
        return self._direction


def _direction(diff: float, better: Better) -> str:
    if better is None or diff == 0:
        return ""
    return "better" if (diff > 0) == (better == "higher") else "worse"


def change(key: str, base: Mapping, metrics: Mapping, names: Mapping[str, Figure]) -> Change | None:
    """`metrics[key]` against `base[key]` (None when either is missing). Where the model's evaluation was
    compared with the base's item by item (`metrics["vs_base"]`), the change and its interval are that
    comparison's, on the items both evaluated."""
    paired = (metrics.get("vs_base") or {}).get(key) or {}
    if _number(paired.get("a")) and _number(paired.get("b")):  # both on the items they share (best-of-N's subset)
        b, v = paired["a"], paired["b"]
    else:
        b, v = base.get(key), metrics.get(key)
    if not _number(b) or not _number(v):
        return None
    interval = tuple(paired["interval"]) if paired.get("interval") else None
    better = names[key].better if key in names else None
    verdict = ""
    if interval is not None and better is not None:
        lo, hi = interval
        if lo > 0 or hi < 0:
            verdict = "better" if (lo > 0) == (better == "higher") else "worse"
        else:
            verdict = "within noise"
    diff = v - b
    return Change(b, v, diff, 100 * diff / abs(b) if b else None, interval, verdict, _direction(diff, better))


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
