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


def subtask_scores(rows: list[Answer]) -> dict[str, float]:
    """acc, acc+ and score (both in percent, summed) of one subtask's questions, paired by image."""
    by_image: dict[str, list[Answer]] = defaultdict(list)
    for a in rows:
        by_image[a["image"]].append(a)
    right = [parse_mme(a.answer) == a["label"] for a in rows]
    both = sum(all(parse_mme(a.answer) == a["label"] for a in pair) for pair in by_image.values())
    acc, acc_plus = sum(right) / len(rows), both / len(by_image)
    return {"acc": acc, "acc_plus": acc_plus, "score": 100 * (acc + acc_plus),
            "other": sum(parse_mme(a.answer) == "other" for a in rows)}


def score_mme(answers_path: str | Path, skip_bad: bool = False, parse: str = "official") -> dict:
    """MME metrics of an answer file (`category`, `image` and `label` on every line)."""
    check_parse(parse)
    issues = Issues(str(answers_path), skip=skip_bad)
    answers = read_answers(answers_path, [CATEGORY, IMAGE, YES_NO_LABEL], issues)
    groups: dict[tuple[str, str], list[Answer]] = defaultdict(list)
    for a in answers:
        groups[(a["category"], a["image"])].append(a)
    kept: list[Answer] = []
    for (category, image), rows in groups.items():
        if len(rows) != 2:
            issues(rows[0].line, "not_two_questions",
                   f"{category} image {image!r} has {len(rows)} question(s) (lines "
                   f"{', '.join(str(a.line) for a in rows)}); MME asks exactly two of each image")
            continue
        kept += rows
    issues.require(kept)
    per_task: dict = {}
    out: dict = {"perception": 0.0, "cognition": 0.0}
    for name, subtasks in (("perception", PERCEPTION), ("cognition", COGNITION)):
        present = [s for s in subtasks if any(a["category"] == s for a in kept)]
        for s in present:
            m = subtask_scores([a for a in kept if a["category"] == s])
            per_task.update({f"{s}_{k}": v for k, v in m.items()})
            out[name] += m["score"]
        out[f"{name}_subtasks"] = len(present)
    out["total"] = out["perception"] + out["cognition"]
    out["other"] = sum(per_task.get(f"{s}_other", 0) for s in SUBTASKS)
    return {**out, **per_task, "parse": parse, **issues.report()}
