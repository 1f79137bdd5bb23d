"""CHAIR on COCO images (Object HalBench style): which objects an answer names that the image lacks.

An answer's mentions are its words that name a COCO class, after plurals are singularised, two-word
phrases joined (`vlalign.data.coco`) and "seat" dropped when "toilet" is named; the ground truth of an image
is the union of its instance categories and the objects its reference captions mention the same way.
CHAIR_s is the share of answers with a hallucinated mention, CHAIR_i the share of mentions that are.

Two modes (`parse`):
- official (default), as the CHAIR code most papers run (Rohrbach et al. 2018, `utils/chair.py`):
  NLTK's `word_tokenize` on the lower-cased text, pattern's `singularize` on every token (so "bus"
  becomes "bu" and a bus counts nothing, "glass" becomes "glas"), the official two-word list, and the
  synonym list as its file reads, with its three entries that never match (`vlalign.data.coco.
  OFFICIAL_SPELLINGS`); an image that no annotation file lists has empty ground truth, so everything
  its answer names is a hallucination (counted in `images_without_annotations`). Where NLTK's Punkt data
  or pattern is missing, the closest installed tool runs and the output says the figures are
  approximate (`vlalign.evaluate.textkit`).
- robust: lower-case words (`[a-z]+`), singularised by `inflect` with vocabulary words left alone (so
  "bus" stays "bus"), the repaired synonym list, all two-word synonyms joined; an image missing from the
  annotation files is an error (the wrong split was passed).

Optionally (RLAIF-V's variant) a judge lists the objects an answer mentions and those phrases are mapped
to COCO classes; without spaCy's tagger a phrase maps through its two-word phrases, else through its last
word unless the word before it also names an object ("dog bed" is not a bed). `object_halbench` scores
that variant as RLAIF-V reports it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path

from vlalign.data.coco import DOUBLE_WORDS, OFFICIAL_DOUBLE_WORDS, OFFICIAL_SPELLINGS, SYNONYMS
from vlalign.evaluate import textkit
from vlalign.evaluate.answers import (
    PLAIN,
    Answer,
    AnswerFileError,
    Field,
    Issues,
    Layout,
    ask_judge,
    check_parse,
    files_in,
    read_answers,
)
from vlalign.evaluate.intervals import Outcomes, Result, ratio, scored, statistic
from vlalign.evaluate.textkit import singular

IMAGE_ID = Field("image_id", "the COCO image id the answer describes (e.g. 391895)", (int, str))
# CHAIR's own caption files (a list, or `imgToEval`, of {"image_id", "caption"}): the caption is the answer and
# the image id the question id
CAPTIONS = Layout(answer=(("caption", None),), question_id=("image_id",), number_rows=True)
_WORD = re.compile(r"[a-z]+")


def words(text: str, keep: frozenset[str] = frozenset()) -> list[str]:
    """Lower-case singular words of `text`, punctuation dropped."""
    return [singular(w, keep) for w in _WORD.findall(text.lower())]


@dataclass(frozen=True)
class Vocabulary:
    """Words that name objects (`synonyms`: word -> object) and the two-word phrases joined first."""

    synonyms: dict[str, str]
    double_words: dict[str, str]
    keep: frozenset[str]

    @classmethod
    def coco(cls, spellings: dict[str, str] | None = None, double_words: dict[str, str] = DOUBLE_WORDS,
             extra: dict[str, tuple[str, ...]] | None = None) -> Vocabulary:
        """The COCO vocabulary: repaired by default; `spellings` respells entries as another list has
        them, `extra` adds words to classes, `double_words` replaces the joined phrases."""
        spellings, extra = spellings or {}, extra or {}
        synonyms = {spellings.get(w, w): obj for obj, names in SYNONYMS.items()
                    for w in (obj, *names, *extra.get(obj, ()))}
        keep = frozenset(t for phrase in (*synonyms, *double_words) for t in phrase.split())
        return cls(synonyms, double_words, keep)

    @classmethod
    def official(cls) -> Vocabulary:
        """The vocabulary of the official CHAIR code, entries that never match included."""
        return cls.coco(OFFICIAL_SPELLINGS, OFFICIAL_DOUBLE_WORDS)

    def _joined(self, tokens: list[str]) -> list[str]:
        out, i = [], 0
        while i < len(tokens):
            pair = " ".join(tokens[i:i + 2])
            if pair in self.double_words:
                out.append(self.double_words[pair])
                i += 2
            else:
                out.append(tokens[i])
                i += 1
        return out

    def _named(self, tokens: list[str]) -> list[tuple[str, str]]:
        if "toilet" in tokens and "seat" in tokens:
            tokens = [t for t in tokens if t != "seat"]
        return [(t, self.synonyms[t]) for t in tokens if t in self.synonyms]

    def mentions_in(self, tokens: list[str]) -> list[tuple[str, str]]:
        """(word, object) for every object mention in a list of singular tokens, in order."""
        return self._named(self._joined(tokens))

    def mentions(self, text: str) -> list[tuple[str, str]]:
        """(word, object) for every object mention in free text (robust words), in order."""
        return self.mentions_in(words(text, self.keep))

    def phrase_objects(self, phrase: str) -> list[tuple[str, str]]:
        """(word, object) named by one extracted object phrase such as "two small dogs"."""
        tokens = words(phrase, self.keep)
        doubles = [self.double_words[" ".join(tokens[i:i + 2])] for i in range(len(tokens) - 1)
                   if " ".join(tokens[i:i + 2]) in self.double_words]
        if doubles:
            return self._named(doubles)
        if not tokens or (len(tokens) > 1 and tokens[-2] in self.synonyms):
            return []
        return self._named(tokens[-1:])


@dataclass(frozen=True)
class Reader:
    """How one mode finds the object mentions of a text, and which tools it ran."""

    vocab: Vocabulary
    tokens: Callable[[str], list[str]]
    tools: tuple[textkit.Tool, ...]
    parse: str

    def mentions(self, text: str) -> list[tuple[str, str]]:
        return self.vocab.mentions_in(self.tokens(text))

    def report(self) -> dict:
        """`parse`, `extractor`, and in official mode whether the figures are approximate."""
        tools = textkit.report(self.tools)
        return {"parse": self.parse, **(tools if self.parse == "official" else {"extractor": tools["extractor"]})}


def official_tokens(lower: bool = True) -> tuple[Callable[[str], list[str]], tuple[textkit.Tool, ...]]:
    """The official CHAIR tokens: `word_tokenize` of the (lower-cased) text, each token singularised."""
    tokenize, tokenizer = textkit.word_tokenizer()
    singularize, singularizer = textkit.singularizer()
    cached = lru_cache(maxsize=65536)(singularize)

    def tokens(text: str) -> list[str]:
        return [cached(t) for t in tokenize(text.lower() if lower else text)]

    return tokens, (tokenizer, singularizer)


def chair_reader(parse: str = "official") -> Reader:
    """The mentions reader of a mode (see the module notes)."""
    if check_parse(parse) == "robust":
        vocab = Vocabulary.coco()
        return Reader(vocab, partial(words, keep=vocab.keep), (textkit.Tool("vlalign words (inflect)", True),),
                      parse)
    tokens, tools = official_tokens()
    return Reader(Vocabulary.official(), tokens, tools, parse)


def image_key(value: int | str) -> int | str:
    """COCO ids are integers; "391895" in an answer file means the same image."""
    return int(value) if isinstance(value, str) and value.strip().isdigit() else value


def _annotation_files(paths: Iterable[str | Path]) -> list[Path]:
    return files_in(list(paths), ("instances_*.json", "captions_*.json"), "COCO annotation files",
                    "; pass COCO's annotations folder or the files themselves")


@dataclass
class CocoTruth:
    """Objects present in each image: instance categories plus objects named by reference captions."""

    objects: dict[int | str, set[str]]
    sources: list[str]

    @classmethod
    def load(cls, paths: Iterable[str | Path], reader: Reader, image_ids: set | None = None) -> CocoTruth:
        """From COCO `instances_*.json` and `captions_*.json` files (or folders holding them), captions read
        by `reader`; with `image_ids`, only those images are kept."""
        vocab = reader.vocab
        objects: dict[int | str, set[str]] = {}
        sources = []
        files = _annotation_files(paths)
        if not files:
            raise ValueError("CHAIR needs COCO annotations: pass --annotations with the instances and captions "
                             "files (or COCO's annotations folder)")
        for path in files:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or "annotations" not in data or "images" not in data:
                raise ValueError(f"{path} is not a COCO annotation file (no 'images' and 'annotations')")
            wanted = [im["id"] for im in data["images"] if image_ids is None or im["id"] in image_ids]
            for image_id in wanted:
                objects.setdefault(image_id, set())
            if "categories" in data:
                names = {c["id"]: c["name"] for c in data["categories"]}
                unknown = sorted(set(names.values()) - set(vocab.synonyms))
                if unknown:
                    raise ValueError(f"{path}: categories {unknown} are not COCO classes; CHAIR knows the 80 "
                                     f"COCO classes only")
                for a in data["annotations"]:
                    if a["image_id"] in objects:
                        objects[a["image_id"]].add(vocab.synonyms[names[a["category_id"]]])
                sources.append(f"instances:{path.name}")
            else:
                for a in data["annotations"]:
                    if a["image_id"] in objects:
                        objects[a["image_id"]].update(obj for _, obj in reader.mentions(a["caption"]))
                sources.append(f"captions:{path.name}")
        return cls(objects, sources)


def answer_counts(found: Sequence[str], truth: set[str]) -> dict[str, int]:
    """CHAIR's counts of one answer, from the objects it mentions and the objects really there: mentions and
    hallucinated mentions, the same per distinct object, whether it hallucinates or names any object, and
    the distinct right objects of all present."""
    bad = [o for o in found if o not in truth]
    return {"answers": 1, "mentions": len(found), "hallucinated": len(bad), "unique": len(set(found)),
            "unique_bad": len(set(bad)), "bad_answers": int(bool(bad)), "with_objects": int(bool(found)),
            "right": len(set(found) & truth), "truth": len(truth)}


def chair_rates(sums) -> dict:
    """CHAIR_s (over all answers and, `chair_s_refine`, over those that name an object), CHAIR_i per mention
    and per distinct object, and recall, from the summed `answer_counts` (numbers or replicate arrays)."""
    return {"chair_s": ratio(sums["bad_answers"], sums["answers"]),
            "chair_s_refine": ratio(sums["bad_answers"], sums["with_objects"]),
            "chair_i": ratio(sums["hallucinated"], sums["mentions"]),
            "chair_i_unique": ratio(sums["unique_bad"], sums["unique"]),
            "recall": ratio(sums["right"], sums["truth"])}


# per caption, whether it hallucinates: McNemar's test and the agreement of two evaluations of CHAIR_s
HALLUCINATING = {"chair_s": ("bad_answers", None), "chair_s_refine": ("bad_answers", "with_objects")}


@statistic("chair")
def chair_statistic(sums, params) -> dict:
    """`chair_rates` and the mean number of words (pieces split on whitespace) per answer."""
    return {**chair_rates(sums), "mean_words": ratio(sums["words"], sums["answers"])}


def chair_outcomes(ids: Sequence, mentions: Sequence[Sequence[tuple[str, str]]], truths: Sequence[set[str]],
                   texts: Sequence[str]) -> Outcomes:
    """One row per answer (caption): its CHAIR counts and its number of words."""
    rows = [(i, {**answer_counts([obj for _, obj in found], truth), "words": len(text.split())})
            for i, found, truth, text in zip(ids, mentions, truths, texts, strict=True)]
    return Outcomes.from_rows("chair", "caption", rows, binary=HALLUCINATING)


def chair_from_mentions(mentions: Sequence[Sequence[tuple[str, str]]], truths: Sequence[set[str]],
                        texts: Sequence[str], ids: Sequence | None = None) -> Result:
    """CHAIR_s, CHAIR_i per mention and per distinct object of an answer, and recall, from mentions.

    `chair_s_refine` counts only answers that mention some object (RLAIF-V's "response hallucination");
    recall pools, as Object HalBench does: distinct right objects over all ground-truth objects."""
    outcomes = chair_outcomes(ids if ids is not None else range(len(texts)), mentions, truths, texts)
    sums = outcomes.sums()
    return scored(outcomes, {"n_answers": len(texts), "n_mentions": int(sums.get("mentions", 0))})


EXTRACT_PROMPT = """You read a model's answer about an image and list the objects it says are in the image.

Question: {question}

Answer: {answer}

Treat the answer as true. List every visible object the answer explicitly mentions, by its name only:
leave out colours, materials and other properties, and leave out anything the answer says is absent.
Reply with a JSON list of strings, for example ["dog", "frisbee"], and [] when there is none."""


def parse_object_list(text: str) -> list[str] | None:
    """The JSON list of strings in a judge's reply (a ```json block or the last [...] in it), or None."""
    fenced = re.search(r"```(?:json)?\s*(.*?)```", text, re.DOTALL)
    candidates = [fenced.group(1)] if fenced else []
    candidates += reversed(re.findall(r"\[[^\[\]]*\]", text, re.DOTALL))
    for c in candidates:
        try:
            value = json.loads(c)
        except json.JSONDecodeError:
            continue
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
    return None


def llm_mentions(answers: Sequence[Answer], judge, phrase_objects: Callable[[str], list[tuple[str, str]]],
                 issues: Issues) -> list[list[tuple[str, str]] | None]:
    """Mentions from objects a judge extracts (RLAIF-V), each phrase mapped by `phrase_objects` and each
    word counted once. Answers of three words or fewer name nothing, as in the reference; a failed or
    unparsable judge reply gives None and is counted in `issues`. An answer whose line lists its `objects`
    (phrases some other extractor gave, e.g. the paper's judge) is read from them and not asked about."""
    from vlalign.feedback.judge import ChatRequest

    long = [a for a in answers if len(a.answer.split()) > 3]
    given = {a.line: a["objects"] for a in long if isinstance(a.get("objects"), list)}
    ask = [a for a in long if a.line not in given]
    if ask and judge is None:
        raise AnswerFileError(f"{issues.path}: {len(ask)} answers list no `objects`, and the benchmark extracts objects "
                              f"with a judge: pass one (--judge)")
    requests = [ChatRequest(EXTRACT_PROMPT.format(question=a.get("question", ""), answer=a.answer),
                            max_tokens=256, id=f"question_id={a.question_id}") for a in ask]
    texts = ask_judge(judge, requests, [a.line for a in ask], issues) if ask else []
    replies = {a.line: text for a, text in zip(ask, texts, strict=True)}
    extracted: dict[int, list[tuple[str, str]] | None] = {}
    for a in long:
        text = replies.get(a.line)
        phrases = given[a.line] if a.line in given else parse_object_list(text) if text is not None else None
        if text is not None and phrases is None:
            issues(a.line, "unparsable_judgement",
                   f"the judge's reply for question_id={a.question_id} holds no JSON list: {text[:200]!r}")
        if phrases is None:
            extracted[a.line] = None
            continue
        seen: dict[str, tuple[str, str]] = {}
        for p in phrases:
            for word, obj in phrase_objects(p):
                seen.setdefault(word, (word, obj))
        extracted[a.line] = list(seen.values())
    return [extracted.get(a.line, []) for a in answers]


@dataclass
class CocoAnswers:
    """An answer file read against COCO: the answers kept, their ground truth, the images no annotation
    file lists, and where bad lines went."""

    answers: list[Answer]
    truths: list[set[str]]
    missing: list
    truth: CocoTruth
    issues: Issues


def read_against_coco(answers_path: str | Path, annotations: Sequence[str | Path], reader: Reader,
                      skip_bad: bool, layout: Layout = PLAIN) -> CocoAnswers:
    """The answers (`image_id` on every line) and the ground truth of their images, read by `reader`. An
    image no annotation file lists is an error (robust) or has no objects at all (official, as the
    reference codes)."""
    issues = Issues(str(answers_path), skip=skip_bad)
    answers = read_answers(answers_path, [IMAGE_ID], issues, layout)
    truth = CocoTruth.load(annotations, reader, {image_key(a["image_id"]) for a in answers})
    known, truths, missing = truths_of(answers, truth, issues, empty_when_missing=reader.parse == "official")
    return CocoAnswers(known, truths, missing, truth, issues)


def truths_of(answers: Sequence[Answer], truth: CocoTruth, issues: Issues,
              empty_when_missing: bool) -> tuple[list[Answer], list[set[str]], list]:
    """The answers kept, their ground truth, and the image ids no annotation file lists."""
    kept, truths, missing = [], [], []
    for a in answers:
        key = image_key(a["image_id"])
        if key in truth.objects:
            kept.append(a)
            truths.append(truth.objects[key])
        elif empty_when_missing:
            missing.append(a["image_id"])
            kept.append(a)
            truths.append(set())
        else:
            issues(a.line, "image_without_annotation",
                   f"image_id {a['image_id']!r} is in none of the annotation files ({', '.join(truth.sources)}); "
                   f"pass the instances and captions files of the split it comes from (e.g. *_val2014.json)")
    issues.require(kept)
    return kept, truths, missing


def missing_report(missing: list) -> dict:
    """How many answers' images no annotation file lists (official modes score them with empty truth)."""
    if not missing:
        return {}
    return {"images_without_annotations": len(missing), "images_without_annotations_ids": missing[:10]}


def chair_result(answers_path: str | Path, annotations: Sequence[str | Path], judge=None,
                 skip_bad: bool = False, parse: str = "official") -> Result:
    """CHAIR metrics of an answer file (`image_id` on every line, or CHAIR's own caption list) against COCO
    annotations, with intervals over captions."""
    reader = chair_reader(parse)
    read = read_against_coco(answers_path, annotations, reader, skip_bad, CAPTIONS)
    known, truths = read.answers, read.truths
    judged = Issues(str(answers_path), skip=True)
    if judge is None:
        mentions: list = [reader.mentions(a.answer) for a in known]
    else:
        mentions = llm_mentions(known, judge, reader.vocab.phrase_objects, judged)
    kept = [(a, t, m) for a, t, m in zip(known, truths, mentions, strict=True) if m is not None]
    judged.require(kept)
    result = chair_from_mentions([m for *_, m in kept], [t for _, t, _ in kept], [a.answer for a, *_ in kept],
                                 [a.question_id for a, *_ in kept])
    notes = {**reader.report(), "ground_truth": read.truth.sources}
    if judge is not None:
        notes["extractor"] = f"judge:{judge.name}"
    return Result({**result.metrics, **notes, **missing_report(read.missing), **read.issues.report(),
                   **judged.report("judge_skipped")}, result.outcomes)


def score_chair(answers_path: str | Path, annotations: Sequence[str | Path], judge=None,
                skip_bad: bool = False, parse: str = "official") -> dict:
    """CHAIR metrics of an answer file (see `chair_result`)."""
    return chair_result(answers_path, annotations, judge, skip_bad, parse).metrics
