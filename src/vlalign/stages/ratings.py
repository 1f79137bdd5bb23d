"""Judge ratings (VLFeedback): every answer of a prompt rated by an AI judge on helpfulness, visual
faithfulness and ethics, with rationales; the judge's token use counted across resumes; answers the judge
gave no usable rating kept without a score, counted and logged. With claim balance, the answers of chosen
prompt sources also get their claims counted, so a pair's chosen answer claims no less than its rejected one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vlalign import ranks
from vlalign.data import shortfalls
from vlalign.data.records import FeedbackRecord, PromptRecord, ResponseRecord
from vlalign.data.store import ERRORS, Stage, batch_result, run_stage
from vlalign.feedback.claims import ClaimSplitter, split_each
from vlalign.feedback.judge import JudgeError
from vlalign.feedback.ratings import MissingRating, rating_feedback
from vlalign.feedback.vlfeedback import RatingJudge


class UsageMeter:
    """A judge's token use while a stage runs, added after every batch to what the stage's manifest recorded
    before (under `key`): the total adds up across resumes, and counts a batch lost to a kill too, since its
    requests were paid for. Judges that count nothing (local models) record nothing. Under a launcher the
    main process records its own use as it goes and every process's once the stage is done (`settle`)."""

    def __init__(self, stage: Stage, judge: Any, key: str = "judge_usage"):
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
        assert self.usage is not None
        return {k: v - self.start[k] for k, v in self.usage.to_dict().items()}

    def _total(self, spent: list[dict[str, int]]) -> dict[str, int]:
        return {k: self.before.get(k, 0) + sum(s[k] for s in spent) for k in spent[0]}


@dataclass
class ClaimCounting:
    """The claims of the answers to prompts from `sources`, split by `splitter`; None for the others, and the
    error for an answer the splitter could give no claims for."""

    splitter: str
    sources: list[str]
    prompt_ids: set[str]
    split: ClaimSplitter

    def __call__(self, responses: Sequence[ResponseRecord]) -> list[list[str] | None | Exception]:
        picked = [x for x in responses if x.prompt_id in self.prompt_ids]
        found = iter(split_each(self.split, [x.response for x in picked], [x.instruction for x in picked],
                                keys=[x.id for x in picked]))
        return [None if x.prompt_id not in self.prompt_ids else o if isinstance(o := next(found), Exception)
                else [cl.text for cl in o if not cl.answers] for x in responses]  # counts say how many, not what

    def describe(self) -> dict:
        return {"splitter": self.splitter, "sources": self.sources}


def claim_counting(prompts: Stage, sources: list[str], splitter: str, split: ClaimSplitter) -> ClaimCounting | None:
    """Counting of the claims of the answers to prompts of `sources` (None when there are none to count)."""
    if not sources:
        return None
    ids = {p.id for p in map(PromptRecord.from_row, prompts.rows()) if p.source in sources}
    return ClaimCounting(splitter, list(sources), ids, split)


def _judged(group: list[ResponseRecord], verdicts: list, judge_name: str, claims: list) -> list[dict] | Exception:
    """One prompt's feedback rows, or why the prompt fails as a whole: its judge request failed (a resume
    asks again), or an answer's claims could not be counted. Ratings a reply did not give are kept as
    missing (a local judge would give the same reply again, and the prompt's other answers still pair)."""
    failed = next((v for v in verdicts if v.failed), None)
    if failed is not None:
        return JudgeError(f"prompt {group[0].prompt_id}: the judge's request failed ({failed.error}); a resume "
                          f"asks again")
    uncounted = next((cl for cl in claims if isinstance(cl, Exception)), None)
    if uncounted is not None:
        return uncounted
    return [rating_feedback(x.id, x.prompt_id, v.ratings, v.rationales, judge_name, v.error, cl)
            for x, v, cl in zip(group, verdicts, claims, strict=True)]


def rating_stage(responses: Stage, out: Stage, judge: RatingJudge, counted: ClaimCounting | None) -> Stage:
    """Every response rated by the judge, all answers of one prompt together; the answers to the prompts
    `counted` names also get their claims, for claim balance. The judge's token use adds up in the stage's
    manifest across resumes; answers kept without a usable rating are counted there, with why."""
    by_prompt: dict[str, list[ResponseRecord]] = {}
    for x in map(ResponseRecord.from_row, responses.rows()):
        by_prompt.setdefault(x.prompt_id, []).append(x)
    meter = UsageMeter(out, judge.judge)
    images = responses.images

    def process(batch: list[str]) -> list[dict]:
        groups = [by_prompt[pid] for pid in batch]
        rated = judge.rate([(rs[0].prompt_id, images.get(rs[0].image), rs[0].instruction,
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


def record_missing_ratings(out: Stage, what: str = "judging") -> dict:
    """Count the answers of a feedback stage kept without a usable rating in its manifest (`missing_ratings`, by
    aspect), log each once in its error log with the reason (the record's `error`), and say so in one line that
    starts with `what`."""
    missing = [f for f in map(FeedbackRecord.from_row, out.rows()) if f.details.get("missing")]
    logged = {e["id"] for e in out.errors() if isinstance(e.get("id"), str)}
    for f in missing:
        if f.id not in logged:
            reason = f.meta.get("error") or f"no {', '.join(f.details['missing'])} rating given"
            out.log_error(f.id, MissingRating(f"{reason}; the answer is kept without a score, so it makes no pair"))
    by_aspect = dict(Counter(a for f in missing for a in f.details["missing"]))
    summary = {"answers": len(missing), "by_aspect": by_aspect, "log": str(out.dir / ERRORS)}
    out.write_manifest(missing_ratings=summary)
    shortfalls.note(out, "ratings", len(missing),
                    f"{what}: {len(missing)} answer(s) have no usable rating for {', '.join(by_aspect)}; they "
                    f"are kept without a score and make no pair (each reason is in {out.dir / ERRORS})")
    return summary
