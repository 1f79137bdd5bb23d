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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vlalign.evaluate import textkit
from vlalign.evaluate.answers import Answer, AnswerFileError, Issues, Layout, check_parse, read_answers
from vlalign.evaluate.intervals import Outcomes, Result, ratio, rounded, scored, statistic
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


YES_NO = ("n", "right", "truth_no", "said_no", "right_no")
PARTS = ("all", "generative", "discriminative")
# AMBER's own result files: a JSON list of {"id", "response"}
LAYOUT = Layout(answer=(("response", None),), question_id=("id",))


def yes_no_counts(said: str, truth: str) -> dict[str, int]:
    """One question's share of the reference's counters: asked, right, truth "no", answered "no", right "no"."""
    truth = "yes" if truth == "yes" else "no"
    return {"n": 1, "right": int(said == truth), "truth_no": int(truth == "no"), "said_no": int(said == "no"),
            "right_no": int(said == truth == "no")}


def yes_no_rates(c: Mapping) -> dict:
    """Accuracy, precision, recall and F1 with "no" as the positive class, from pooled counters."""
    precision, recall = ratio(c["right_no"], c["said_no"]), ratio(c["right_no"], c["truth_no"])
    return {"accuracy": ratio(c["right"], c["n"]), "precision": precision, "recall": recall,
            "f1": ratio(2 * precision * recall, precision + recall)}


def _pct(num, total, counters: int = 1):
    """num / (the reference's denominators) * 100, rounded to one decimal as `inference.py` prints it: each
    of its `counters` starts at 0.001 (`metrics.txt`) and the counts are added to it. Summing the counts
    first moves the denominator by far less than any rounding boundary is away (0.001 keeps it off them)."""
    return rounded(num / (0.001 * counters + total) * 100, 1)


def printed_yes_no(c: Mapping, counters: int = 1, f1_smoothing: float = 0.0001) -> dict:
    """The accuracy, precision, recall and F1 `inference.py` prints for pooled counters."""
    acc = _pct(c["right"], c["n"], counters)
    p = _pct(c["right_no"], c["said_no"], counters)
    r = _pct(c["right_no"], c["truth_no"], counters)
    f1 = rounded(2 * (p / 100) * (r / 100) / ((p / 100) + (r / 100) + f1_smoothing) * 100, 1)
    return {"accuracy_pct": acc, "precision_pct": p, "recall_pct": r, "f1_pct": f1}


def _groups(dimensions: Sequence[str]) -> dict[str, tuple[list[str], int]]:
    """The pools the reference reports: all questions (one counter), each dimension, and attribute, which
    pools its three counters (each started at 0.001, present or not); none without yes/no questions."""
    if not dimensions:
        return {}
    groups = {"": (list(dimensions), 1), **{d: ([d], 1) for d in dimensions}}
    if any(d in dimensions for d in ATTRIBUTE):
        groups["attribute"] = (list(ATTRIBUTE), len(ATTRIBUTE))
    return groups


@statistic("amber")
def amber_statistic(sums, params) -> dict:
    """Generative CHAIR, Cover, Hal and Cog, the yes/no figures of every pool, their printed forms
    (official) and the AMBER score, from the summed per-question counts."""
    out: dict = {}
    printed = params["printed"]
    if params["generative"]:
        out.update({"chair": ratio(sums["hallucinated"], sums["nouns"]), "cover": ratio(sums["covered"], sums["truth"]),
                    "hal": ratio(sums["hallucinating"], sums["described"]),
                    "cog": ratio(sums["cognised"], sums["targets"])})
        if printed:
            clean = sums["described"] - sums["hallucinating"]
            out.update({"chair_pct": _pct(sums["hallucinated"], sums["nouns"]),
                        "cover_pct": _pct(sums["covered"], sums["truth"]),
                        "hal_pct": rounded(100 - clean / (0.001 + sums["described"]) * 100, 1),
                        "cog_pct": _pct(sums["cognised"], sums["targets"])})
    for name, (dims, counters) in _groups(params["dimensions"]).items():
        prefix = f"{name}_" if name else ""
        pooled = {k: sum(sums.get(f"{d}_{k}", 0.0) for d in dims) for k in YES_NO}
        out.update({f"{prefix}{k}": v for k, v in yes_no_rates(pooled).items()})
        if printed:
            smoothing = 0.001 if name == "existence" else 0.0001
            out.update({f"{prefix}{k}": v for k, v in printed_yes_no(pooled, counters, smoothing).items()})
    if params["generative"] and params["dimensions"]:
        out["amber_score"] = (1 - out["chair"] + out["f1"]) / 2
    return out


