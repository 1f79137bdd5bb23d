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

import hashlib
from dataclasses import dataclass, field

from vlalign import ranks
from vlalign.methods.base import Arm, Method, Prompts, Round, RunConfig
from vlalign.models.settings import Runtime
from vlalign.plugins import METHODS, RATING_STYLES, SPLITTERS
from vlalign.train.settings import OptimConfig, TrainConfig


@dataclass(frozen=True)
class PoolMember:
    """One model of the response pool: a local model (a directory, world:<name>) or `api:MODEL[@URL]`."""

    SHORTHAND = "model"

    model: str  # a model directory, world:<name>, or api:MODEL[@URL]
    name: str | None = None  # how its answers are labelled (default: the model, with its temperature)
    temperature: float = 0.0  # 0: greedy
    max_new_tokens: int = 512  # longest answer
    runtime: Runtime | None = None  # how a local member loads (null: as the policy)

    @property
    def label(self) -> str:
        return self.name or (self.model if self.temperature == 0 else f"{self.model}@t{self.temperature}")


@dataclass(frozen=True)
class SilkieConfig(RunConfig):
    """VLFeedback / Silkie: a response pool rated by an AI judge on three aspects, pairs, DPO."""

    prompts: Prompts = field(default_factory=lambda: Prompts(per_round=10000))  # the instructions
    pool: list[PoolMember] = field(default_factory=list)  # the models that answer (at least answers_per_prompt)
    answers_per_prompt: int = 4  # answers per instruction, each from a different pool member (drawn per prompt)
    judge: str | None = None  # the rating judge: api:MODEL[@URL] (GPT-4V in the paper) or a model directory
    judge_runtime: Runtime | None = None  # how a local judge loads (null: as the policy)
    judge_style: str = "vlfeedback"  # vlfeedback (all answers in one request) or a plugin's per-answer style (world)
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


def assign_members(prompt_id: str, n_members: int, k: int, seed: int) -> list[int]:
    """Which `k` pool members answer this prompt: a seeded draw, so every prompt gets k different models."""
    import numpy as np  # here: the CLI imports every method to list its command, and needs no numpy for that

    key = int.from_bytes(hashlib.sha256(f"{seed}:{prompt_id}".encode()).digest()[:4], "little")
    return sorted(np.random.default_rng([seed, key]).choice(n_members, size=k, replace=False).tolist())


def _answer(r: Round, member: PoolMember, images, instructions, seeds) -> list[str | Exception]:
    """One pool member's answers: through its API (a failed request is that answer's error, so it costs only
    its record), or generated by the local model (loaded once, and the previous member's model freed, so
    one pool model is in memory at a time)."""
    from vlalign.feedback.judge import ChatRequest, JudgeError
    from vlalign.models.generate import generate
    from vlalign.models.settings import Decoding

    if member.model.startswith("api:"):
        replies = r.judge(member.model).complete([ChatRequest(q, (im,), max_tokens=member.max_new_tokens,
                                                              temperature=member.temperature)
                                                  for im, q in zip(images, instructions, strict=True)])
        return [x.text if x.ok else JudgeError(f"{member.label}: {x.error}") for x in replies]
    model, processor = r.load(member.model, member.runtime)
    decoding = Decoding(max_new_tokens=member.max_new_tokens, temperature=member.temperature)
    return generate(model, processor, images, instructions, decoding, seeds=seeds if member.temperature > 0 else None)


