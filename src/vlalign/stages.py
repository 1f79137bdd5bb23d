"""Stages every method shares: sampling answers, building preference pairs, reading them back to train.

Each is a function from stages (and a config) to a stage in the run store, resumable and with a manifest.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from vlalign.config import to_dict
from vlalign.data.records import FeedbackRecord, PairRecord, PromptRecord, ResponseRecord, stable_id
from vlalign.data.store import RunStore, Stage, find_pair_stages, no_pairs_error, run_stage
from vlalign.feedback.pairs import PairRules, Scored, balance_lengths_by, candidate_pairs
from vlalign.models.generate import generate, sample_seed
from vlalign.models.settings import Decoding
from vlalign.train.preference import PreferenceExample


def sample_stage(store: RunStore, prompts: Stage, out: Stage, model, processor, model_name: str, n: int,
                 decoding: Decoding, seed: int, batch_size: int = 64) -> Stage:
    """n answers per prompt, same model and decoding, one recorded seed each (deconfounded sampling)."""
    items = [(PromptRecord.from_row(r), k) for r in prompts.rows() for k in range(n)]

    def process(batch):
        seeds = [sample_seed(seed, p.id, k) for p, k in batch]
        texts = generate(model, processor, [store.images.get(p.image) for p, _ in batch],
                         [p.instruction for p, _ in batch], decoding, seeds=seeds, batch_size=batch_size)
        return [ResponseRecord(id=f"{p.id}/s{k}", prompt_id=p.id, image=p.image, instruction=p.instruction,
                               response=t, model=model_name, seed=s,
                               meta={"decoding": to_dict(decoding), "source": p.source}).to_row()
                for (p, k), s, t in zip(batch, seeds, texts, strict=True)]

    run_stage(out, items, process, id_of=lambda item: f"{item[0].id}/s{item[1]}", batch_size=batch_size,
              shard_size=512, description="sampling",
              manifest={"model": model_name, "seed": seed, "config": {"samples": n, "decoding": to_dict(decoding)}})
    return out


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
    claims = {f.response_id: len(f.details["claims"]) for f in verdicts if "claims" in f.details}
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
              description="pairs", per_item_output=False,
              manifest={"config": {"rules": to_dict(rules), "method": method, "scoring": scoring}})
    out.write_manifest(selection=stats)
    return out


class UsageMeter:
    """A judge's token use while a stage runs, added after every batch to what the stage's manifest recorded
    before (under `key`): the total adds up across resumes, and counts a batch lost to a kill too, since its
    requests were paid for. Judges that count nothing (local models) record nothing."""

    def __init__(self, stage: Stage, judge, key: str = "judge_usage"):
        self.stage, self.key, self.usage = stage, key, getattr(judge, "usage", None)
        self.before = dict(stage.manifest.get(key) or {})
        self.start = self.usage.to_dict() if self.usage is not None else {}

    def record(self) -> None:
        if self.usage is None:
            return
        now = self.usage.to_dict()
        self.stage.write_manifest(**{self.key: {k: self.before.get(k, 0) + v - self.start[k] for k, v in now.items()}})


def preference_examples(pairs: Stage) -> list[PreferenceExample]:
    """The pairs of one stage, with their images, ready for `train_dpo`."""
    return [PreferenceExample(p.id, pairs.images.get(p.image), p.instruction, p.chosen, p.rejected)
            for p in map(PairRecord.from_row, pairs.rows())]


def examples_under(src) -> list[PreferenceExample]:
    """Every preference pair under a run or stage directory (imported, exported or built), each id once."""
    stages = find_pair_stages(src)
    if not stages:
        raise no_pairs_error(Path(src))
    seen: dict[str, PreferenceExample] = {}
    for d in stages:
        for e in preference_examples(Stage(d)):
            seen.setdefault(e.id, e)
    return list(seen.values())
