"""AMBER: generative CHAIR, Cover, Hal and Cog, and yes/no accuracy and F1 by dimension.

Facts from AMBER's `inference.py` (answers are keyed by AMBER's question `id`; the user passes AMBER's
`annotations.json`, `relation.json` and `safe_words.txt`, or the folder holding them):

- Generative (a description of the image): the nouns of the answer that are AMBER objects (keys and
  values of `relation.json`) are checked in order. A safe word is skipped but stays in the denominator. A
  noun that is a true object or associated with one covers that object and is fine; otherwise it is a
  hallucination, and if it is (or is associated with) an annotated hallucination target it also covers
  that target. Matching takes the first hit in the list of associated words (in object order) followed
  by the objects themselves, so "ground" covers "grass" when grass, whose associate is ground, comes
  first; this quirk of the reference is kept in both modes. CHAIR = hallucinated nouns / nouns, Cover =
  covered true objects / true objects, Hal = share of answers with a hallucination, Cog = covered
  hallucination targets / targets, all pooled over answers.
- Discriminative (yes/no): "no" is the positive class; precision = right "no" / answered "no",
  recall = right "no" / truth "no". Existence is `discriminative-hallucination`, attribute pools state,
  number and action, relation is `discriminative-relation` and `relation` (689 of AMBER's relation
  questions carry the second name; the reference scores every other type as relation).
- AMBER score (the paper's summary) = (1 - CHAIR + F1) / 2.

Two modes (`parse`):
- official (default): nouns are the NN* words of NLTK's `word_tokenize` + `pos_tag`, lemmatised by
  WordNet, matched case-sensitively; a noun that matches nothing exactly is merged with a true object or
  target when spaCy's `en_core_web_lg` similarity exceeds 0.8 (without the model the merge is off, as
  the reference run with `--similarity_score 1.0`); a yes/no answer is exactly "Yes" or "No", anything
  else is wrong. Besides the fractions, the figures the reference prints come under `<metric>_pct`:
  percentages rounded to one decimal, every denominator started at 0.001 as its `metrics.txt` does (so a
  model with no hallucination has Hal 0.1), attribute sums three such denominators, and F1 is taken from
  the rounded precision and recall with 0.0001 added below (0.001 for existence). Missing NLTK data
  gives the closest installed tool and `approximate: true` (`vlalign.evaluate.textkit`).
- robust: lower-cased, singularised (inflect) words in AMBER's vocabulary; a few words that are mostly
  verbs, modals or adjectives ("can", "hot", "watch", ...) count only when plural or right after a
  determiner, number or possessive; the similarity step runs only when a `similar` function is passed;
  the first word of a yes/no answer, lower-cased and without punctuation, is read ("yes." is yes).
  Metrics are fractions; F1 has no smoothing term.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vlalign.evaluate import textkit
from vlalign.evaluate.answers import Answer, Issues, check_parse, read_answers
from vlalign.evaluate.textkit import singular

DIMENSIONS = {
    "discriminative-hallucination": "existence",
    "discriminative-attribute-state": "state",
    "discriminative-attribute-number": "number",
    "discriminative-attribute-action": "action",
    "discriminative-relation": "relation",
    "relation": "relation",
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

    def lowered(self) -> AmberData:
        """The same data in lower case (the robust mode matches lower-cased words)."""
        return AmberData(self.annotations, {k.lower(): [w.lower() for w in v] for k, v in self.association.items()},
                         frozenset(w.lower() for w in self.safe_words))

    @classmethod
    def load(cls, paths: Sequence[str | Path]) -> AmberData:
        """From AMBER's three data files, or a folder holding them (its `data/` folder or the repo root), as
        they are written: words keep their case, a safe word is a whole line."""
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
        safe = found["safe_words.txt"].read_text(encoding="utf-8").split("\n")
        return cls({int(a["id"]): a for a in annotations}, relation, frozenset(w for w in safe if w))


def amber_nouns(text: str, vocabulary: frozenset[str]) -> list[str]:
    """The AMBER objects an answer names, in order, by the robust reading (see the module notes)."""
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


def official_noun_reader() -> tuple[Callable[[str], list[str]], tuple[textkit.Tool, ...]]:
    """The reference's noun extraction (tokenise, tag, keep NN*, lemmatise) with the tools installed."""
    tokenize, tokenizer = textkit.word_tokenizer()
    tag, tagger = textkit.pos_tagger()
    lemmatize, lemmatizer = textkit.lemmatizer()

    def nouns(text: str) -> list[str]:
        tokens = tokenize(text)
        tagged = tag(tokens) if tag is not None else [(t, "NN") for t in tokens]
        return [lemmatize(word) for word, pos in tagged if pos.startswith("NN")]

    return nouns, (tokenizer, tagger, lemmatizer)


