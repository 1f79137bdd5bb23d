"""mDPO (arXiv 2406.11839): DPO on preference pairs, plus a conditional term (the chosen answer with the real
image is preferred to the same answer with a corrupted image, so the image has to matter) and a reward
anchor (the chosen answer's own reward stays positive). Its pairs are RLAIF-V's feedback (sample, label,
pair), or any run's with `pairs_from`; what this method adds is its corrupted image and its loss terms.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vlalign.methods.base import Arm, Method
from vlalign.plugins import METHODS
from vlalign.stages.label import labeled_pairs
from vlalign.stages.round import Round
from vlalign.stages.settings import LabeledConfig
from vlalign.train.objectives import Corruption
from vlalign.train.settings import OptimConfig, TrainConfig


@dataclass(frozen=True)
class MDPOConfig(LabeledConfig):
    """mDPO on labeled pairs: DPO, the image-conditional term and the reward anchor."""

    rounds: int = 1  # the paper trains once on fixed pairs; more rounds sample anew, as RLAIF-V does
    corruption: Corruption = field(default_factory=Corruption)  # the conditional term's corrupted image
    train: TrainConfig = field(default_factory=lambda: TrainConfig(  # the paper's three terms, equally weighted
        loss={"sigmoid": 1.0, "conditional": 1.0, "anchor": 1.0}, beta=0.1, batch_size=8, epochs=1,
        optim=OptimConfig(lr=5e-7)))


def pairs(r: Round[MDPOConfig]) -> list[Arm]:
    stage, stats = labeled_pairs(r)
    return [Arm("policy", stage, r.config.train, r.config.corruption.objective(), stats=stats)]


METHOD = METHODS.register("mdpo", Method(
    "mdpo", "DPO plus an image-conditional term and a reward anchor, on RLAIF-V's pairs (arXiv 2406.11839)",
    MDPOConfig, pairs))
