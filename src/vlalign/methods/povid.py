"""POVID (arXiv 2402.11411): ground-truth answers preferred; injected hallucinations, and the policy's own
answers on diffusion-noised images, dispreferred.

Round 1 is POVID's first stage: DPO on (reference answer, the same with hallucinations injected). Round
2 is its second: the same pairs under POVID's two-term loss, whose second term disprefers what the policy
says about a noised image (`vlalign.train.povid`). No judge of responses is needed: the reference answer
of each prompt is the ground truth (the world's exact description, or each record's `reference`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vlalign.methods.base import Arm, Method, Prompts, Round, RunConfig
from vlalign.plugins import METHODS, VOCABULARIES
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


def _injector(r: Round):
    from vlalign.feedback.injection import LLMInjector, RuleInjector, fit_cooccurrence

    c: POVIDConfig = r.config
    if c.injector == "llm":
        return LLMInjector(r.judge(c.judge), edits=c.edits)
    entry = VOCABULARIES.get(c.vocabulary)
    vocab = entry.vocabulary()
    texts = (entry.training_texts(c.cooccurrence_texts) if entry.training_texts is not None
             else [p["reference"] for p in r.prompts.rows() if p.get("reference")][:c.cooccurrence_texts])
    return RuleInjector(vocab, fit_cooccurrence(texts, vocab), c.edits, c.seed, c.add_objects)


def injection_stage(r: Round, out):
    """(reference, injected) pairs; a record without a reference, or whose answer nothing could be changed
    in, is logged and skipped."""
    from vlalign.data.records import PairRecord, PromptRecord, stable_id
    from vlalign.data.store import run_stage
    from vlalign.feedback.injection import LLMInjector

    c: POVIDConfig = r.config
    records = [PromptRecord.from_row(row) for row in r.prompts.rows()]
    injector = _injector(r)

    def process(batch):
        for p in batch:
            if not p.reference:
                raise ValueError(f"prompt {p.id} has no reference answer; POVID prefers the ground truth, so "
                                 f"give every record a 'reference' (or 'answer') field")
        if isinstance(injector, LLMInjector):
            injections = injector.inject_many([p.instruction for p in batch], [p.reference for p in batch],
                                              [p.id for p in batch])
        else:
            injections = [injector.inject(p.reference, p.id) for p in batch]
        rows = []
        for p, inj in zip(batch, injections, strict=True):
            if inj is None or inj.text.strip() == p.reference.strip():
                raise ValueError(f"prompt {p.id}: no hallucination could be injected into its reference")
            rows.append(PairRecord(id=stable_id("povid", p.id), prompt_id=p.id, image=p.image,
                                   instruction=p.instruction, chosen=p.reference, rejected=inj.text,
                                   method="povid", meta={"edits": inj.edits}).to_row())
        return rows

    run_stage(out, records, process, id_of=lambda p: stable_id("povid", p.id), batch_size=64,
              description="injection", manifest={"config": {"injector": c.injector, "edits": c.edits,
                                                            "add_objects": c.add_objects, "judge": c.judge,
                                                            "seed": c.seed}})
    return out


def _stage2(c: POVIDConfig):
    def fit(model, processor, examples, config, out, gradient_checkpointing):
        from vlalign.train.povid import train_povid_stage2

        return train_povid_stage2(model, processor, examples, config, c.noise, out=out,
                                  gradient_checkpointing=gradient_checkpointing)
    return fit


def pairs(r: Round) -> list[Arm]:
    """The same injected pairs both rounds (`same_prompts`), under stage 1's DPO and then stage 2's loss."""
    c: POVIDConfig = r.config
    stage = r.given_pairs or injection_stage(r, r.store.stage("pairs"))
    if r.k == 1:
        return [Arm("policy", stage, c.train)]
    return [Arm("policy", stage, c.stage2, fit=_stage2(c))]


METHOD = METHODS.register("povid", Method(
    "povid", "ground truth over injected hallucinations, then over the policy's noisy-image answers "
             "(arXiv 2402.11411)", POVIDConfig, pairs, same_prompts=True))