def _first(word: str, listed: list[tuple[str, int]], match: Callable[[str, str], bool]) -> int | None:
    """The object index of the first entry of `listed` that `word` matches."""
    return next((i for w, i in listed if match(word, w)), None)


def generative_counts(nouns: list[str], truth: list[str], hallu: list[str], data: AmberData,
                      similar: Callable[[str, str], bool] | None = None) -> dict[str, int]:
    """Counts behind CHAIR, Cover, Hal and Cog for one description, from its nouns in AMBER's vocabulary."""
    def listing(objs: list[str]) -> list[tuple[str, int]]:
        return ([(w, i) for i, o in enumerate(objs) for w in data.association.get(o, [])]
                + [(o, i) for i, o in enumerate(objs)])

    safe, targets = listing(truth), listing(hallu)
    covered, cognised = set(), set()
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
    """yes, no, or other: the first word, lower-cased, without punctuation (robust)."""
    first = _TOKEN.findall(answer.lower()[:20])
    return first[0] if first and first[0] in ("yes", "no") else "other"


def parse_amber_official(answer: str) -> str:
    """yes, no, or other: the whole answer must be exactly "Yes" or "No" (official)."""
    return {"Yes": "yes", "No": "no"}.get(answer, "other")


@dataclass
class YesNo:
    """The reference's counters of one dimension: questions, right answers, truth "no", answered "no",
    right "no"."""

    n: int = 0
    right: int = 0
    truth_no: int = 0
    said_no: int = 0
    right_no: int = 0

    def add(self, said: str, truth: str) -> None:
        truth = "yes" if truth == "yes" else "no"
        self.n += 1
        self.right += said == truth
        self.truth_no += truth == "no"
        self.said_no += said == "no"
        self.right_no += said == truth == "no"


def yes_no_metrics(counts: Sequence[YesNo]) -> dict[str, float]:
    """Accuracy, precision, recall and F1 with "no" as the positive class, pooled over `counts`."""
    n, right, truth_no, said_no, right_no = (sum(getattr(c, k) for c in counts)
                                             for k in ("n", "right", "truth_no", "said_no", "right_no"))
    precision = right_no / said_no if said_no else 0.0
    recall = right_no / truth_no if truth_no else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": right / n, "precision": precision, "recall": recall, "f1": f1}


def _counter(counts: Sequence[int]) -> float:
    """A denominator as the reference accumulates it: 0.001 from `metrics.txt`, then each count added."""
    total = 0.001
    for c in counts:
        total += c
    return total


def _pct(num: int, dens: Sequence[Sequence[int]]) -> float:
    """num / (sum of reference counters) * 100, rounded to one decimal as `inference.py` prints it."""
    return round(num / sum(_counter(d) for d in dens) * 100, 1)


def printed_yes_no(counts: Sequence[YesNo], f1_smoothing: float = 0.0001) -> dict[str, float]:
    """The accuracy, precision, recall and F1 `inference.py` prints for a pool of its counters."""
    acc = _pct(sum(c.right for c in counts), [[1] * c.n for c in counts])
    p = _pct(sum(c.right_no for c in counts), [[1] * c.said_no for c in counts])
    r = _pct(sum(c.right_no for c in counts), [[1] * c.truth_no for c in counts])
    f1 = round(2 * (p / 100) * (r / 100) / ((p / 100) + (r / 100) + f1_smoothing) * 100, 1)
    return {"accuracy_pct": acc, "precision_pct": p, "recall_pct": r, "f1_pct": f1}


@dataclass
class Tally:
    """What a scoring pass collects: per-answer generative counts and yes/no counters per dimension."""

    generative: list[dict[str, int]] = field(default_factory=list)
    judged: dict[str, YesNo] = field(default_factory=dict)
    overall: YesNo = field(default_factory=YesNo)
    unparsed: int = 0


