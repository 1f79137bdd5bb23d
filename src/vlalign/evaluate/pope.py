"""POPE: yes/no object probing; metrics treat "yes" as positive.

Two readings of an answer (`parse`):
- official (default), the rule of POPE's `evaluate.py` and LLaVA's `eval_pope.py`: keep the text before
  the first ".", delete commas, split on single spaces; the answer is "no" exactly when one of the pieces
  is `No`, `not` or `no` (case-sensitive), and "yes" otherwise, empty answers included. So "NO",
  "Not really.", "No!", "(no)" and "No\nThere" read as yes.
- robust: the first sentence, lower-cased, with commas as spaces; a word "no" or "not" in it means no.
  It reads what a person would, and is what the world's own POPE uses.

Also scores answer files per split and builds the three splits from any object annotations."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from pathlib import Path

from vlalign.english import article
from vlalign.evaluate.answers import (
    YES_NO_LABEL,
    Answer,
    Field,
    Issues,
    Layout,
    check_parse,
    files_in,
    read_answers,
    read_records,
    validate,
)
from vlalign.evaluate.intervals import Outcomes, Result, ratio, scored, statistic

_NEG = re.compile(r"\b(no|not)\b")


def parse_yes_no(answer: str) -> bool:
    """True for yes, by the robust reading: a "no" or "not" word in the first sentence, in any case, means no."""
    first = answer.strip().split(".")[0].lower().replace(",", " ")
    return _NEG.search(first) is None


def parse_yes_no_official(answer: str) -> bool:
    """True for yes, by the official reading (see the module notes)."""
    pieces = answer.split(".")[0].replace(",", "").split(" ")
    return not any(p in _OFFICIAL_NO for p in pieces)


_OFFICIAL_NO = frozenset({"No", "not", "no"})
PARSERS = {"official": parse_yes_no_official, "robust": parse_yes_no}


def pope_rates(tp, fp, fn, tn) -> dict:
    """Accuracy, precision, recall, F1 and yes-ratio (the share of *predicted* yes) from the four counts
    (numbers, or arrays of bootstrap replicates)."""
    n = tp + fp + fn + tn
    precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
    return {"accuracy": ratio(tp + tn, n), "precision": precision, "recall": recall,
            "f1": ratio(2 * precision * recall, precision + recall), "yes_ratio": ratio(tp + fp, n)}


def yes_no_counts(predicted_yes: bool, label_yes: bool) -> dict[str, int]:
    """One question's contribution to tp, fp, fn and tn."""
    return {"tp": int(predicted_yes and label_yes), "fp": int(predicted_yes and not label_yes),
            "fn": int(label_yes and not predicted_yes), "tn": int(not predicted_yes and not label_yes)}


def pope_metrics(predicted_yes: Sequence[bool], label_yes: Sequence[bool]) -> dict[str, float]:
    """Accuracy, precision, recall, F1 and yes-ratio (the share of *predicted* yes)."""
    if len(predicted_yes) != len(label_yes):
        raise ValueError(f"{len(predicted_yes)} predictions but {len(label_yes)} labels")
    if not label_yes:
        raise ValueError("POPE needs at least one question")
    counts = [yes_no_counts(p, t) for p, t in zip(predicted_yes, label_yes, strict=True)]
    return {k: float(v) for k, v in pope_rates(*(sum(c[k] for c in counts) for k in _COUNTS)).items()}


_COUNTS = ("tp", "fp", "fn", "tn")
POPE_SPLITS = ("random", "popular", "adversarial")
UNSPLIT = "all"  # the one split of a question file that names none
METRICS = ("accuracy", "precision", "recall", "f1", "yes_ratio")
CATEGORY = Field("category", "the POPE split of the question", choices=(*POPE_SPLITS, UNSPLIT), lower=True)
# LLaVA's answer files write the answer as `text`, beside the `prompt` (a question file's `text` is the question)
LAYOUT = Layout(answer=(("text", "prompt"),))


@statistic("pope")
def pope_statistic(sums, params) -> dict:
    """Every split's figures (`random_f1`, ...) and their mean over the splits present (`f1`, ...)."""
    out: dict = {}
    for split in params["splits"]:
        out.update({f"{split}_{k}": v for k, v in pope_rates(*(sums[f"{split}_{c}"] for c in _COUNTS)).items()})
    for k in METRICS:
        out[k] = sum(out[f"{s}_{k}"] for s in params["splits"]) / len(params["splits"])
    return out


