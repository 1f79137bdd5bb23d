"""Groups of scored answers (online RL): which groups train, and each answer's advantage, as data.

An answer's advantage is its reward against a baseline of its group: the group's mean (GRPO) or the mean
of the other answers (RLOO's leave-one-out), divided by the standard deviation of the group's rewards
(GRPO), of the whole rollout's (`batch`), or by nothing (Dr. GRPO). The formulas are TRL's (GRPOTrainer,
RLOOTrainer: unbiased standard deviation, 1e-4 added to it). A group whose answers all earned the same
reward has no signal under a mean baseline; `drop_equal` leaves it out (DAPO's dynamic sampling filter).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

EPSILON = 1e-4  # added to the standard deviation, as TRL adds it


class AdvantageSettings(Protocol):
    """What `advantages` reads of the objective's settings (`train.settings.PolicyGradientConfig`, a layer
    feedback does not import)."""

    @property
    def baseline(self) -> str: ...

    @property
    def scale(self) -> str: ...


@dataclass(frozen=True)
class GroupRules:
    """Which groups of scored answers train."""

    drop_equal: bool = True  # leave out groups whose answers all earned the same reward (no signal under a mean baseline)
    min_answers: int = 2  # a group trains with at least this many scored answers (an answer whose reward failed is logged and left out)

    def __post_init__(self) -> None:
        if self.min_answers < 2:
            raise ValueError(f"min_answers must be at least 2 (a group compares answers), got {self.min_answers}")


def std(values: Sequence[float]) -> float:
    """The unbiased standard deviation (0 for fewer than two values)."""
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def advantages(rewards: Sequence[Sequence[float]], config: AdvantageSettings) -> list[list[float]]:
    """Every answer's advantage, group by group (each group at least two answers)."""
    everyone = std([r for group in rewards for r in group]) if config.scale == "batch" else 0.0
    out = []
    for group in rewards:
        n, total = len(group), sum(group)
        if n < 2:
            raise ValueError(f"a group needs at least two answers to compare, got {n}")
        if config.baseline == "mean":
            centred = [r - total / n for r in group]
        else:
            centred = [r - (total - r) / (n - 1) for r in group]
        scale = {"group": std(group), "batch": everyone}.get(config.scale)
        out.append(centred if scale is None else [a / (scale + EPSILON) for a in centred])
    return out


def equal(rewards: Sequence[float]) -> bool:
    """Whether every answer of a group earned the same reward (to float precision)."""
    return max(rewards) - min(rewards) <= 1e-9 * max(1.0, max(abs(r) for r in rewards))
