"""Online RL from AI feedback: a group-relative policy gradient (GRPO, Dr. GRPO, RLOO, DAPO as settings of one
objective) with models' verdicts as rewards.

Each round is one rollout: the policy samples `samples` answers to each of the round's fresh prompts
(one prefill per prompt), every reward component's model scores them (a labeler's claims, a judge's
ratings, a DPO model's implicit reward, any chat judge's number, the length), the answers' weighted
rewards make each group's advantages, and the policy trains on the groups (each prompt forwarded once
for its n answers), its optimizer's state going on from the round before. The next round samples from
the result. The KL term's reference is the run's starting policy (or `reference`), whose per-token
log-probs a stage computes before training, with the sampling policy's when a rollout trains over
several steps (the clipped ratio's denominator); it waits in host memory between rollouts rather than being
loaded again for each (`keep_reference`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from vlalign.feedback.groups import GroupRules
from vlalign.feedback.rewards import CLAIM_KINDS, RewardTerm
from vlalign.methods.base import Arm, Method
from vlalign.models.settings import Decoding
from vlalign.plugins import METHODS
from vlalign.stages.rewards import group_examples, group_stage, logps_stage, reward_values
from vlalign.stages.round import Round
from vlalign.stages.sample import sampled
from vlalign.stages.settings import Prompts, SampledConfig
from vlalign.train.objectives import GroupPolicyGradient
from vlalign.train.settings import OptimConfig, PolicyGradientConfig, TrainConfig


@dataclass(frozen=True)
class GRPOConfig(SampledConfig):
    """Online RL: a rollout per round (n answers per prompt), rewards from models, a group policy gradient."""

    prompts: Prompts = field(default_factory=lambda: Prompts(per_round=64))  # fresh prompts each rollout
    rounds: int = 100  # rollouts: each samples with the policy the one before trained
    samples: int = 8  # answers per prompt: the group size
    decoding: Decoding = field(default_factory=lambda: Decoding(max_new_tokens=512, temperature=1.0))  # sampling of the answers
    rewards: list[RewardTerm] = field(default_factory=list)  # the reward's weighted components, e.g. - {kind: rejected_claims, model: world:labeler, options: {splitter: world}}
    objective: PolicyGradientConfig = field(default_factory=PolicyGradientConfig)  # the policy gradient's variant: baseline, scale, aggregate, clipping, KL
    groups: GroupRules = field(default_factory=GroupRules)  # which groups train
    reference: str | None = None  # the KL term's reference (null: the run's starting policy)
    keep_reference: bool = True  # keep the reference in host memory between rollouts (off the accelerator while the policy trains) instead of loading it again for each
    eval_every: int = 10  # evaluate after every k-th rollout (and the last)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(  # groups per optimizer step (batch_size); epochs > 1 reuses a rollout (the clipped ratio then applies)
        batch_size=64, epochs=1, optim=OptimConfig(lr=1e-6, warmup_ratio=0.0, schedule="constant", log_every=1)))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.decoding.temperature <= 0:
            raise ValueError("a group's answers must differ: sample them (decoding.temperature above 0)")
        if self.pairs_from is not None:
            raise ValueError("GRPO samples and scores its own answers every round: pairs_from does not apply")
        repeated = [name for name, n in Counter(t.label for t in self.rewards).items() if n > 1]
        if repeated:
            raise ValueError(f"reward components {repeated} appear more than once: give each a name")

    def problems(self) -> list[str]:
        out = super().problems()
        if not self.rewards:
            out.append("rewards: empty; name at least one component, e.g. - {kind: rejected_claims, model: "
                       "world:labeler, options: {splitter: world}}")
        return out

    def backends(self) -> list[str]:
        return [*super().backends(), *(m for t in self.rewards for m in t.backends()),
                *([self.reference] if self.reference and self.objective.kl else [])]


def logps(r: Round[GRPOConfig], groups, several_steps: bool):
    """The log-prob stage the loss reads: the KL reference's (when the loss has a KL term) and the sampling
    policy's (when the rollout trains over several steps); None when it reads neither."""
    c = r.config
    reference = c.reference or c.policy
    assert reference is not None  # the config's problems() refuses a run without a policy
    if not c.objective.kl and not several_steps:
        return None
    from contextlib import nullcontext

    same = r.k == 1 and reference == c.policy  # round 1 starts from the reference itself
    held = nullcontext((r.policy, r.processor)) if same or not c.objective.kl else \
        r.models.using(reference, park=c.keep_reference)
    with held as (ref, _):
        models = {**({"ref": ref} if c.objective.kl else {}), **({"old": r.policy} if several_steps else {})}
        names = {**({"ref": reference} if c.objective.kl else {}), **({"old": r.policy_name} if several_steps else {})}
        return logps_stage(groups, r.stage("logps"), models, r.processor, max(1, c.batch_size // c.samples), names,
                           c.decoding.temperature or 1.0)


def pairs(r: Round[GRPOConfig]) -> list[Arm]:
    """Sample, score, group; then one arm trains the groups under the policy gradient."""
    c = r.config
    responses = sampled(r, r.stage("responses"))
    values = reward_values(r, responses, c.rewards)
    claims = next((t for t in c.rewards if t.kind in CLAIM_KINDS), None)
    details = r.stage(f"rewards/{claims.label}") if claims is not None else None
    groups = group_stage(responses, values, c.rewards, r.stage("groups"), c.objective, c.groups, details)
    several = c.train.steps_for(groups.counts()["rows"]) > 1
    examples = group_examples(groups, logps(r, groups, several))
    objective = GroupPolicyGradient(c.objective, c.decoding.max_new_tokens, c.decoding.temperature or 1.0)
    return [Arm("policy", examples, c.train, objective, stats={"rollout": groups.manifest.get("selection")},
                carries=True)]


METHOD = METHODS.register("grpo", Method(
    "grpo", "online RL: a group-relative policy gradient (GRPO, Dr. GRPO, RLOO, DAPO) with models' verdicts "
            "as rewards (arXiv 2402.03300)", GRPOConfig, pairs))
