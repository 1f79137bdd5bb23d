"""Rewards of sampled answers and the groups they make (online RL).

    rewards/<component>   each scoring model's verdicts on every answer, a stage per scoring pass, the model
                          held for that stage only: a labeler's claims (`label_stage`, one image encoding for
                          all the claims of a prompt's answers), a judge's ratings (`rating_stage`, a group's
                          answers in one request), a DPO model's implicit reward, any chat judge's number
    groups                per prompt, the answers every component scored: their weighted reward, their
                          advantages (`vlalign.feedback.groups`), and the groups that train
    logps                 per answer, the per-token log-probs the loss reads: the KL reference's, and the
                          sampling policy's when a rollout trains over several steps; one shared-prefix
                          forward of a group's rows through each model

Every stage reads the answers and their images only, never the prompt's ground truth: on the world the
scene graph grades, and a reward that read it would grade with the answer key.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from vlalign.config import to_dict
from vlalign.data.records import FeedbackRecord, ResponseRecord
from vlalign.data.store import Stage, batch_result, run_stage
from vlalign.feedback.groups import GroupRules, advantages, equal
from vlalign.feedback.judge import ChatRequest, JudgeError
from vlalign.feedback.rewards import (
    CLAIM_KINDS,
    SELF,
    RewardTerm,
    claim_values,
    judged_value,
    length_value,
    rating_value,
)
from vlalign.feedback.vlfeedback import RatingJudge
from vlalign.stages.label import held_labeler, held_splitter, label_stage
from vlalign.stages.ratings import UsageMeter, rating_stage
from vlalign.stages.round import Round
from vlalign.train.settings import PolicyGradientConfig

if TYPE_CHECKING:
    from vlalign.feedback.judge import Judge
    from vlalign.models.settings import Runtime
    from vlalign.models.types import Model, Processor

Values = dict[str, Mapping[str, float | None]]  # response id -> the values its scoring pass gives (by kind)


def by_prompt(responses: Stage) -> dict[str, list[ResponseRecord]]:
    """The answers of each prompt, in sampling order."""
    out: dict[str, list[ResponseRecord]] = {}
    for x in map(ResponseRecord.from_row, responses.rows()):
        out.setdefault(x.prompt_id, []).append(x)
    return out


@contextmanager
def chat_of(r: Round, spec: str, runtime: Runtime | None) -> Iterator[Judge]:
    """A chat backend held while the block runs: the policy itself (`self`), a server or a local model."""
    if spec == SELF:
        from vlalign.feedback.judge_local import ModelJudge

        yield ModelJudge(r.policy, r.processor, name=r.policy_name)
    else:
        with r.models.chat(spec, runtime) as judge:
            yield judge


def _claims(r: Round, responses: Stage, out: Stage, term: RewardTerm) -> Values:
    options = term.parsed()
    assert term.model is not None  # RewardTerm refuses a scoring kind without one
    with held_labeler(r, term.model, term.runtime) as labeler, \
            held_splitter(r, options.splitter, options.judge, options.judge_runtime) as split:
        label_stage(r.store, responses, out, labeler, split, r.config.batch_size)
    return {f["response_id"]: claim_values(FeedbackRecord.from_row(f).details["claims"]) for f in out.rows()}


def _rating(r: Round, responses: Stage, out: Stage, term: RewardTerm) -> Values:
    options = term.parsed()
    assert term.model is not None
    with chat_of(r, term.model, term.runtime) as judge:
        rating_stage(responses, out, RatingJudge(judge, style=options.style), None)
    return {f["response_id"]: {"rating": rating_value(FeedbackRecord.from_row(f).details["ratings"], options.aspect)}
            for f in out.rows()}


def implicit_stage(responses: Stage, out: Stage, model: Model, reference: Model, processor: Processor,
                   beta: float, per_token: bool, batch_size: int, names: tuple[str, str]) -> Stage:
    """beta * (log pi(answer) - log pi_ref(answer)) of every answer, a prompt's answers scored after one
    forward of it under each model (`score_responses`)."""
    from vlalign.models.scoring import score_responses  # torch: kept out of the config check

    groups = by_prompt(responses)
    images = responses.images

    def process(batch: list[str]) -> list[dict]:
        answers = [x for pid in batch for x in groups[pid]]
        pictures = [images.get(x.image) for x in answers]
        args = (pictures, [x.instruction for x in answers], [x.response for x in answers])
        mine, theirs = (score_responses(m, processor, *args, batch_size=batch_size) for m in (model, reference))
        return [FeedbackRecord(id=x.id, response_id=x.id, prompt_id=x.prompt_id,
                               score=beta * (a.sum_logp - b.sum_logp) / (max(a.n_tokens, 1) if per_token else 1),
                               details={"logp": a.sum_logp, "ref_logp": b.sum_logp, "tokens": a.n_tokens},
                               meta={"model": names[0], "reference": names[1]}).to_row()
                for x, a, b in zip(answers, mine, theirs, strict=True)]

    run_stage(out, sorted(groups), process, id_of=lambda pid: tuple(x.id for x in groups[pid]), batch_size=8,
              description="implicit reward", manifest={"model": names[0], "config": {
                  "reference": names[1], "beta": beta, "per_token": per_token}})
    return out


def _implicit(r: Round, responses: Stage, out: Stage, term: RewardTerm) -> Values:
    options = term.parsed()
    assert term.model is not None
    with r.models.using(term.model, term.runtime) as (model, processor), \
            r.models.using(options.reference, term.runtime) as (reference, _):
        implicit_stage(responses, out, model, reference, processor, options.beta, options.per_token,
                       r.config.batch_size, (term.model, options.reference))
    return {f["response_id"]: {"implicit": f["score"]} for f in out.rows()}


def judge_stage(responses: Stage, out: Stage, judge: Judge, term: RewardTerm) -> Stage:
    """Every answer put to a chat judge with its image, under the component's prompt, and the number its
    reply states; a failed request or a reply without a usable number fails the answer alone (logged; a
    resume asks again). The judge's token use adds up in the manifest."""
    options = term.parsed()
    items = [ResponseRecord.from_row(x) for x in responses.rows()]
    meter = UsageMeter(out, judge)
    images = responses.images

    def process(batch: list[ResponseRecord]) -> list[dict]:
        prompts = [options.prompt.replace("{instruction}", x.instruction).replace("{answer}", x.response)
                   for x in batch]
        replies = judge.complete([ChatRequest(p, (images.get(x.image),), options.system, options.max_tokens, id=x.id)
                                  for p, x in zip(prompts, batch, strict=True)])
        meter.record()
        rows: list[dict] = []
        errors: dict[int, BaseException] = {}
        for i, (x, reply) in enumerate(zip(batch, replies, strict=True)):
            try:
                if not reply.ok or reply.text is None:
                    raise JudgeError(f"answer {x.id}: the judge's request failed ({reply.error})")
                value = judged_value(reply.text, options, x.id)
            except JudgeError as e:
                errors[i] = e
                continue
            rows.append(FeedbackRecord(id=x.id, response_id=x.id, prompt_id=x.prompt_id, score=value,
                                       details={"reply": reply.text}, meta={"judge": judge.name}).to_row())
        return batch_result(rows, errors)

    run_stage(out, items, process, id_of=lambda x: x.id, batch_size=32, description="judging",
              manifest={"model": judge.name, "config": to_dict(options)})
    meter.settle()
    return out