@dataclass
class Tally:
    """What a scoring pass collects: one row of counts per question, its stratum (generative or its
    dimension), the answers not read as yes or no, and the questions of the other part."""

    rows: list[tuple[str, dict]] = field(default_factory=list)
    strata: list[str] = field(default_factory=list)
    unparsed: int = 0
    other_part: int = 0


def _tally(answers: Sequence[Answer], data: AmberData, issues: Issues, official: bool,
           nouns: Callable[[str], list[str]], similar: Callable[[str, str], bool] | None, part: str) -> Tally:
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
        generative = gt["type"] == "generative"
        if part != "all" and generative != (part == "generative"):
            tally.other_part += 1
            continue
        if generative:
            found = [n for n in nouns(a.answer) if n in vocabulary]
            c = generative_counts(found, gt["truth"], gt["hallu"], data, similar)
            tally.rows.append((str(qid), {**c, "described": 1, "hallucinating": int(c["hallucinated"] > 0)}))
            tally.strata.append("generative")
            continue
        dimension = DIMENSIONS.get(gt["type"], "relation" if official else None)
        if dimension is None:
            issues(a.line, "unknown_type", f"annotation {key} has unknown type {gt['type']!r}; AMBER's types are "
                                           f"generative, {', '.join(DIMENSIONS)}")
            continue
        said = read(a.answer)
        tally.unparsed += said == "other"
        counts = yes_no_counts(said, gt["truth"])
        tally.rows.append((str(qid), {**{f"{dimension}_{k}": v for k, v in counts.items()},
                                      "judged": 1, "judged_right": counts["right"]}))
        tally.strata.append(dimension)
    return tally


def _outcomes(tally: Tally, printed: bool) -> Outcomes:
    dimensions = [d for d in ("existence", *ATTRIBUTE, "relation") if d in tally.strata]
    binary = {"accuracy": ("judged_right", "judged"), **{f"{d}_accuracy": (f"{d}_right", f"{d}_n") for d in dimensions}}
    return Outcomes.from_rows("amber", "question", tally.rows, tally.strata,
                              params={"printed": printed, "generative": "generative" in tally.strata,
                                      "dimensions": dimensions}, binary=binary if dimensions else {})


def amber_result(answers_path: str | Path, annotations: Sequence[str | Path], skip_bad: bool = False,
                 similar: Callable[[str, str], bool] | None = None, parse: str = "official",
                 similarity_score: float = 0.8, part: str = "all") -> Result:
    """AMBER metrics of an answer file whose `question_id` is AMBER's question id (or AMBER's own result
    file of `id` and `response`), with intervals over questions, each dimension resampled apart. `part`
    scores the generative or the discriminative questions only (the reference's `--evaluation_type g` /
    `d`); the others are counted in `other_part`. In official mode `similar` defaults to spaCy's
    `en_core_web_lg` similarity above `similarity_score`, when installed."""
    if part not in PARTS:
        raise ValueError(f"unknown AMBER part {part!r}; use one of {', '.join(PARTS)}")
    official = check_parse(parse) == "official"
    issues = Issues(str(answers_path), skip=skip_bad)
    answers = read_answers(answers_path, [], issues, LAYOUT)
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
    tally = _tally(answers, data, issues, official, nouns, similar, part)
    if not tally.rows and tally.other_part:
        raise AnswerFileError(f"{answers_path}: no {part} question to score ({tally.other_part} of the other part)")
    issues.require(tally.rows)
    outcomes = _outcomes(tally, official)
    sums = outcomes.sums()
    sizes = {f"{name}_n" if name else "n": int(sum(sums.get(f"{d}_n", 0) for d in dims))
             for name, (dims, _) in _groups(outcomes.params["dimensions"]).items()}
    if outcomes.params["generative"]:
        sizes = {"generative_n": int(sums["described"]), **sizes}
    notes = {**sizes, "unparsed": tally.unparsed, "parse": parse, "part": part,
             **({"other_part": tally.other_part} if tally.other_part else {}), **provenance, **issues.report()}
    return scored(outcomes, notes)


def score_amber(answers_path: str | Path, annotations: Sequence[str | Path], skip_bad: bool = False,
                similar: Callable[[str, str], bool] | None = None, parse: str = "official",
                similarity_score: float = 0.8, part: str = "all") -> dict:
    """AMBER metrics of an answer file (see `amber_result`)."""
    return amber_result(answers_path, annotations, skip_bad, similar, parse, similarity_score, part).metrics
