"""What a method is: its config (`vlalign.stages.settings.RunConfig` and its own keys), a composition of the
shared stages (`vlalign.stages`) that makes each round's pairs, and the objective each arm trains. The runner
(`vlalign.runner`) owns everything else: loading, prompts, rounds, training, saving, evaluation and the
summary. A method never imports another method.

Nothing here imports torch, so a config is checked in full before any model library loads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic

from vlalign.stages.round import C, Round
from vlalign.train.objectives import Objective, Preference
from vlalign.train.settings import TrainConfig

if TYPE_CHECKING:
    from vlalign.data.store import Stage


@dataclass
class Arm:
    """One training of a round: its pairs, its settings and its objective. A round's first arm is the policy
    the next round starts from; other arms (a baseline) train from the same start and are evaluated beside it."""

    name: str
    pairs: Stage | str  # a stage of this run, or a run / stage directory (pairs_from)
    train: TrainConfig
    objective: Objective = field(default_factory=Preference)  # what the arm minimises (default: train.loss's terms)
    stats: dict = field(default_factory=dict)  # what the method reports about the round (scores, selection)


@dataclass(frozen=True)
class Method(Generic[C]):
    """A method as data: its config, and what makes its arms each round."""

    name: str
    summary: str
    config: type[C]
    pairs: Callable[[Round[C]], Sequence[Arm]]
    same_prompts: bool = False  # every round trains on the first round's prompts (POVID's two stages)