def _judge(r: Round, responses: Stage, out: Stage, term: RewardTerm) -> Values:
    assert term.model is not None
    with chat_of(r, term.model, term.runtime) as judge:
        judge_stage(responses, out, judge, term)
    return {f["response_id"]: {"judge": f["score"]} for f in out.rows()}


SCORERS: dict[str, Callable[[Round, Stage, Stage, RewardTerm], Values]] = {
    **dict.fromkeys(CLAIM_KINDS, _claims), "rating": _rating, "implicit": _implicit, "judge": _judge}


def reward_values(r: Round, responses: Stage, terms: Sequence[RewardTerm]) -> dict[str, dict[str, float]]:
    """response id -> {component: value} for the answers every component scored. Components that share a
    scoring pass (claim kinds of one labeler and splitter) read one stage, `rewards/<first one's name>`;
    the models of each pass are held for its stage only."""
    passes: dict[str, list[RewardTerm]] = {}
    for term in terms:
        passes.setdefault(term.scorer(), []).append(term)
    answers = [x for xs in by_prompt(responses).values() for x in xs]
    values: dict[str, dict[str, float | None]] = {x.id: {} for x in answers}
    for members in passes.values():
        first = members[0]
        if first.kind == "length":
            scored: Values = {x.id: {"length": length_value(x.response, first.parsed())} for x in answers}
        else:
            scored = SCORERS[first.kind](r, responses, r.stage(f"rewards/{first.label}"), first)
        for x in answers:
            got = scored.get(x.id, {})
            values[x.id].update({t.label: got.get(t.kind) for t in members})
    labels = [t.label for t in terms]
    return {i: v for i, v in values.items() if all(v.get(label) is not None for label in labels)}  # type: ignore[misc]


