"""RLAIF-V (arXiv 2405.17220): each round the policy samples n answers per fresh prompt with identical
decoding (deconfounded), a labeler scores every answer's atomic claims by P(yes), and pairs are built by
claim score under RLAIF-V's rules. The runner then trains the policy on them with itself (at the round's
start) as the reference, and the next round samples from the result. The labeler is a separate model
or, for self-alignment, the policy itself (`labeler: self`); sampling and labeling can run on
OpenAI-compatible servers (`sampler` / `labeler: api:MODEL@URL`).
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
class RLAIFVConfig(LabeledConfig):
    """RLAIF-V: deconfounded sampling, claim-level feedback from a labeler, iterative DPO."""

    rounds: int = 4  # online rounds, as in the paper
    train: TrainConfig = field(default_factory=lambda: TrainConfig(  # DPO each round
        loss={"sigmoid": 1.0}, beta=0.1, batch_size=8, epochs=1, optim=OptimConfig(lr=5e-7)))


def pairs(r: Round[RLAIFVConfig]) -> list[Arm]:
    stage, stats = labeled_pairs(r)
    return [Arm("policy", stage, r.config.train, stats=stats)]


METHOD = METHODS.register("rlaif-v", Method(
    "rlaif-v", "deconfounded sampling, claim-level labeler feedback, iterative DPO (arXiv 2405.17220)",
    RLAIFVConfig, pairs))
