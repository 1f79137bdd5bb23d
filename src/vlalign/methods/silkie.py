"""VLFeedback / Silkie (arXiv 2312.10665): answers from a pool of models, an AI judge's ratings on
helpfulness, visual faithfulness and ethics, VLFeedback's pairs, DPO. The paper's heuristic baseline,
pairs chosen by "the longest answer is best", is built from the same answers and trained the same way
(a second arm of the round), so the two can be compared.

One rule is added to VLFeedback's pairs, for the prompt sources `claim_balance` names: a pair whose
chosen answer makes fewer claims than the rejected one is dropped, as in RLAIF-V. A judge that sees a
false object more easily than a missing one prefers the answer that names less, and DPO on such pairs
teaches the policy to stop naming what it is unsure of, present or not.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vlalign.feedback.judge import decoded
from vlalign.feedback.ratings import rating_score, vlfeedback_rules
from vlalign.feedback.splitters import make_splitter, needs_judge
from vlalign.feedback.vlfeedback import RatingJudge
from vlalign.methods.base import Arm, Method
from vlalign.models.settings import ChatDecoding, Runtime
from vlalign.plugins import METHODS, RATING_STYLES, SPLITTERS
from vlalign.stages.pairs import longest_stage, pair_stage
from vlalign.stages.pool import PoolMember, pool_stage
from vlalign.stages.ratings import claim_counting, rating_stage
from vlalign.stages.round import Round
from vlalign.stages.settings import Prompts, RunConfig
from vlalign.train.settings import OptimConfig, TrainConfig


@dataclass(frozen=True)
class SilkieConfig(RunConfig):
    """VLFeedback / Silkie: a response pool rated by an AI judge on three aspects, pairs, DPO."""

    prompts: Prompts = field(default_factory=lambda: Prompts(per_round=10000))  # the instructions
    pool: list[PoolMember] = field(default_factory=list)  # the models that answer (at least answers_per_prompt)
    answers_per_prompt: int = 4  # answers per instruction, each from a different pool member (drawn per prompt)
    judge: str | None = None  # the rating judge: api:MODEL[@URL] (GPT-4V in the paper) or a model directory
    judge_runtime: Runtime | None = None  # how a local judge loads (null: as the policy)
    judge_style: str = "vlfeedback"  # vlfeedback (all answers in one request) or a plugin's per-answer style (world)
    judge_decoding: ChatDecoding = field(default_factory=ChatDecoding)  # the judge's reply length and temperature
    margin: float = 0.0  # pairs need mean ratings further apart than this
    aspect: str | None = None  # pair by one aspect (e.g. "Visual Faithfulness") instead of the mean rating
    claim_balance: list[str] = field(default_factory=list)  # prompt sources whose chosen answers must claim no less than the rejected ([]: off)
    splitter: str = "sentences"  # how claims are counted for claim_balance: sentences, llm (asks judge), world, ...
    baseline: bool = True  # also train on "the longest answer is best" pairs from the same answers (an arm of its own)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(  # DPO on the rated pairs
        loss={"sigmoid": 1.0}, beta=0.1, batch_size=8, epochs=1, optim=OptimConfig(lr=5e-7)))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pool and not 2 <= self.answers_per_prompt <= len(self.pool):
            raise ValueError(f"answers_per_prompt must be between 2 and the pool size ({len(self.pool)}), "
                             f"got {self.answers_per_prompt}")
        if self.judge_style not in RATING_STYLES:
            raise ValueError(f"unknown judge_style {self.judge_style!r}; known: {', '.join(RATING_STYLES.names())}")
        if self.splitter not in SPLITTERS:
            raise ValueError(f"unknown splitter {self.splitter!r}; known: {', '.join(SPLITTERS.names())}")
        if self.rounds != 1:
            raise ValueError("Silkie trains once on its rated pool: rounds must be 1")

    def problems(self) -> list[str]:
        out = super().problems()
        if self.pairs_from is None and not self.pool:
            out.append("pool: empty; list the models that answer (e.g. - {model: /models/llava-1.5-7b-hf})")
        if self.pairs_from is None and not self.judge:
            out.append("judge: not set; name the rating judge (api:gpt-4o, a model directory, world:judge)")
        return out

    def backends(self) -> list[str]:
        return [*super().backends(), *([self.judge] if self.judge else []),
                *(m.model for m in self.pool)]


def pairs(r: Round[SilkieConfig]) -> list[Arm]:
    """Pool -> ratings -> pairs (and the longest-answer baseline's pairs, from the same answers). The judge is
    held for the rating stage only (it counts the claims too, where claim balance asks for them)."""
    c = r.config
    if r.given_pairs:
        return [Arm("policy", r.given_pairs, c.train)]
    assert c.judge is not None  # the config's problems() refuses a run without one
    responses = pool_stage(r, r.stage("responses"), c.pool, c.answers_per_prompt)
    with r.models.chat(c.judge, c.judge_runtime) as chat:
        judge = decoded(chat, c.judge_decoding)
        split = make_splitter(c.splitter, judge if needs_judge(c.splitter) else None)
        counting = claim_counting(r.prompt_stage(), c.claim_balance, c.splitter, split)
        feedback = rating_stage(responses, r.stage("feedback"), RatingJudge(judge, style=c.judge_style), counting)
    rules = vlfeedback_rules(c.margin, claim_balance=bool(c.claim_balance))
    rated = pair_stage(responses, feedback, r.stage("pairs"), rules, "silkie", rating_score(c.aspect),
                       scoring=c.aspect or "mean rating")
    arms = [Arm("policy", rated, c.train, stats={"judge_usage": feedback.manifest.get("judge_usage")})]
    if c.baseline:
        longest = longest_stage(responses, r.stage("longest/feedback"))
        arms.append(Arm("longest", pair_stage(responses, longest, r.stage("longest/pairs"), rules, "longest"), c.train))
    return arms


METHOD = METHODS.register("silkie", Method(
    "silkie", "VLFeedback / Silkie: a model pool rated by an AI judge on three aspects, DPO (arXiv 2312.10665)",
    SilkieConfig, pairs))