def group_stage(responses: Stage, values: dict[str, dict[str, float]], terms: Sequence[RewardTerm], out: Stage,
                objective: PolicyGradientConfig, rules: GroupRules, details: Stage | None = None) -> Stage:
    """Per prompt, the answers every component scored, with their rewards (the components' weighted sum)
    and advantages; a group with fewer than `rules.min_answers` such answers is left out, and with
    `rules.drop_equal` one whose answers all earned the same reward. The advantages are computed over all
    the groups with enough answers (a batch's standard deviation counts the equal ones too, as TRL's).
    `details` is the claims stage, whose claims the group viewer shows. A pure function of its inputs: a
    resumed stage makes the same groups."""
    weights = {t.label: t.weight for t in terms}
    groups = by_prompt(responses)
    scored = {pid: [x for x in xs if x.id in values] for pid, xs in sorted(groups.items())}
    small = [pid for pid, xs in scored.items() if len(xs) < rules.min_answers]
    kept = {pid: xs for pid, xs in scored.items() if len(xs) >= rules.min_answers}
    rewards = {pid: [sum(w * values[x.id][k] for k, w in weights.items()) for x in xs] for pid, xs in kept.items()}
    advantage = dict(zip(kept, advantages(list(rewards.values()), objective), strict=True)) if kept else {}
    flat = [r for rs in rewards.values() for r in rs]
    same = [pid for pid, rs in rewards.items() if equal(rs)]
    train = [pid for pid in kept if not (rules.drop_equal and pid in same)] or list(kept)  # a rollout without
    # signal trains its groups at zero advantage (TRL's way: only a KL term moves), so the run goes on
    claims = ({f["response_id"]: FeedbackRecord.from_row(f).details.get("claims", []) for f in details.rows()}
              if details is not None else {})

    def process(batch: list[str]) -> list[dict]:
        rows = []
        for pid in batch:
            xs = kept[pid]
            rows.append({"id": pid, "prompt_id": pid, "image": xs[0].image, "instruction": xs[0].instruction,
                         "responses": [x.id for x in xs], "answers": [x.response for x in xs],
                         "rewards": rewards[pid], "advantages": advantage[pid],
                         "details": json.dumps([{"values": {k: values[x.id][k] for k in weights},
                                                  "claims": [[c["claim"], bool(c["rejected"])] for c in claims.get(x.id, [])]}
                                                 for x in xs])})
        return rows

    run_stage(out, train, process, id_of=lambda pid: pid, batch_size=256, shard_size=4096, description="groups",
              manifest={"config": {"rewards": [to_dict(t) for t in terms], "objective": to_dict(objective),
                                   "rules": to_dict(rules)}})
    answered = [x for xs in groups.values() for x in xs]
    means = {label: _mean([values[x.id][label] for x in answered if x.id in values]) for label in weights}
    out.annotate(selection={"prompts": len(groups), "groups": len(train), "equal": len(same), "too_few": len(small),
                            "unscored": len(answered) - len(values), "reward": _mean(flat), "components": means,
                            "words": _mean([len(x.response.split()) for x in answered])})
    return out


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def logps_stage(groups: Stage, out: Stage, models: dict[str, Model], processor: Processor, batch_size: int,
                names: dict[str, str], temperature: float = 1.0) -> Stage:
    """Per answer, its per-token log-probs under each of `models` (by key: `ref`, `old`), at the sampling
    `temperature`: a batch's groups collated once into shared-prefix rows and forwarded through each model
    (no gradient)."""
    from vlalign.train.groups import group_logps  # torch: kept out of the config check

    rows = groups.rows()
    images = groups.images

    def process(batch: list[dict]) -> list[dict]:
        per_model = {key: group_logps(m, processor, [(images.get(g["image"]), g["instruction"], g["answers"])
                                                     for g in batch], temperature) for key, m in models.items()}
        ids = [i for g in batch for i in g["responses"]]
        return [{"id": i, **{key: values[k] for key, values in per_model.items()}} for k, i in enumerate(ids)]

    run_stage(out, rows, process, id_of=lambda g: tuple(g["responses"]), batch_size=batch_size, shard_size=2048,
              description="log-probs", manifest={"model": names, "config": {"columns": sorted(models),
                                                                             "temperature": temperature}})
    return out


def group_examples(groups: Stage, logps: Stage | None) -> list:
    """The groups as training reads them, each answer's log-probs (where the loss reads them) attached."""
    from functools import partial

    from vlalign.train.groups import GroupExample  # torch: kept out of the config check

    per_answer = {row["id"]: row for row in logps.rows()} if logps is not None else {}
    images = groups.images
    out = []
    for g in groups.rows():
        found = [per_answer.get(i) for i in g["responses"]]

        def column(key: str, found: list = found) -> tuple | None:
            if not found or any(f is None or f.get(key) is None for f in found):
                return None
            return tuple(tuple(f[key]) for f in found)

        out.append(GroupExample(g["id"], partial(images.get, g["image"]), g["instruction"], tuple(g["answers"]),
                                tuple(g["advantages"]), column("old"), column("ref")))
    return out
