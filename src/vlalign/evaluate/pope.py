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
from vlalign.evaluate.answers import YES_NO_LABEL, Answer, Field, Issues, check_parse, read_answers

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


def pope_metrics(predicted_yes: Sequence[bool], label_yes: Sequence[bool]) -> dict[str, float]:
    """Accuracy, precision, recall, F1 and yes-ratio (the share of *predicted* yes)."""
    if len(predicted_yes) != len(label_yes):
        raise ValueError(f"{len(predicted_yes)} predictions but {len(label_yes)} labels")
    if not label_yes:
        raise ValueError("POPE needs at least one question")
    tp = sum(p and t for p, t in zip(predicted_yes, label_yes, strict=True))
    fp = sum(p and not t for p, t in zip(predicted_yes, label_yes, strict=True))
    fn = sum(t and not p for p, t in zip(predicted_yes, label_yes, strict=True))
    tn = len(label_yes) - tp - fp - fn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": (tp + tn) / len(label_yes),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": (tp + fp) / len(label_yes),
    }


POPE_SPLITS = ("random", "popular", "adversarial")
METRICS = ("accuracy", "precision", "recall", "f1", "yes_ratio")
CATEGORY = Field("category", "the POPE split of the question", choices=POPE_SPLITS, lower=True)


def score_pope_answers(answers: Sequence[Answer], parse: str = "official") -> dict:
    """Metrics per split (`random_f1`, ...) and their mean over the splits present (`f1`, ...)."""
    read = PARSERS[check_parse(parse)]
    out: dict = {}
    present = [s for s in POPE_SPLITS if any(a["category"] == s for a in answers)]
    for split in present:
        rows = [a for a in answers if a["category"] == split]
        m = pope_metrics([read(a.answer) for a in rows], [a["label"] == "yes" for a in rows])
        out.update({f"{split}_{k}": v for k, v in m.items()})
        out[f"{split}_n"] = len(rows)
    for k in METRICS:
        out[k] = sum(out[f"{s}_{k}"] for s in present) / len(present)
    out["splits"] = present
    out["parse"] = parse
    return out


def score_pope(answers_path: str | Path, skip_bad: bool = False, parse: str = "official") -> dict:
    """POPE metrics of an answer file (`label` yes/no and `category` on every line)."""
    issues = Issues(str(answers_path), skip=skip_bad)
    answers = read_answers(answers_path, [YES_NO_LABEL, CATEGORY], issues)
    issues.require(answers)
    return {**score_pope_answers(answers, parse), **issues.report()}


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
