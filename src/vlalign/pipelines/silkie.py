"""VLFeedback / Silkie end to end: an instruction pool, answers from a pool of models, an AI judge's
ratings, VLFeedback's pairs, DPO. The paper's heuristic baseline, pairs chosen by "the longest answer is
best", is built from the same responses and trained the same way, so the two can be compared.

One rule is added to VLFeedback's pairs, for the prompts `claim_balance` names (the world's descriptions):
a pair whose chosen answer makes fewer claims than the rejected one is dropped, as in RLAIF-V. A judge
that sees a false object more easily than a missing one prefers the answer that names less, and DPO on
such pairs teaches the policy to stop naming what it is unsure of, present or not.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from vlalign.data.prompts import user_prompt_stage, world_prompt_stage
from vlalign.data.records import FeedbackRecord, PromptRecord, ResponseRecord
from vlalign.data.store import RunStore, Stage, run_stage
from vlalign.evaluate.world import EVAL_SCENES, evaluate_world
from vlalign.feedback.claims import ClaimSplitter, make_splitter
from vlalign.feedback.judge import ChatRequest
from vlalign.feedback.pairs import words
from vlalign.feedback.ratings import rating_feedback, rating_score, vlfeedback_rules
from vlalign.feedback.vlfeedback import RatingJudge
from vlalign.models.generate import Decoding, generate, sample_seed
from vlalign.models.load import load
from vlalign.pipelines.stages import pair_stage, preference_examples
from vlalign.progress import log
from vlalign.train.dpo import DPOConfig, train_dpo
from vlalign.train.loop import OptimConfig
from vlalign.world.text import TaskMix

WORLD = "world"


@dataclass
class PoolMember:
    """One model of the response pool: a local model (world:<name>, a directory) or `api:MODEL[@URL]`."""

    model: str
    name: str | None = None
    temperature: float = 0.0
    max_new_tokens: int = 96

    @property
    def label(self) -> str:
        return self.name or (self.model if self.temperature == 0 else f"{self.model}@t{self.temperature}")


def _world_zoo() -> list[PoolMember]:
    return [PoolMember("world:base"), PoolMember("world:base", temperature=1.0), PoolMember("world:small"),
            PoolMember("world:careful"), PoolMember("world:labeler")]


def _instruction_mix() -> dict[str, float]:
    return {"describe": 0.5, "exist": 0.08, "color": 0.08, "count": 0.06, "relation": 0.06, "harmful": 0.12,
            "benign": 0.1}


@dataclass
class SilkieConfig:
    """A Silkie run, as data (`vlalign silkie --config run.yaml`)."""

    policy: str = "world:base"
    prompts: str = WORLD  # "world", or a prompt file (JSON lines or a datasets directory)
    n_prompts: int = 500
    instruction_mix: dict[str, float] = field(default_factory=_instruction_mix)
    pool: list[PoolMember] = field(default_factory=_world_zoo)
    answers_per_prompt: int = 4
    judge: str = "world:judge"  # a judge spec (see vlalign.feedback.judges)
    judge_style: str = "world"  # world (one answer per request) | vlfeedback (all answers, one request)
    margin: float = 0.0  # pairs need mean ratings further apart than this
    aspect: str | None = None  # pair by one aspect (e.g. "Visual Faithfulness") instead of the mean
    # Prompt sources whose pairs must not lose claims: the chosen answer names at least as many as the
    # rejected one, counted by `splitter` (world | sentences | llm, which asks `judge`). [] turns it off.
    claim_balance: list[str] = field(default_factory=lambda: [f"{WORLD}/describe"])
    splitter: str = WORLD
    dpo: DPOConfig = field(default_factory=lambda: DPOConfig(
        beta=0.1, nll_weight=1.0, anchor_weight=1.0, batch_size=16, epochs=2,
        optim=OptimConfig(lr=1e-4, warmup_ratio=0.1)))
    baseline: bool = True  # also train on "longest answer is best" pairs
    eval_scenes: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        self.pool = [PoolMember(**m) if isinstance(m, dict) else m for m in self.pool]
        if not 2 <= self.answers_per_prompt <= len(self.pool):
            raise ValueError(f"answers_per_prompt must be between 2 and the pool size ({len(self.pool)}), "
                             f"got {self.answers_per_prompt}")


def assign_members(prompt_id: str, n_members: int, k: int, seed: int) -> list[int]:
    """Which `k` pool members answer this prompt: a seeded draw, so every prompt gets k different models."""
    key = int.from_bytes(hashlib.sha256(f"{seed}:{prompt_id}".encode()).digest()[:4], "little")
    return sorted(np.random.default_rng([seed, key]).choice(n_members, size=k, replace=False).tolist())


class _Answerer:
    """Answers with one pool member at a time, loading each model once and dropping the previous one."""

    def __init__(self):
        self.current: tuple[str, object, object] | None = None

    def __call__(self, member: PoolMember, images, instructions, seeds) -> list[str]:
        if member.model.startswith("api:"):
            from vlalign.feedback.judges import make_judge

            api = make_judge(member.model)
            replies = api.complete([ChatRequest(q, (im,), max_tokens=member.max_new_tokens,
                                                temperature=member.temperature)
                                    for im, q in zip(images, instructions, strict=True)])
            failed = [r.error for r in replies if not r.ok]
            if failed:
                raise RuntimeError(f"{member.label}: {failed[0]}")
            return [r.text for r in replies]
        if self.current is None or self.current[0] != member.model:
            self.current = (member.model, *load(member.model, dtype="float32"))
        _, model, processor = self.current
        decoding = Decoding(max_new_tokens=member.max_new_tokens, temperature=member.temperature)
        return generate(model, processor, images, instructions, decoding,
                        seeds=seeds if member.temperature > 0 else None)


def pool_stage(store: RunStore, prompts: Stage, out: Stage, config: SilkieConfig) -> Stage:
    """`answers_per_prompt` answers per prompt, each from a different pool member (recorded as `model`)."""
    records = [PromptRecord.from_row(r) for r in prompts.rows()]
    items = sorted(((m, p) for p in records
                    for m in assign_members(p.id, len(config.pool), config.answers_per_prompt, config.seed)),
                   key=lambda item: (item[0], item[1].id))
    answer = _Answerer()

    def process(batch):
        rows = []
        for m in sorted({m for m, _ in batch}):
            member, chosen = config.pool[m], [p for mm, p in batch if mm == m]
            seeds = [sample_seed(config.seed, p.id, m) for p in chosen]
            texts = answer(member, [store.images.get(p.image) for p in chosen], [p.instruction for p in chosen], seeds)
            rows += [ResponseRecord(id=f"{p.id}/{member.label}", prompt_id=p.id, image=p.image,
                                    instruction=p.instruction, response=t, model=member.label,
                                    seed=s if member.temperature > 0 else None).to_row()
                     for p, t, s in zip(chosen, texts, seeds, strict=True)]
        return rows

    run_stage(out, items, process, id_of=lambda item: f"{item[1].id}/{config.pool[item[0]].label}", batch_size=64,
              description="response pool", manifest={"config": {"pool": [asdict(m) for m in config.pool],
                                                                "k": config.answers_per_prompt, "seed": config.seed}})
    return out


def rating_stage(store: RunStore, responses: Stage, out: Stage, judge: RatingJudge,
                 counted: ClaimCounting | None = None) -> Stage:
    """Every response rated by the judge, all answers of one prompt together; the answers to the prompts
    `counted` names also get their claims, for claim balance."""
    by_prompt: dict[str, list[ResponseRecord]] = {}
    for r in map(ResponseRecord.from_row, responses.rows()):
        by_prompt.setdefault(r.prompt_id, []).append(r)

    def process(batch):
        groups = [by_prompt[pid] for pid in batch]
        rated = judge.rate([(rs[0].prompt_id, store.images.get(rs[0].image), rs[0].instruction,
                             [r.response for r in rs]) for rs in groups])
        flat = [r for rs in groups for r in rs]
        claims = counted(flat) if counted is not None else [None] * len(flat)
        verdicts = [v for vs in rated for v in vs]
        return [rating_feedback(r.id, r.prompt_id, v.ratings, v.rationales, judge.name, v.error, c)
                for r, v, c in zip(flat, verdicts, claims, strict=True)]

    config = {"style": judge.style, **({"claims": counted.describe()} if counted is not None else {})}
    run_stage(out, sorted(by_prompt), process, id_of=lambda pid: tuple(r.id for r in by_prompt[pid]), batch_size=32,
              description="judging", manifest={"model": judge.name, "config": config})
    return out


@dataclass
class ClaimCounting:
    """The claims of the answers to prompts from `sources`, split by `splitter`; None for the others."""

    splitter: str
    sources: list[str]
    prompt_ids: set[str]
    split: ClaimSplitter

    @classmethod
    def for_run(cls, config: SilkieConfig, prompts: Stage) -> ClaimCounting | None:
        if not config.claim_balance:
            return None
        ids = {p.id for p in map(PromptRecord.from_row, prompts.rows()) if p.source in config.claim_balance}
        return cls(config.splitter, list(config.claim_balance), ids, make_splitter(config.splitter, config.judge))

    def __call__(self, responses: list[ResponseRecord]) -> list[list[str] | None]:
        picked = [r for r in responses if r.prompt_id in self.prompt_ids]
        found = iter(self.split.split_many([r.response for r in picked], [r.instruction for r in picked],
                                           keys=[r.id for r in picked]))
        return [[c.text for c in next(found)] if r.prompt_id in self.prompt_ids else None for r in responses]

    def describe(self) -> dict:
        return {"splitter": self.splitter, "sources": self.sources}


def longest_stage(responses: Stage, out: Stage) -> Stage:
    """The heuristic baseline's "feedback": an answer's score is its length in words."""
    rows = [FeedbackRecord(id=r["id"], response_id=r["id"], prompt_id=r["prompt_id"], score=float(words(r["response"])),
                           meta={"judge": "longest"}).to_row() for r in responses.rows()]
    run_stage(out, rows, lambda batch: batch, id_of=lambda row: row["id"], batch_size=4096, quiet=True,
              manifest={"config": {"heuristic": "longest answer is best"}})
    return out


def _train_and_eval(store: RunStore, name: str, pairs: Stage, config: SilkieConfig, world: bool) -> dict:
    path = store.root / name
    if (path / "done.json").exists():
        return json.loads((path / "done.json").read_text())
    log(f"Silkie: training {name}")
    policy, processor = load(config.policy, dtype="float32")
    examples = preference_examples(pairs)
    model, history = train_dpo(policy, processor, examples, config.dpo, out=path)
    metrics = evaluate_world(model, processor, n_scenes=config.eval_scenes) if world and config.eval_scenes else {}
    result = {"pairs": len(examples), "metrics": metrics, "final_loss": history[-1]["loss"]}
    (path / "done.json").write_text(json.dumps(result, indent=1))
    return result


def run_silkie(out: str | Path, config: SilkieConfig) -> dict:
    """Prompts -> response pool -> ratings -> pairs -> DPO (and the longest-answer baseline) -> evaluation."""
    start = time.time()
    store = RunStore(out)
    world = config.prompts == WORLD
    if world:
        image_size = load(config.policy, dtype="float32")[1].image_processor.crop_size["height"]
        prompts = world_prompt_stage(store, store.stage("prompts"), config.n_prompts, EVAL_SCENES,
                                     image_size=image_size, mix=TaskMix(config.instruction_mix))
    else:
        prompts = user_prompt_stage(store, store.stage("prompts"), config.prompts, limit=config.n_prompts)
    responses = pool_stage(store, prompts, store.stage("responses"), config)
    from vlalign.feedback.judges import make_judge

    judge = RatingJudge(make_judge(config.judge), style=config.judge_style)
    feedback = rating_stage(store, responses, store.stage("feedback"), judge, ClaimCounting.for_run(config, prompts))
    rules = vlfeedback_rules(config.margin, claim_balance=bool(config.claim_balance))
    pairs = pair_stage(responses, feedback, store.stage("pairs"), rules, "silkie", rating_score(config.aspect),
                       scoring=config.aspect or "mean rating")
    summary = {"silkie": _train_and_eval(store, "silkie", pairs, config, world)}
    if config.baseline:
        longest = longest_stage(responses, store.stage("longest/feedback"))
        baseline_pairs = pair_stage(responses, longest, store.stage("longest/pairs"), rules, "longest")
        summary["silkie_longest"] = _train_and_eval(store, "silkie_longest", baseline_pairs, config, world)
    usage = getattr(judge.judge, "usage", None)
    summary.update(judge_usage=usage.to_dict() if usage is not None else None, seconds=round(time.time() - start, 1),
                   config=json.loads(json.dumps(asdict(config), default=str)))
    (store.root / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
