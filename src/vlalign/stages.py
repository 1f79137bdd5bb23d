"""Stages every method shares: sampling answers, building preference pairs, reading them back to train.

Each is a function from stages (and a config) to a stage in the run store, resumable and with a manifest.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from vlalign import ranks
from vlalign.config import to_dict
from vlalign.data.records import FeedbackRecord, PairRecord, PromptRecord, ResponseRecord, stable_id
from vlalign.data.store import RunStore, Stage, batch_result, find_pair_stages, no_pairs_error, run_stage
from vlalign.feedback.pairs import PairRules, Scored, balance_lengths_by, candidate_pairs
from vlalign.feedback.server_backends import ServerSampler, consecutive, sample_request
from vlalign.models.generate import generate, sample_seed
from vlalign.models.settings import Decoding
from vlalign.train.examples import StagePairs


def sample_stage(store: RunStore, prompts: Stage, out: Stage, model, processor, model_name: str, n: int,
                 decoding: Decoding, seed: int, batch_size: int = 64, sampler: ServerSampler | None = None) -> Stage:
    """n answers per prompt, same model and decoding, one recorded seed each (deconfounded sampling); with
    `sampler`, from an OpenAI-compatible server instead of `model` (see `served_samples`)."""
    items = [(PromptRecord.from_row(r), k) for r in prompts.rows() for k in range(n)]

    def process(batch):
        if sampler is not None:
            return served_samples(store, batch, sampler, model_name, decoding, seed)
        seeds = [sample_seed(seed, p.id, k) for p, k in batch]
        texts = generate(model, processor, [store.images.get(p.image) for p, _ in batch],
                         [p.instruction for p, _ in batch], decoding, seeds=seeds, batch_size=batch_size)
        return [ResponseRecord(id=f"{p.id}/s{k}", prompt_id=p.id, image=p.image, instruction=p.instruction,
                               response=t, model=model_name, seed=s,
                               meta={"decoding": to_dict(decoding), "source": p.source}).to_row()
                for (p, k), s, t in zip(batch, seeds, texts, strict=True)]

    config = {"samples": n, "decoding": to_dict(decoding), **({"sampler": sampler.spec} if sampler else {})}
    run_stage(out, items, process, id_of=lambda item: f"{item[0].id}/s{item[1]}", batch_size=batch_size,
              shard_size=512, description="sampling", manifest={"model": model_name, "seed": seed, "config": config})
    return out


def served_samples(store: RunStore, batch: list[tuple[PromptRecord, int]], sampler: ServerSampler, model_name: str,
                   decoding: Decoding, seed: int) -> list[dict]:
    """A batch's samples from a server: one request per run of consecutive samples of a prompt (n answers),
    sample k drawn with seed `sample_seed(seed, prompt, 0) + k`, which is what it records. A failed request
    fails its samples only (logged, asked again on resume)."""
    by_prompt: dict[str, tuple[PromptRecord, list[int]]] = {}
    for p, k in batch:
        by_prompt.setdefault(p.id, (p, []))[1].append(k)
    runs = [(p, run) for p, ks in by_prompt.values() for run in consecutive(p.id, ks)]
    base = {pid: sample_seed(seed, pid, 0) for pid in by_prompt}
    replies = sampler.judge.complete([sample_request(store.images.get(p.image), p.instruction, decoding, base[p.id],
                                                     run, sampler.model) for p, run in runs])
    position = {(p.id, k): i for i, (p, k) in enumerate(batch)}
    rows, errors = [], {}
    for (p, run), reply in zip(runs, replies, strict=True):
        if not reply.ok:
            errors.update({position[p.id, k]: RuntimeError(reply.error) for k in range(run.first, run.first + run.n)})
            continue
        for k, choice in enumerate(reply.answers(), start=run.first):
            rows.append(ResponseRecord(
                id=f"{p.id}/s{k}", prompt_id=p.id, image=p.image, instruction=p.instruction,
                response=choice.text.strip(), model=model_name, seed=base[p.id] + k,
                meta={"decoding": to_dict(decoding), "source": p.source, "served_as": sampler.served_as}).to_row())
    return batch_result(rows, errors)


def pair_stage(responses: Stage, feedback: Stage, out: Stage, rules: PairRules, method: str = "rlaif_v",
               score: Callable[[FeedbackRecord], float | None] | None = None, scoring: str = "score") -> Stage:
    """Preference pairs by feedback score under `rules`: per prompt first, then (optionally) RLAIF-V's
    length balancing within each prompt source. `score` reads a feedback record's score (its `score` field by
    default) and `scoring` names that choice in the manifest, so a stage built one way is never resumed
    another way; a response without a score is left out. The selection is a pure function of the
    feedback, so a resumed stage makes the same choice and only writes what is missing."""
    score = score or (lambda f: f.score)
    verdicts = list(map(FeedbackRecord.from_row, feedback.rows()))
    scores = {f.response_id: score(f) for f in verdicts}
    # what an answer names: claims checked by a choice (counts, in a labeler's claim dicts) say how many, not what
    claims = {f.response_id: sum(not (isinstance(c, dict) and c.get("answers")) for c in f.details["claims"])
              for f in verdicts if "claims" in f.details}
    by_prompt: dict[str, list[ResponseRecord]] = {}
    for r in map(ResponseRecord.from_row, responses.rows()):
        if scores.get(r.id) is not None:
            by_prompt.setdefault(r.prompt_id, []).append(r)
    candidates = {pid: candidate_pairs([Scored(r.id, r.response, scores[r.id], claims.get(r.id)) for r in rs], rules,
                                   key=pid)
                  for pid, rs in sorted(by_prompt.items())}
    flat = [(pid, c, r) for pid, pairs in candidates.items() for c, r in pairs]
    if rules.length_balance:
        source = {r.prompt_id: r.meta.get("source", "") for rs in by_prompt.values() for r in rs}
        kept, stats = balance_lengths_by([(c.text, r.text) for _, c, r in flat], [source[pid] for pid, _, _ in flat])
        flat = [flat[i] for i in kept]
    else:
        stats = {"kept": len(flat)}
    selected: dict[str, list[tuple[Scored, Scored]]] = {}
    for pid, c, r in flat:
        selected.setdefault(pid, []).append((c, r))
    models = {r.id: r.model for rs in by_prompt.values() for r in rs}

    def process(batch):
        rows = []
        for prompt_id in batch:
            first = by_prompt[prompt_id][0]
            for chosen, rejected in selected.get(prompt_id, []):
                rows.append(PairRecord(
                    id=stable_id(method, chosen.id, rejected.id), prompt_id=prompt_id, image=first.image,
                    instruction=first.instruction, chosen=chosen.text, rejected=rejected.text,
                    chosen_score=chosen.score, rejected_score=rejected.score, method=method,
                    meta={"chosen_id": chosen.id, "rejected_id": rejected.id,
                          "chosen_model": models[chosen.id], "rejected_model": models[rejected.id]}).to_row())
        return rows

    run_stage(out, sorted(by_prompt), process, id_of=lambda pid: pid, batch_size=256, shard_size=4096,
              description="pairs", per_item_output=False, derived_from=(responses, feedback),
              manifest={"config": {"rules": to_dict(rules), "method": method, "scoring": scoring}})
    out.annotate(selection=stats)
    return out


class UsageMeter:
    """A judge's token use while a stage runs, added after every batch to what the stage's manifest recorded
    before (under `key`): the total adds up across resumes, and counts a batch lost to a kill too, since its
    requests were paid for. Judges that count nothing (local models) record nothing. Under a launcher the
    main process records its own use as it goes and every process's once the stage is done (`settle`)."""

    def __init__(self, stage: Stage, judge, key: str = "judge_usage"):
        self.stage, self.key, self.usage = stage, key, getattr(judge, "usage", None)
        self.before = dict(stage.manifest.get(key) or {})
        self.start = self.usage.to_dict() if self.usage is not None else {}

    def record(self) -> None:
        if self.usage is None or not ranks.is_main():
            return
        self.stage.write_manifest(**{self.key: self._total([self._spent()])})

    def settle(self) -> None:
        """Record every process's use (a launched job's), once each has finished its share of the stage."""
        if self.usage is None or not ranks.launched():
            return
        spent = ranks.gather([self._spent()])
        self.stage.annotate(**{self.key: self._total(spent)})

    def _spent(self) -> dict[str, int]:
        return {k: v - self.start[k] for k, v in self.usage.to_dict().items()}

    def _total(self, spent: list[dict[str, int]]) -> dict[str, int]:
        return {k: self.before.get(k, 0) + sum(s[k] for s in spent) for k in spent[0]}


def preference_examples(pairs: Stage) -> StagePairs:
    """The pairs of one stage, ready for `fit_preferences`: read from its shards as training reaches them,
    each image decoded when its batch is."""
    return StagePairs([pairs.dir])


def examples_under(src) -> StagePairs:
    """Every preference pair under a run or stage directory (imported, exported or built), each id once."""
    stages = find_pair_stages(src)
    if not stages:
        raise no_pairs_error(Path(src))
    return StagePairs(stages)
