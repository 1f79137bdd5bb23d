"""AMBER: generative CHAIR, Cover, Hal and Cog, and yes/no accuracy and F1 by dimension.

Facts from AMBER's `inference.py` (answers are keyed by AMBER's question `id`; the user passes AMBER's
`annotations.json`, `relation.json` and `safe_words.txt`, or the folder holding them):

- Generative (a description of the image): the nouns of the answer that are AMBER objects (keys and
  values of `relation.json`) are checked in order. A safe word is skipped but stays in the denominator. A
  noun that is a true object or associated with one covers that object and is fine; otherwise it is a
  hallucination, and if it is (or is associated with) an annotated hallucination target it also covers
  that target. Matching takes the first hit in the list of associated words (in object order) followed
  by the objects themselves, so "ground" covers "grass" when grass, whose associate is ground, comes
  first; this quirk of the reference is kept. CHAIR = hallucinated nouns / nouns, Cover = covered true
  objects / true objects, Hal = share of answers with a hallucination, Cog = covered hallucination
  targets / targets, all pooled over answers.
- Discriminative (yes/no): "no" is the positive class; precision = right "no" / answered "no",
  recall = right "no" / truth "no". Existence is `discriminative-hallucination`, attribute pools state,
  number and action, relation is `discriminative-relation`.
- AMBER score (the paper's summary) = (1 - CHAIR + F1) / 2.

Differences, because NLTK's tagger data and spaCy's vectors cannot be downloaded here: nouns are the
lower-cased, singularised (inflect) words in AMBER's vocabulary; a few words that are mostly verbs,
modals or adjectives ("can", "hot", "watch", ...) count only when plural or right after a determiner,
number or possessive; the reference's spaCy similarity step (threshold 0.8) runs only when a `similar`
function is passed. The reference compares yes/no answers to exactly "Yes" / "No"; here the first word
of the answer, lower-cased and without punctuation, is read, so "yes." counts as yes; anything else
counts as wrong (as in the reference) and is reported in `unparsed`. Metrics are fractions, not percent,
and F1 has no smoothing term.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from vlalign.evaluate.answers import Issues, read_answers
from vlalign.evaluate.chair import singular

DIMENSIONS = {
    "discriminative-hallucination": "existence",
    "discriminative-attribute-state": "state",
    "discriminative-attribute-number": "number",
    "discriminative-attribute-action": "action",
    "discriminative-relation": "relation",
}
ATTRIBUTE = ("state", "number", "action")
FILES = ("annotations.json", "relation.json", "safe_words.txt")
_TOKEN = re.compile(r"[a-z]+(?:-[a-z]+)*")
_AMBIGUOUS = frozenset({"can", "hot", "watch", "support", "note", "sound", "drink", "ski", "skate", "paddle",
                        "board", "lock", "switch", "file", "ring", "spray", "brush", "tape", "drain"})
_DETERMINERS = frozenset({"a", "an", "the", "this", "that", "these", "those", "some", "any", "each", "every",
                          "another", "his", "her", "their", "its", "my", "your", "our", "two", "three", "four",
                          "five", "several", "many", "few"})


@dataclass(frozen=True)
class AmberData:
    """AMBER's annotations (by id), word associations, and the words never counted as hallucinations."""

    annotations: dict[int, dict]
    association: dict[str, list[str]]
    safe_words: frozenset[str]

    @property
    def vocabulary(self) -> frozenset[str]:
        return frozenset([*self.association, *(w for ws in self.association.values() for w in ws)])

    @classmethod
    def load(cls, paths: Sequence[str | Path]) -> AmberData:
        """From AMBER's three data files, or a folder holding them (its `data/` folder or the repo root)."""
        found: dict[str, Path] = {}
        for p in map(Path, paths):
            if p.is_dir():
                for root in (p, p / "data"):
                    found.update({name: root / name for name in FILES if (root / name).is_file()})
            elif p.name in FILES and p.is_file():
                found[p.name] = p
            else:
                raise FileNotFoundError(f"{p} is not one of AMBER's files ({', '.join(FILES)}) or a folder of them")
        missing = [name for name in FILES if name not in found]
        if missing:
            raise FileNotFoundError(f"AMBER needs {', '.join(missing)}: pass --annotations with AMBER's data "
                                    f"folder or the files")
        annotations = json.loads(found["annotations.json"].read_text(encoding="utf-8"))
        relation = json.loads(found["relation.json"].read_text(encoding="utf-8"))
        safe = found["safe_words.txt"].read_text(encoding="utf-8").split()
        return cls({int(a["id"]): a for a in annotations},
                   {k.lower(): [w.lower() for w in v] for k, v in relation.items()},
                   frozenset(w.lower() for w in safe))


def amber_nouns(text: str, vocabulary: frozenset[str]) -> list[str]:
    """The AMBER objects an answer names, in order (see the module notes on how nouns are found)."""
    raw = _TOKEN.findall(text.lower())
    nouns = []
    for i, token in enumerate(raw):
        word = singular(token, vocabulary)
        if word not in vocabulary:
            continue
        if word in _AMBIGUOUS and word == token and not (i and raw[i - 1] in _DETERMINERS):
            continue
        nouns.append(word)
    return nouns


