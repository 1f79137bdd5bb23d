"""MME: yes/no questions in 14 subtasks, two per image, scored by accuracy and accuracy+.

As MME's `eval_tool/calculation.py`: an answer is lower-cased; "yes" or "no" alone is taken as is,
otherwise its first four characters decide ("yes" in them means yes, else "no" in them means no; so
"not sure" reads as no), and anything else is "other", which counts as wrong. acc is the share of right
answers of a subtask, acc+ the share of its images with both questions right; a subtask scores
100 * (acc + acc+), perception sums 10 subtasks (at most 2000), cognition 4 (at most 800).
The reference pairs questions by line order; here they are paired by `image` within a subtask.
This reading is both modes' (`parse` official and robust give the same figures): it already agrees with
the reference on every answer.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from vlalign.evaluate.answers import YES_NO_LABEL, Answer, Field, Issues, check_parse, read_answers
from vlalign.evaluate.intervals import Outcomes, Result, ratio, scored, statistic

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork",
              "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
SUBTASKS = PERCEPTION + COGNITION
CATEGORY = Field("category", "the MME subtask", choices=SUBTASKS)
IMAGE = Field("image", "the image file name; MME asks two questions of each image")


def parse_mme(answer: str) -> str:
    """yes, no or other, by the reference's rule."""
    text = answer.lower()
    if text in ("yes", "no"):
        return text
    head = text[:4]
    return "yes" if "yes" in head else "no" if "no" in head else "other"


def image_counts(category: str, pair: list[Answer]) -> dict[str, int]:
    """One image's counts in its subtask: right answers of its questions, both right, answers read as other."""
    said = [parse_mme(a.answer) for a in pair]
    right = [s == a["label"] for s, a in zip(said, pair, strict=True)]
    return {f"{category}_right": sum(right), f"{category}_questions": len(pair), f"{category}_both": int(all(right)),
            f"{category}_images": 1, f"{category}_other": sum(s == "other" for s in said)}


@statistic("mme")
def mme_statistic(sums, params) -> dict:
    """acc, acc+ and score of every subtask present, perception and cognition (sums of scores), total."""
    per_task: dict = {}
    out: dict = {"perception": 0.0, "cognition": 0.0}
    for name in ("perception", "cognition"):
        for task in params[name]:
            acc = ratio(sums[f"{task}_right"], sums[f"{task}_questions"])
            acc_plus = ratio(sums[f"{task}_both"], sums[f"{task}_images"])
            per_task.update({f"{task}_acc": acc, f"{task}_acc_plus": acc_plus, f"{task}_score": 100 * (acc + acc_plus)})
            out[name] += per_task[f"{task}_score"]
    out["total"] = out["perception"] + out["cognition"]
    return {**out, **per_task}


def mme_result(answers_path: str | Path, skip_bad: bool = False, parse: str = "official") -> Result:
    """MME metrics of an answer file (`category`, `image` and `label` on every line), with intervals over
    images, each subtask resampled apart."""
    check_parse(parse)
    issues = Issues(str(answers_path), skip=skip_bad)
    answers = read_answers(answers_path, [CATEGORY, IMAGE, YES_NO_LABEL], issues)
    groups: dict[tuple[str, str], list[Answer]] = defaultdict(list)
    for a in answers:
        groups[(a["category"], a["image"])].append(a)
    kept: dict[tuple[str, str], list[Answer]] = {}
    for (category, image), rows in groups.items():
        if len(rows) != 2:
            issues(rows[0].line, "not_two_questions",
                   f"{category} image {image!r} has {len(rows)} question(s) (lines "
                   f"{', '.join(str(a.line) for a in rows)}); MME asks exactly two of each image")
            continue
        kept[(category, image)] = rows
    issues.require(list(kept))
    present = {name: [s for s in tasks if any(c == s for c, _ in kept)]
               for name, tasks in (("perception", PERCEPTION), ("cognition", COGNITION))}
    outcomes = Outcomes.from_rows("mme", "image", [(f"{c}/{image}", image_counts(c, rows))
                                                   for (c, image), rows in kept.items()],
                                  [c for c, _ in kept], params=present)
    sums = outcomes.sums()
    tasks = [s for s in SUBTASKS if s in present["perception"] + present["cognition"]]
    counts = {"perception_subtasks": len(present["perception"]), "cognition_subtasks": len(present["cognition"]),
              "other": int(sum(sums[f"{s}_other"] for s in tasks)),
              **{f"{s}_other": int(sums[f"{s}_other"]) for s in tasks}}
    return scored(outcomes, {**counts, "parse": parse, **issues.report()})


def score_mme(answers_path: str | Path, skip_bad: bool = False, parse: str = "official") -> dict:
    """MME metrics of an answer file (see `mme_result`)."""
    return mme_result(answers_path, skip_bad, parse).metrics
