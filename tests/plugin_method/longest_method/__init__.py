"""A method from outside vlalign, built from its shared stages only: the policy answers each prompt a few
times, and the longer of two answers is preferred ("the longest answer is best", VLFeedback's heuristic
baseline, as a method of its own)."""

from __future__ import annotations

from dataclasses import dataclass, field

from vlalign.feedback.pairs import PairRules
from vlalign.methods.base import Arm, Method
from vlalign.plugins import METHODS
from vlalign.stages.pairs import longest_stage, pair_stage
from vlalign.stages.round import Round
from vlalign.stages.sample import sampled
from vlalign.stages.settings import SampledConfig


@dataclass(frozen=True)
class LongestConfig(SampledConfig):
    """Sampled answers, the longer one preferred."""

    samples: int = 4  # answers per prompt
    rules: PairRules = field(default_factory=lambda: PairRules(min_gap=1.0, length_balance=False))  # a pair's lengths differ by a word or more


def pairs(r: Round[LongestConfig]) -> list[Arm]:
    responses = sampled(r, r.stage("responses"))
    lengths = longest_stage(responses, r.stage("feedback"))
    chosen = pair_stage(responses, lengths, r.stage("pairs"), r.config.rules, method="longest")
    return [Arm("policy", chosen, r.config.train)]


def register() -> None:
    METHODS.register("longest", Method("longest", "the longer of two sampled answers preferred", LongestConfig,
                                       pairs))
