"""VL-RewardBench: how often a judge or labeler prefers the answer people preferred.

Facts from the benchmark's release (vl-rewardbench/VL_RewardBench: `data/data.jsonl`, `inference.py`,
`cal.py`):

- A record has `id`, `image_path` (under the data folder), `query`, two `response`s and `human_ranking`,
  where 0 marks the better response ([1, 0]: the second is better).
- Its group comes from the folder `image_path` names (`images/<source>/...`): vlfeedback and
  wildvision-battle are general, povid, rlhf-v and rlaif-v hallucination, reasoning_tasks reasoning.
- The judge's reply is read for "Answer N is better" (see `vlalign.evaluate.feedback.read_pairwise`);
  the pair counts right unless N is the rejected answer as shown (so any other number counts right), and a
  reply with no verdict is left out of every figure (cal.py's "doesntMatch").
- Accuracy per group, overall accuracy (right / counted over all groups) and the macro average (the mean of
  the group accuracies).

Two modes (`parse`): official, as above; robust counts a pair right only when the feedback names the
preferred answer, and a pair with no verdict (an unreadable reply, a tie, a missing rating) as wrong
(VLMEvalKit's way), so a judge that says nothing scores nothing. Answers are shown in the order lmms-eval
and VLMEvalKit use (`vlalign.evaluate.feedback.swapped`); the prompt says what the benchmark's says in our
words. Intervals resample pairs, each group apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path

from vlalign.evaluate.answers import Answer, Field, Issues, Question, check_parse, open_image, read_records
from vlalign.evaluate.feedback import Choice, Feedback, PairItem, choose, read_pairwise
from vlalign.evaluate.intervals import Outcomes, Result, ratio, scored, statistic

GROUPS = {"vlfeedback": "general", "wildvision-battle": "general", "povid": "hallucination",
          "rlhf-v": "hallucination", "rlaif-v": "hallucination", "reasoning_tasks": "reasoning"}
ORDER = ("general", "hallucination", "reasoning")
FIELDS = (Field("id", "the pair's id"), Field("query", "the question asked about the image"),
          Field("response", "the two answers", (list,)),
          Field("human_ranking", "the people's ranking of the two answers, 0 for the better", (list,)))


def group_of(record: dict) -> str | None:
    """A record's group: its `category`, else the one its image folder names."""
    if record.get("category") in ORDER:
        return record["category"]
    parts = str(record.get("image_path", "")).split("/")
    return GROUPS.get(parts[1]) if len(parts) > 2 else None


def _check(record: dict) -> str | None:
    if len(record["response"]) != 2 or not all(isinstance(r, str) for r in record["response"]):
        return "needs exactly two responses (strings)"
    if sorted(record["human_ranking"]) != [0, 1]:
        return f"human_ranking must be [0, 1] or [1, 0], got {record['human_ranking']}"
    if group_of(record) is None:
        return (f"no group for image_path {record.get('image_path')!r}: VL-RewardBench's folders are "
                f"{', '.join(GROUPS)}; or give a 'category' of {', '.join(ORDER)}")
    return None


def read_pairs(path: str | Path, issues: Issues) -> list[Answer]:
    """VL-RewardBench's records (its data.jsonl, or answer lines that add the feedback's verdict)."""
    records = read_records(path, FIELDS, issues, kind="pairs")
    kept = []
    for r in records:
        problem = _check(r.record)
        if problem:
            issues(r.line, "bad_pair", f"pair {r['id']!r}: {problem}")
        else:
            kept.append(r)
    return kept


def pair_questions(inputs) -> list[Question]:
    """VL-RewardBench's pairs as questions for a judge: the record is what `vl_rewardbench_result` reads."""
    if inputs.data is None:
        raise ValueError("pass --data with VL-RewardBench's data.jsonl (its released format)")
    out = []
    for r in read_pairs(inputs.data, Issues(str(inputs.data))):
        image = r.get("image_path") or r.get("image")
        load = partial(open_image, image, inputs.images, where=f"{inputs.data}, line {r.line}: ") if image else None
        out.append(Question(r["id"], r["query"], load, dict(r.record)))
    return out[:inputs.limit] if inputs.limit else out


def judge_pairs(questions: Sequence[Question], feedback: Feedback) -> list[dict]:
    """Answer records: each pair's record with the feedback's verdict (`choice`, as shown; `swapped`) and,
    for a pairwise judge, its reply as the `answer`."""
    items = [PairItem(str(q.question_id), q.image() if q.image is not None else None, q.prompt,
                      tuple(q.record["response"])) for q in questions]
    choices = choose(feedback, items)
    return [{**q.record, "question_id": q.question_id, "answer": c.reply or "", "choice": c.shown,
             "swapped": c.swapped, "feedback": feedback.name} for q, c in zip(questions, choices, strict=True)]


def _choice(record: dict) -> Choice:
    """The verdict an answer line records, or the one its reply (`answer`) names."""
    from vlalign.evaluate.feedback import swapped

    flip = record.get("swapped")
    flip = swapped(record["response"]) if flip is None else bool(flip)
    if "choice" in record:
        return Choice(record["choice"], flip)
    return Choice(read_pairwise(record.get("answer", "")), flip, record.get("answer"))


@statistic("vl-rewardbench")
def rewardbench_statistic(sums, params) -> dict:
    """Accuracy per group, overall (pooled) and the macro average (mean of the groups present)."""
    out = {f"{g}_accuracy": ratio(sums[f"{g}_right"], sums[f"{g}_counted"]) for g in params["groups"]}
    out["overall_accuracy"] = ratio(sums["right"], sums["counted"])
    out["macro_accuracy"] = sum(out[f"{g}_accuracy"] for g in params["groups"]) / len(params["groups"])
    return out


def vl_rewardbench_result(answers_path: str | Path, skip_bad: bool = False, parse: str = "official") -> Result:
    """VL-RewardBench's figures for answer lines: the pairs with each verdict (`choice` and `swapped`, or
    the judge's reply as `answer`)."""
    official = check_parse(parse) == "official"
    issues = Issues(str(answers_path), skip=skip_bad)
    pairs = read_pairs(answers_path, issues)
    issues.require(pairs)
    rows, strata, unparsed = [], [], 0
    for p in pairs:
        c, group = _choice(p.record), group_of(p.record)
        better = p["human_ranking"].index(0)
        rejected_shown = (1 - better) ^ int(c.swapped)  # the rejected answer's place as shown, 0 or 1
        if c.shown is None:
            unparsed += 1
            if official:
                continue
        right = c.shown is not None and (c.shown != rejected_shown + 1 if official else c.index == better)
        counted = {"counted": 1, "right": int(right), f"{group}_counted": 1, f"{group}_right": int(right)}
        rows.append((str(p["id"]), counted))
        strata.append(group)
    if not rows:
        raise ValueError(f"{answers_path}: no pair has a verdict ({unparsed} replies name no better answer)")
    groups = [g for g in ORDER if g in strata]
    outcomes = Outcomes.from_rows("vl-rewardbench", "pair", rows, strata, params={"groups": groups},
                                  binary={"overall_accuracy": ("right", None),
                                          **{f"{g}_accuracy": (f"{g}_right", f"{g}_counted") for g in groups}})
    names = {p.get("feedback") for p in (q.record for q in pairs)} - {None}
    notes = {"pairs": len(pairs), "counted": len(rows), "unparsed": unparsed,
             **({"feedback": names.pop()} if len(names) == 1 else {}), "parse": parse, **issues.report()}
    return scored(outcomes, notes)
