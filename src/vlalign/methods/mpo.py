"""MPO (InternVL, arXiv 2411.10442): mixed preference optimization, a recipe of loss terms on preference
pairs: DPO's preference term (sigmoid, 0.8), BCO's quality term (bco_pair, 0.2) and the generation term
(sft, 1.0). Its pairs are RLAIF-V's feedback (sample, label, pair), or any run's with `pairs_from`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vlalign.methods.base import Arm, Method
from vlalign.plugins import METHODS
from vlalign.stages.label import labeled_pairs
from vlalign.stages.round import Round
from vlalign.stages.settings import LabeledConfig
from vlalign.train.settings import OptimConfig, TrainConfig


@dataclass(frozen=True)
class MPOConfig(LabeledConfig):
    """MPO on labeled pairs: preference, quality and generation terms."""

    rounds: int = 1  # the paper trains once on fixed pairs; more rounds sample anew, as RLAIF-V does
    train: TrainConfig = field(default_factory=lambda: TrainConfig(  # InternVL's weights of the three terms
        loss={"sigmoid": 0.8, "bco_pair": 0.2, "sft": 1.0}, beta=0.1, batch_size=8, epochs=1,
        optim=OptimConfig(lr=5e-7)))


def pairs(r: Round[MPOConfig]) -> list[Arm]:
    stage, stats = labeled_pairs(r)
    return [Arm("policy", stage, r.config.train, stats=stats)]


METHOD = METHODS.register("mpo", Method(
    "mpo", "mixed preference optimization: sigmoid 0.8 + bco_pair 0.2 + sft 1.0, on RLAIF-V's pairs "
           "(arXiv 2411.10442)", MPOConfig, pairs))