def pope_outcomes(answers: Sequence[Answer], parse: str = "official") -> Outcomes:
    """One row per question: its split's tp/fp/fn/tn, whether it is right, its split (the stratum)."""
    read = PARSERS[check_parse(parse)]
    splits = [s for s in (*POPE_SPLITS, UNSPLIT) if any(a["category"] == s for a in answers)]
    rows = []
    for a in answers:
        counts = yes_no_counts(read(a.answer), a["label"] == "yes")
        split = a["category"]
        rows.append((a.question_id, {**{f"{split}_{k}": v for k, v in counts.items()}, f"{split}_n": 1,
                                     f"{split}_correct": counts["tp"] + counts["tn"],
                                     "correct": counts["tp"] + counts["tn"]}))
    binary = {"accuracy": ("correct", None), **{f"{s}_accuracy": (f"{s}_correct", f"{s}_n") for s in splits}}
    return Outcomes.from_rows("pope", "question", rows, [a["category"] for a in answers],
                              params={"splits": splits}, binary=binary)


def score_pope_answers(answers: Sequence[Answer], parse: str = "official") -> Result:
    """Metrics per split (`random_f1`, ...) and their mean over the splits present (`f1`, ...), with intervals."""
    outcomes = pope_outcomes(answers, parse)
    splits = list(outcomes.params["splits"])
    sizes = {f"{s}_n": sum(a["category"] == s for a in answers) for s in splits}
    return scored(outcomes, {**sizes, "splits": splits, "parse": parse})


def pope_result(answers_path: str | Path, skip_bad: bool = False, parse: str = "official",
                annotations: Sequence[str | Path] = ()) -> Result:
    """POPE metrics of an answer file. Each line carries `label` (yes/no) and `category` (the split), or
    `annotations` hold POPE's question files that give them (see `attach_questions`); a line with no split
    anywhere belongs to the split its file name names, else to one split `all`."""
    issues = Issues(str(answers_path), skip=skip_bad)
    answers = read_answers(answers_path, [], issues, LAYOUT)
    if annotations:
        answers = attach_questions(answers, annotations, issues)
    named = split_in_name(Path(answers_path).name)
    for a in answers:
        a.record.setdefault("category", named or UNSPLIT)
    answers = validate(answers, [YES_NO_LABEL, CATEGORY], issues)
    issues.require(answers)
    result = score_pope_answers(answers, parse)
    return Result({**result.metrics, **issues.report()}, result.outcomes)


def score_pope(answers_path: str | Path, skip_bad: bool = False, parse: str = "official",
               annotations: Sequence[str | Path] = ()) -> dict:
    """POPE metrics of an answer file (see `pope_result`)."""
    return pope_result(answers_path, skip_bad, parse, annotations).metrics


def split_in_name(name: str) -> str | None:
    """The POPE split a file name names (`coco_pope_adversarial.json`), or None."""
    return next((s for s in POPE_SPLITS if s in name), None)


def question_files(paths: Sequence[str | Path]) -> list[Path]:
    """POPE question files: the files given, and the `.json` / `.jsonl` files of the folders given."""
    return files_in(paths, ("*.json", "*.jsonl"), "POPE question files")