def pool_stage(r: Round, out):
    """`answers_per_prompt` answers per prompt, each from a different pool member (recorded as `model`)."""
    from vlalign.config import to_dict
    from vlalign.data.records import PromptRecord, ResponseRecord
    from vlalign.data.store import batch_result, run_stage
    from vlalign.models.generate import sample_seed

    c: SilkieConfig = r.config
    records = [PromptRecord.from_row(row) for row in r.prompts.rows()]
    items = sorted(((m, p) for p in records for m in assign_members(p.id, len(c.pool), c.answers_per_prompt, c.seed)),
                   key=lambda item: (item[0], item[1].id))
    current: list[str] = []

    def process(batch):
        rows, errors = [], {}
        for m in sorted({m for m, _ in batch}):
            member, where = c.pool[m], [i for i, (mm, _) in enumerate(batch) if mm == m]
            chosen = [batch[i][1] for i in where]
            if current and current[0] != member.model:
                r.drop(current.pop())
            current[:] = [member.model]
            seeds = [sample_seed(c.seed, p.id, m) for p in chosen]
            texts = _answer(r, member, [r.store.images.get(p.image) for p in chosen], [p.instruction for p in chosen],
                            seeds)
            errors.update({i: t for i, t in zip(where, texts, strict=True) if isinstance(t, Exception)})
            rows += [ResponseRecord(id=f"{p.id}/{member.label}", prompt_id=p.id, image=p.image,
                                    instruction=p.instruction, response=t, model=member.label,
                                    seed=s if member.temperature > 0 else None).to_row()
                     for p, t, s in zip(chosen, texts, seeds, strict=True) if not isinstance(t, Exception)]
        return batch_result(rows, errors)

    run_stage(out, items, process, id_of=lambda item: f"{item[1].id}/{c.pool[item[0]].label}", batch_size=64,
              description="response pool",
              manifest={"config": {"pool": [{k: v for k, v in to_dict(m).items() if k != "runtime"} for m in c.pool],
                                   "k": c.answers_per_prompt, "seed": c.seed}})
    if current:
        r.drop(current.pop())
    return out


@dataclass
class ClaimCounting:
    """The claims of the answers to prompts from `sources`, split by `splitter`; None for the others, and the
    error for an answer the splitter could give no claims for."""

    splitter: str
    sources: list[str]
    prompt_ids: set[str]
    split: object

    def __call__(self, responses) -> list[list[str] | None | Exception]:
        from vlalign.feedback.claims import split_each

        picked = [x for x in responses if x.prompt_id in self.prompt_ids]
        found = iter(split_each(self.split, [x.response for x in picked], [x.instruction for x in picked],
                                keys=[x.id for x in picked]))
        return [None if x.prompt_id not in self.prompt_ids else o if isinstance(o := next(found), Exception)
                else [cl.text for cl in o if not cl.answers] for x in responses]  # counts say how many, not what

    def describe(self) -> dict:
        return {"splitter": self.splitter, "sources": self.sources}


def claim_counting(r: Round) -> ClaimCounting | None:
    from vlalign.data.records import PromptRecord
    from vlalign.feedback.splitters import make_splitter, needs_judge

    c: SilkieConfig = r.config
    if not c.claim_balance:
        return None
    ids = {p.id for p in map(PromptRecord.from_row, r.prompts.rows()) if p.source in c.claim_balance}
    judge = r.judge(c.judge, c.judge_runtime) if needs_judge(c.splitter) else None
    return ClaimCounting(c.splitter, list(c.claim_balance), ids, make_splitter(c.splitter, judge))


def _judged(group, verdicts, judge_name: str, claims) -> list[dict] | Exception:
    """One prompt's feedback rows, or why the prompt fails as a whole: its judge request failed (a resume
    asks again), or an answer's claims could not be counted. Ratings a reply did not give are kept as
    missing (a local judge would give the same reply again, and the prompt's other answers still pair)."""
    from vlalign.feedback.judge import JudgeError
    from vlalign.feedback.ratings import rating_feedback

    failed = next((v for v in verdicts if v.failed), None)
    if failed is not None:
        return JudgeError(f"prompt {group[0].prompt_id}: the judge's request failed ({failed.error}); a resume "
                          f"asks again")
    uncounted = next((cl for cl in claims if isinstance(cl, Exception)), None)
    if uncounted is not None:
        return uncounted
    return [rating_feedback(x.id, x.prompt_id, v.ratings, v.rationales, judge_name, v.error, cl)
            for x, v, cl in zip(group, verdicts, claims, strict=True)]


