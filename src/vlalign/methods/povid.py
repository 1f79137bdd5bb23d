"""POVID (arXiv 2402.11411): ground-truth answers preferred; injected hallucinations, and the policy's own
answers on diffusion-noised images, dispreferred.

Round 1 is POVID's first stage: DPO on (reference answer, the same with hallucinations injected). Round
2 is its second: the same pairs under POVID's two-term loss, whose second term disprefers what the policy
says about a noised image (`vlalign.train.povid`). No judge of responses is needed: the reference answer
of each prompt is the ground truth (the world's exact description, or each record's `reference`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vlalign.data.store import Stage
from vlalign.feedback.injection import LLMInjector
from vlalign.feedback.judge import decoded
from vlalign.methods.base import Arm, Method
from vlalign.models.settings import ChatDecoding
from vlalign.plugins import METHODS, VOCABULARIES
from vlalign.stages.injection import injection_stage, rule_injector
from vlalign.stages.round import Round
from vlalign.stages.settings import Prompts, RunConfig
from vlalign.train.objectives import POVIDNoise
from vlalign.train.settings import NoiseConfig, OptimConfig, TrainConfig


@dataclass(frozen=True)
class POVIDConfig(RunConfig):
    """POVID: round 1 trains on injected hallucinations, round 2 adds the policy's noisy-image answers."""

    prompts: Prompts = field(default_factory=lambda: Prompts(per_round=17000))  # records with a reference answer
    rounds: int = 2  # 1: stage 1 only; 2: stage 1, then stage 2 (the noisy-image term)
    injector: str = "rules"  # rules (co-occurrence statistics) or llm (asks `judge`; GPT-4V in the paper)
    vocabulary: str = "english"  # the rule injector's words: english (COCO's objects) or a plugin's (world)
    cooccurrence_texts: int = 5000  # training answers the co-occurrence statistics count (from the vocabulary's own texts where it has them)
    judge: str | None = None  # the llm injector's chat model: api:MODEL[@URL] or a model directory
    judge_decoding: ChatDecoding = field(default_factory=ChatDecoding)  # the llm injector's reply length and temperature
    edits: int = 2  # hallucinations injected per answer
    add_objects: bool = True  # object hallucinations are added sentences or replaced objects (false: replaced only)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(  # stage 1: DPO on the injected pairs
        loss={"sigmoid": 1.0}, beta=0.1, batch_size=8, epochs=1, optim=OptimConfig(lr=5e-7)))
    stage2: TrainConfig = field(default_factory=lambda: TrainConfig(  # stage 2 (its loss is POVID's own)
        beta=0.1, batch_size=8, epochs=1, optim=OptimConfig(lr=5e-7)))
    noise: NoiseConfig = field(default_factory=NoiseConfig)  # stage 2's noisy-image term

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rounds not in (1, 2):
            raise ValueError(f"POVID has two stages: rounds must be 1 or 2, got {self.rounds}")
        if self.injector not in ("rules", "llm"):
            raise ValueError(f"unknown injector {self.injector!r}; choose rules or llm")
        if self.vocabulary not in VOCABULARIES:
            raise ValueError(f"unknown vocabulary {self.vocabulary!r}; known: {', '.join(VOCABULARIES.names())}")

    def problems(self) -> list[str]:
        out = super().problems()
        if self.injector == "llm" and not self.judge:
            out.append("judge: injector llm asks a chat model; set judge (api:gpt-4o or a model directory)")
        return out

    def backends(self) -> list[str]:
        return [*super().backends(), *([self.judge] if self.injector == "llm" and self.judge else [])]


def injected_pairs(r: Round[POVIDConfig]) -> Stage | str:
    """The (reference, injected) pairs both stages train on: made once, from the first round's prompts."""
    c = r.config
    if r.given_pairs:
        return r.given_pairs
    prompts, out = r.prompt_stage(), r.store.stage("pairs")
    settings = {"injector": c.injector, "edits": c.edits, "add_objects": c.add_objects, "judge": c.judge,
                "seed": c.seed}
    if c.injector == "llm":
        assert c.judge is not None  # the config's problems() refuses an llm injector without one
        with r.models.chat(c.judge) as judge:
            return injection_stage(prompts, out, LLMInjector(decoded(judge, c.judge_decoding), edits=c.edits), settings)
    injector = rule_injector(prompts, c.vocabulary, c.cooccurrence_texts, c.edits, c.seed, c.add_objects)
    return injection_stage(prompts, out, injector, settings)


def pairs(r: Round[POVIDConfig]) -> list[Arm]:
    """The same injected pairs both rounds (`same_prompts`), under stage 1's DPO and then stage 2's loss."""
    c = r.config
    stage = injected_pairs(r)
    if r.k == 1:
        return [Arm("policy", stage, c.train)]
    return [Arm("policy", stage, c.stage2, POVIDNoise(c.noise))]


METHOD = METHODS.register("povid", Method(
    "povid", "ground truth over injected hallucinations, then over the policy's noisy-image answers "
             "(arXiv 2402.11411)", POVIDConfig, pairs, same_prompts=True))
