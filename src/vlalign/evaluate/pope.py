"""POPE: yes/no object probing. Parsing follows the reference evaluation; metrics treat "yes" as positive."""

from __future__ import annotations

import re
from collections.abc import Sequence

_NEG = re.compile(r"\b(no|not)\b")


def parse_yes_no(answer: str) -> bool:
    """True for yes. As POPE's reference code: keep the first sentence; a "no" or "not" in it means no."""
    first = answer.strip().split(".")[0].lower().replace(",", " ")
    return _NEG.search(first) is None


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