def rating_stage(r: Round, responses, out, judge, counted: ClaimCounting | None):
    """Every response rated by the judge, all answers of one prompt together; the answers to the prompts
    `counted` names also get their claims, for claim balance. The judge's token use adds up in the stage's
    manifest across resumes; answers kept without a usable rating are counted there, with why."""
    from vlalign.data.records import ResponseRecord
    from vlalign.data.store import batch_result, run_stage
    from vlalign.stages import UsageMeter

    by_prompt: dict[str, list] = {}
    for x in map(ResponseRecord.from_row, responses.rows()):
        by_prompt.setdefault(x.prompt_id, []).append(x)
    meter = UsageMeter(out, judge.judge)

    def process(batch):
        groups = [by_prompt[pid] for pid in batch]
        rated = judge.rate([(rs[0].prompt_id, r.store.images.get(rs[0].image), rs[0].instruction,
                             [x.response for x in rs]) for rs in groups])
        asked = [x for rs, vs in zip(groups, rated, strict=True) if not any(v.failed for v in vs) for x in rs]
        claims = dict(zip([x.id for x in asked], counted(asked) if counted is not None else [None] * len(asked),
                          strict=True))
        meter.record()
        outcomes = [_judged(rs, vs, judge.name, [claims.get(x.id) for x in rs])
                    for rs, vs in zip(groups, rated, strict=True)]
        return batch_result([row for o in outcomes if not isinstance(o, Exception) for row in o],
                            {i: o for i, o in enumerate(outcomes) if isinstance(o, Exception)})

    config = {"style": judge.style, **({"claims": counted.describe()} if counted is not None else {})}
    run_stage(out, sorted(by_prompt), process, id_of=lambda pid: tuple(x.id for x in by_prompt[pid]), batch_size=32,
              description="judging", manifest={"model": judge.name, "config": config})
    meter.settle()
    ranks.on_main(lambda: record_missing_ratings(out))
    return out


def record_missing_ratings(out) -> dict:
    """Count the answers kept without a usable rating in the manifest (`missing_ratings`, by aspect), log each
    once in the error log with the reason, and say so in one line."""
    from collections import Counter

    from vlalign.data.records import FeedbackRecord
    from vlalign.data.store import ERRORS
    from vlalign.feedback.ratings import MissingRating
    from vlalign.progress import warn

    missing = [f for f in map(FeedbackRecord.from_row, out.rows()) if f.details.get("missing")]
    logged = {e["id"] for e in out.errors() if isinstance(e.get("id"), str)}
    for f in missing:
        if f.id not in logged:
            out.log_error(f.id, MissingRating(f"{f.meta.get('error')}; the answer is kept without a score, so it "
                                              f"makes no pair"))
    summary = {"answers": len(missing), "by_aspect": dict(Counter(a for f in missing for a in f.details["missing"])),
               "log": str(out.dir / ERRORS)}
    out.write_manifest(missing_ratings=summary)
    if missing:
        warn(f"judging: {len(missing)} answer(s) have no usable rating for {', '.join(summary['by_aspect'])}; they "
             f"are kept without a score and make no pair (each reason is in {out.dir / ERRORS})")
    return summary


def longest_stage(responses, out):
    """The heuristic baseline's "feedback": an answer's score is its length in words."""
    from vlalign.data.records import FeedbackRecord
    from vlalign.data.store import run_stage
    from vlalign.feedback.pairs import words

    rows = [FeedbackRecord(id=x["id"], response_id=x["id"], prompt_id=x["prompt_id"], score=float(words(x["response"])),
                           meta={"judge": "longest"}).to_row() for x in responses.rows()]
    run_stage(out, rows, lambda batch: batch, id_of=lambda row: row["id"], batch_size=4096, quiet=True,
              manifest={"config": {"heuristic": "longest answer is best"}})
    return out


def pairs(r: Round) -> list[Arm]:
    """Pool -> ratings -> pairs (and the longest-answer baseline's pairs, from the same answers)."""
    from vlalign.feedback.ratings import rating_score, vlfeedback_rules
    from vlalign.feedback.vlfeedback import RatingJudge
    from vlalign.stages import pair_stage

    c: SilkieConfig = r.config
    if r.given_pairs:
        return [Arm("policy", r.given_pairs, c.train)]
    responses = pool_stage(r, r.stage("responses"))
    judge = RatingJudge(r.judge(c.judge, c.judge_runtime), style=c.judge_style)
    feedback = rating_stage(r, responses, r.stage("feedback"), judge, claim_counting(r))
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
