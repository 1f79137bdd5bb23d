"""Mixes of the world's tasks: which kinds of instruction a stream of scenes is asked, in what shares."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vlalign.world.judging import judge_task
from vlalign.world.scene import Scene
from vlalign.world.text import TASKS, Task, exist_task, redteam_task


@dataclass(frozen=True)
class TaskMix:
    """Relative weights of the task kinds in a training stream."""

    weights: dict[str, float] = field(default_factory=lambda: {
        "describe": 0.40, "caption": 0.08, "exist": 0.22, "color": 0.10, "count": 0.08,
        "relation": 0.08, "harmful": 0.02, "benign": 0.02,
    })
    adversarial: float = 0.0
    hallucination: float = 0.0  # see imagined_partners: the annotators' co-occurrence bias
    refusal: float = 0.0  # share of harmful requests whose training answer declines them

    def sample(self, scene: Scene, rng: np.random.Generator) -> Task:
        kinds = [k for k, w in self.weights.items() if w > 0]
        unknown = set(kinds) - set(TASKS) - {"judge"}
        if unknown:
            raise ValueError(f"unknown task kinds {sorted(unknown)}; known: {sorted(TASKS)}")
        p = np.asarray([self.weights[k] for k in kinds], dtype=float)
        kind = kinds[int(rng.choice(len(kinds), p=p / p.sum()))]
        if kind == "exist":
            return exist_task(scene, rng, self.adversarial)
        if kind in ("describe", "caption"):
            return TASKS[kind](scene, rng, self.hallucination)
        if kind == "harmful":
            return redteam_task(scene, rng, harmful=True, refuse_rate=self.refusal)
        if kind == "judge":
            return judge_task(scene, rng)
        return TASKS[kind](scene, rng)

    def restrict(self, kinds: set[str], keep: bool = True) -> TaskMix:
        """The same mix over only `kinds` (or, with keep=False, over all the others)."""
        weights = {k: w for k, w in self.weights.items() if (k in kinds) == keep and w > 0}
        return TaskMix(weights, self.adversarial, self.hallucination, self.refusal)

    def share(self, kinds: set[str]) -> float:
        total = sum(self.weights.values())
        return sum(w for k, w in self.weights.items() if k in kinds) / total if total else 0.0


@dataclass(frozen=True)
class WorldPrompts:
    """What the world's prompts ask (`prompts.options` when `prompts.source` is world)."""

    mix: dict[str, float] = field(default_factory=lambda: {"describe": 1.0})  # task kind: share of the prompts
    adversarial: float = 0.0  # share of existence questions whose absent object is the usual partner of a present one

    def __post_init__(self) -> None:
        unknown = sorted(set(self.mix) - set(TASKS))
        if unknown:
            raise ValueError(f"unknown world task kind(s) {unknown}; choose from {', '.join(TASKS)}")
        if not self.mix or any(w < 0 for w in self.mix.values()) or sum(self.mix.values()) <= 0:
            raise ValueError(f"mix needs positive shares, got {self.mix}")
        if not 0 <= self.adversarial <= 1:
            raise ValueError(f"adversarial must be in [0, 1], got {self.adversarial}")