def _first(word: str, listed: list[tuple[str, int]], match: Callable[[str, str], bool]) -> int | None:
    """The object index of the first entry of `listed` that `word` matches."""
    return next((i for w, i in listed if match(word, w)), None)


def generative_counts(text: str, truth: list[str], hallu: list[str], data: AmberData,
                      similar: Callable[[str, str], bool] | None = None) -> dict[str, int]:
    """Counts behind CHAIR, Cover, Hal and Cog for one description."""
    def listing(objs: list[str]) -> list[tuple[str, int]]:
        return ([(w, i) for i, o in enumerate(objs) for w in data.association.get(o, [])]
                + [(o, i) for i, o in enumerate(objs)])

    safe, targets = listing(truth), listing(hallu)
    covered, cognised = set(), set()
    nouns = amber_nouns(text, data.vocabulary)
    bad = 0
    for noun in nouns:
        if noun in data.safe_words:
            continue
        hit = _first(noun, safe, str.__eq__)
        if hit is not None:
            covered.add(hit)
            continue
        for match in (str.__eq__, similar) if similar else (str.__eq__,):
            target = _first(noun, targets, match)
            if target is not None:
                cognised.add(target)
        near = _first(noun, safe, similar) if similar else None
        if near is not None:
            covered.add(near)
            continue
        bad += 1
    return {"nouns": len(nouns), "hallucinated": bad, "covered": len(covered), "truth": len(truth),
            "cognised": len(cognised), "targets": len(hallu)}


def parse_amber_yes_no(answer: str) -> str:
    """yes, no, or other: the first word, lower-cased, without punctuation."""
    first = _TOKEN.findall(answer.lower()[:20])
    return first[0] if first and first[0] in ("yes", "no") else "other"


def yes_no_metrics(pairs: list[tuple[str, str]]) -> dict[str, float]:
    """Accuracy, precision, recall and F1 with "no" as the positive class; pairs are (answer, truth)."""
    right = sum(a == t for a, t in pairs)
    said_no = sum(a == "no" for a, _ in pairs)
    truth_no = sum(t == "no" for _, t in pairs)
    right_no = sum(a == t == "no" for a, t in pairs)
    precision = right_no / said_no if said_no else 0.0
    recall = right_no / truth_no if truth_no else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": right / len(pairs), "precision": precision, "recall": recall, "f1": f1}


def score_amber(answers_path: str | Path, annotations: Sequence[str | Path], skip_bad: bool = False,
                similar: Callable[[str, str], bool] | None = None) -> dict:
    """AMBER metrics of an answer file whose `question_id` is AMBER's question id."""
    issues = Issues(str(answers_path), skip=skip_bad)
    answers = read_answers(answers_path, [], issues)
    data = AmberData.load(annotations)
    generative: list[dict[str, int]] = []
    judged: dict[str, list[tuple[str, str]]] = {}
    unparsed = 0
    for a in answers:
        qid = a.question_id
        key = int(qid) if isinstance(qid, int) or (isinstance(qid, str) and qid.isdigit()) else None
        gt = data.annotations.get(key) if key is not None else None
        if gt is None:
            issues(a.line, "unknown_question_id",
                   f"question_id {qid!r} is not an id in AMBER's annotations.json; use AMBER's question ids")
            continue
        if gt["type"] == "generative":
            generative.append(generative_counts(a.answer, gt["truth"], gt["hallu"], data, similar))
        elif gt["type"] in DIMENSIONS:
            said = parse_amber_yes_no(a.answer)
            unparsed += said == "other"
            judged.setdefault(DIMENSIONS[gt["type"]], []).append((said, gt["truth"]))
        else:
            issues(a.line, "unknown_type", f"annotation {key} has unknown type {gt['type']!r}")
    issues.require([*generative, *judged.values()])
    return {**_summary(generative, judged), "unparsed": unparsed, **issues.report()}


def _summary(generative: list[dict[str, int]], judged: dict[str, list[tuple[str, str]]]) -> dict:
    out: dict = {}
    if generative:
        total = {k: sum(g[k] for g in generative) for k in generative[0]}
        out.update({
            "chair": total["hallucinated"] / total["nouns"] if total["nouns"] else 0.0,
            "cover": total["covered"] / total["truth"] if total["truth"] else 0.0,
            "hal": sum(g["hallucinated"] > 0 for g in generative) / len(generative),
            "cog": total["cognised"] / total["targets"] if total["targets"] else 0.0,
            "generative_n": len(generative),
        })
    if judged:
        groups = {"": [p for ps in judged.values() for p in ps], **judged}
        if any(d in judged for d in ATTRIBUTE):
            groups["attribute"] = [p for d in ATTRIBUTE for p in judged.get(d, [])]
        for name, pairs in groups.items():
            prefix = f"{name}_" if name else ""
            out.update({f"{prefix}{k}": v for k, v in yes_no_metrics(pairs).items()})
            out[f"{prefix}n"] = len(pairs)
    if generative and judged:
        out["amber_score"] = (1 - out["chair"] + out["f1"]) / 2
    return out