def _tally(answers: Sequence[Answer], data: AmberData, issues: Issues, official: bool,
           nouns: Callable[[str], list[str]], similar: Callable[[str, str], bool] | None) -> Tally:
    tally = Tally()
    vocabulary = data.vocabulary
    read = parse_amber_official if official else parse_amber_yes_no
    for a in answers:
        qid = a.question_id
        key = int(qid) if isinstance(qid, int) or (isinstance(qid, str) and qid.isdigit()) else None
        gt = data.annotations.get(key) if key is not None else None
        if gt is None:
            issues(a.line, "unknown_question_id",
                   f"question_id {qid!r} is not an id in AMBER's annotations.json; use AMBER's question ids")
            continue
        if gt["type"] == "generative":
            found = [n for n in nouns(a.answer) if n in vocabulary]
            tally.generative.append(generative_counts(found, gt["truth"], gt["hallu"], data, similar))
            continue
        dimension = DIMENSIONS.get(gt["type"], "relation" if official else None)
        if dimension is None:
            issues(a.line, "unknown_type", f"annotation {key} has unknown type {gt['type']!r}; AMBER's types are "
                                           f"generative, {', '.join(DIMENSIONS)}")
            continue
        said = read(a.answer)
        tally.unparsed += said == "other"
        tally.judged.setdefault(dimension, YesNo()).add(said, gt["truth"])
        tally.overall.add(said, gt["truth"])
    return tally


def _generative_summary(generative: list[dict[str, int]], printed: bool) -> dict:
    total = {k: sum(g[k] for g in generative) for k in generative[0]}
    out = {
        "chair": total["hallucinated"] / total["nouns"] if total["nouns"] else 0.0,
        "cover": total["covered"] / total["truth"] if total["truth"] else 0.0,
        "hal": sum(g["hallucinated"] > 0 for g in generative) / len(generative),
        "cog": total["cognised"] / total["targets"] if total["targets"] else 0.0,
        "generative_n": len(generative),
    }
    if printed:
        def column(k: str) -> list[int]:
            return [g[k] for g in generative]

        clean = sum(g["hallucinated"] == 0 for g in generative)
        out.update({
            "chair_pct": _pct(total["hallucinated"], [column("nouns")]),
            "cover_pct": _pct(total["covered"], [column("truth")]),
            "hal_pct": round(100 - clean / _counter([1] * len(generative)) * 100, 1),
            "cog_pct": _pct(total["cognised"], [column("targets")]),
        })
    return out


def _summary(tally: Tally, printed: bool) -> dict:
    out: dict = _generative_summary(tally.generative, printed) if tally.generative else {}
    if tally.judged:
        groups: dict[str, list[YesNo]] = {"": [tally.overall], **{d: [c] for d, c in tally.judged.items()}}
        if any(d in tally.judged for d in ATTRIBUTE):
            # the reference pools its three attribute counters, each started at 0.001
            groups["attribute"] = [tally.judged.get(d, YesNo()) for d in ATTRIBUTE]
        for name, counts in groups.items():
            prefix = f"{name}_" if name else ""
            out.update({f"{prefix}{k}": v for k, v in yes_no_metrics(counts).items()})
            out[f"{prefix}n"] = sum(c.n for c in counts)
            if printed:
                smoothing = 0.001 if name == "existence" else 0.0001
                out.update({f"{prefix}{k}": v for k, v in printed_yes_no(counts, smoothing).items()})
    if tally.generative and tally.judged:
        out["amber_score"] = (1 - out["chair"] + out["f1"]) / 2
    return out


def score_amber(answers_path: str | Path, annotations: Sequence[str | Path], skip_bad: bool = False,
                similar: Callable[[str, str], bool] | None = None, parse: str = "official",
                similarity_score: float = 0.8) -> dict:
    """AMBER metrics of an answer file whose `question_id` is AMBER's question id. In official mode
    `similar` defaults to spaCy's `en_core_web_lg` similarity above `similarity_score`, when installed."""
    official = check_parse(parse) == "official"
    issues = Issues(str(answers_path), skip=skip_bad)
    answers = read_answers(answers_path, [], issues)
    data = AmberData.load(annotations)
    if official:
        nouns, tools = official_noun_reader()
        if similar is None:
            similarity, tool = textkit.spacy_similarity()
            tools += (tool,)
            if similarity is not None:
                def similar(a: str, b: str) -> bool:
                    return similarity(a, b) > similarity_score
        provenance = textkit.report(tools)
    else:
        data = data.lowered()
        vocabulary = data.vocabulary

        def nouns(text: str) -> list[str]:
            return amber_nouns(text, vocabulary)

        provenance = {"extractor": "vlalign words (inflect)"}
    tally = _tally(answers, data, issues, official, nouns, similar)
    issues.require([*tally.generative, *tally.judged.values()])
    return {**_summary(tally, printed=official), "unparsed": tally.unparsed, "parse": parse, **provenance,
            **issues.report()}
