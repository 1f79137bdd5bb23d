"""Preference pairs: chosen against rejected answers by a feedback score under the method's rules, and the
pairs read back for training (from this run's stages, or from any run or stage directory).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from vlalign.config import to_dict
from vlalign.data.records import FeedbackRecord, PairRecord, ResponseRecord, stable_id
from vlalign.data.store import Stage, find_pair_stages, no_pairs_error, run_stage
from vlalign.feedback.pairs import PairRules, Scored, balance_lengths_by, candidate_pairs, words

if TYPE_CHECKING:
    from vlalign.train.examples import StagePairs


def pair_stage(responses: Stage, feedback: Stage, out: Stage, rules: PairRules, method: str = "rlaif_v",
               score: Callable[[FeedbackRecord], float | None] | None = None, scoring: str = "score") -> Stage:
    """Preference pairs by feedback score under `rules`: per prompt first, then (optionally) RLAIF-V's
    length balancing within each prompt source. `score` reads a feedback record's score (its `score` field by
    default) and `scoring` names that choice in the manifest, so a stage built one way is never resumed
    another way; a response without a score is left out. The selection is a pure function of the
    feedback, so a resumed stage makes the same choice and only writes what is missing."""
    score = score or (lambda f: f.score)
    verdicts = list(map(FeedbackRecord.from_row, feedback.rows()))
    scores = {f.response_id: s for f in verdicts if (s := score(f)) is not None}  # an answer without one is left out
    # what an answer names: claims checked by a choice (counts, in a labeler's claim dicts) say how many, not what
    claims = {f.response_id: sum(not (isinstance(c, dict) and c.get("answers")) for c in f.details["claims"])
              for f in verdicts if "claims" in f.details}
    by_prompt: dict[str, list[ResponseRecord]] = {}
    for r in map(ResponseRecord.from_row, responses.rows()):
        if r.id in scores:
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
    for pid, chosen_answer, rejected_answer in flat:
        selected.setdefault(pid, []).append((chosen_answer, rejected_answer))
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


def longest_stage(responses: Stage, out: Stage) -> Stage:
    """The heuristic "feedback" of VLFeedback's baseline: an answer's score is its length in words."""
    rows = [FeedbackRecord(id=x["id"], response_id=x["id"], prompt_id=x["prompt_id"], score=float(words(x["response"])),
                           meta={"judge": "longest"}).to_row() for x in responses.rows()]
    run_stage(out, rows, lambda batch: batch, id_of=lambda row: row["id"], batch_size=4096, quiet=True,
              manifest={"config": {"heuristic": "longest answer is best"}})
    return out


def preference_examples(pairs: Stage) -> StagePairs:
    """The pairs of one stage, ready for training: read from its shards as training reaches them, each image
    decoded when its batch is."""
    from vlalign.train.examples import StagePairs  # torch: kept out of the config check

    return StagePairs([pairs.dir])


def examples_under(src) -> StagePairs:
    """Every preference pair under a run or stage directory (imported, exported or built), each id once."""
    from vlalign.train.examples import StagePairs

    stages = find_pair_stages(src)
    if not stages:
        raise no_pairs_error(Path(src))
    return StagePairs(stages)