def attach_questions(answers: Sequence[Answer], paths: Sequence[str | Path], issues: Issues) -> list[Answer]:
    """Give answers the split and label their own lines lack, from POPE's question files, as the official
    scripts pair them. A file whose records carry `category` (LLaVA's llava_pope_test.jsonl) names each
    question id's split. Labels come from the files that have them, one split per file (its `category` or
    its name): matched by question id when every answer of the split has its id there, else by position,
    the split's answers in answer-file order against the file's questions in order (what POPE's
    evaluate.py and LLaVA's eval_pope.py do, as LLaVA numbers its questions anew)."""
    by_id: dict = {}
    labelled: dict[str, list[dict]] = {}
    for path in question_files(paths):
        records = [r.record for r in read_records(path, [], kind="questions", layout=Layout(number_rows=True))]
        for r in records:
            if "category" in r:
                by_id[r["question_id"]] = r
        with_label = [r for r in records if "label" in r]
        if with_label:
            split = with_label[0].get("category") or split_in_name(path.name) or UNSPLIT
            labelled.setdefault(str(split).lower(), []).extend(with_label)
    out = [Answer(a.line, {**({"category": by_id[a.question_id]["category"]} if a.question_id in by_id else {}),
                           **a.record}) for a in answers]
    if len(labelled) == 1:
        only = next(iter(labelled))
        for a in out:
            a.record.setdefault("category", only)
    for split, questions in labelled.items():
        mine = [a for a in out if str(a.get("category", "")).lower() == split and "label" not in a.record]
        ids = {q["question_id"]: q for q in questions}
        if all(a.question_id in ids for a in mine) and len(ids) == len(questions):
            for a in mine:
                a.record["label"] = ids[a.question_id]["label"]
        elif len(mine) != len(questions):
            for a in mine:
                issues(a.line, "no_label", f"{split} has {len(mine)} answers without a label but its question "
                                           f"file has {len(questions)} questions, and the ids differ; pass the "
                                           f"question file these answers were made from")
        else:
            for a, q in zip(mine, questions, strict=True):
                a.record["label"] = q["label"]
    return out


def _question(template: str, obj: str) -> str:
    return template.format(f"{article(obj)} {obj}")


def build_pope(objects: dict[str, Sequence[str]], n_images: int | None = 500, per_image: int = 3,
               seed: int = 0, template: str = "Is there {} in the image?") -> dict[str, list[dict]]:
    """POPE's three splits from any object annotations (`objects`: image -> objects in annotation order).

    The official sampling (POPE's `main.py` / `utils.pope`): keep images with at least `per_image`
    objects and draw `n_images` of them; the first `per_image` objects of an image are its positives;
    after each positive comes one negative that is neither in the image nor asked before: a uniform draw
    from all objects of the drawn images (random), the most frequent one in the drawn images (popular),
    or the one that co-occurs most often with that positive (adversarial); popular and adversarial fall
    back to a uniform draw when their list runs out. Frequencies and co-occurrence count the drawn images
    only, as the reference does. The reference's template puts "a" before every object; it is "an" here
    before a vowel, as in the question files POPE published."""
    rng = random.Random(seed)
    unique = {img: list(dict.fromkeys(objs)) for img, objs in objects.items()}
    eligible = [img for img, objs in unique.items() if len(objs) >= per_image]
    if n_images is not None:
        if len(eligible) < n_images:
            raise ValueError(f"only {len(eligible)} images have at least {per_image} objects; POPE needs "
                             f"{n_images} (pass a smaller number of images)")
        eligible = rng.sample(eligible, n_images)
    freq: dict[str, int] = {}
    pairs: dict[str, dict[str, int]] = {}
    for img in eligible:
        for o in unique[img]:
            freq[o] = freq.get(o, 0) + 1
            row = pairs.setdefault(o, {})
            for other in unique[img]:
                if other != o:
                    row[other] = row.get(other, 0) + 1
    by_freq = [o for o, _ in sorted(freq.items(), key=lambda kv: kv[1], reverse=True)]
    co = {o: [p for p, _ in sorted(row.items(), key=lambda kv: kv[1], reverse=True)] for o, row in pairs.items()}
    everything = list(freq)
    splits: dict[str, list[dict]] = {}
    for split in POPE_SPLITS:
        questions: list[dict] = []
        for img in eligible:
            present = set(unique[img])
            asked: list[str] = []
            for pos in unique[img][:per_image]:
                asked.append(pos)
                ranked = [] if split == "random" else by_freq if split == "popular" else co.get(pos, [])
                neg = next((o for o in ranked if o not in asked and o not in present), None)
                if neg is None:
                    if not set(everything) - present - set(asked):
                        raise ValueError(f"image {img!r}: no object left to ask about as a negative")
                    neg = rng.choice(everything)
                    while neg in asked or neg in present:
                        neg = rng.choice(everything)
                asked.append(neg)
            questions += [{"question_id": len(questions) + i + 1, "image": img, "text": _question(template, obj),
                           "object": obj, "label": "yes" if i % 2 == 0 else "no", "category": split}
                          for i, obj in enumerate(asked)]
        splits[split] = questions
    return splits
