"""Answer files: one JSON object per line, shared by every scorer.

Each line needs `question_id` and `answer` plus the benchmark's own fields. A bad line is an error that
names the file, the line, the field and the fix; with `Issues(skip=True)` it is instead counted by reason
and the count lands in the metrics (`skipped`), so nothing is ever dropped silently.

Files as benchmarks release them are read too: a whole-file JSON list of records (AMBER's and
HallusionBench's result files, CHAIR caption lists), CHAIR's own `{"imgToEval": {...}}` caption file, and
records that name the two fields otherwise (a `Layout`: LLaVA's answer files write the answer as `text`
beside the `prompt`, AMBER's `id` and `response`, CHAIR's `image_id` and `caption`). Ids are kept as
the file has them.

Also here, because every benchmark shares them: `Question`, what `vlalign eval` asks and how its answer
record is made, and `ask_judge`, which sends judged scorers' requests and counts failed ones.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image


class AnswerFileError(ValueError):
    """A record that cannot be scored; the message names the file, the line and the fix."""


PARSE_MODES = ("official", "robust")


def check_parse(parse: str) -> str:
    """`parse` when it names a scoring mode: official (the benchmark's own script, quirks included) or
    robust (vlalign's reading of what a person would mean); else an error that lists them."""
    if parse not in PARSE_MODES:
        raise ValueError(f"unknown parse mode {parse!r}; use one of {', '.join(PARSE_MODES)}")
    return parse


@dataclass(frozen=True)
class Field:
    """A field every record must carry. `help` says what it holds and is quoted in errors."""

    name: str
    help: str
    types: tuple[type, ...] = (str,)
    choices: tuple[str, ...] | None = None
    lower: bool = False


QUESTION_ID = Field("question_id", "a unique id of the question (string or integer)", (str, int))
ANSWER = Field("answer", "the model's answer text", (str,))
YES_NO_LABEL = Field("label", "the ground-truth answer, yes or no", choices=("yes", "no"), lower=True)


@dataclass(frozen=True)
class Answer:
    """One record and the line it came from (1-based), so later checks can point at it."""

    line: int
    record: dict

    @property
    def question_id(self) -> str | int:
        return self.record["question_id"]

    @property
    def answer(self) -> str:
        return self.record["answer"]

    def __getitem__(self, key: str) -> Any:
        return self.record[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.record.get(key, default)


@dataclass(frozen=True)
class Question:
    """A question for `vlalign eval`: its prompt, how to get its image, and the fields its answer record
    carries (everything the scorer needs). `long` marks free-form answers, which get more tokens; `image`
    None asks without one (HallusionBench's questions without a figure)."""

    question_id: str | int
    prompt: str
    image: Callable[[], Image.Image] | None
    record: dict
    long: bool = False


def is_file_name(value: str) -> bool:
    """A short name with an extension ("COCO_val2014_000000000042.jpg"), not inline base64 bytes."""
    return len(value) < 512 and re.search(r"\.[A-Za-z0-9]{2,5}$", value) is not None


def open_image(value: str, images: Path | None, subdirs: Sequence[str] = ("",), where: str = "") -> Image.Image:
    """An image named by file (under `images`, in one of `subdirs`) or given inline as base64 bytes."""
    roots = [images / d if images else Path(d) for d in subdirs]
    if not is_file_name(value):
        try:
            return Image.open(io.BytesIO(base64.b64decode(value, validate=True))).convert("RGB")
        except (binascii.Error, OSError, ValueError) as e:
            raise ValueError(f"{where}image is neither a file name nor base64 image bytes ({e})") from e
    for path in (r / value for r in roots):
        if path.is_file():
            return Image.open(path).convert("RGB")
    tried = ", ".join(str(r / value) for r in roots)
    raise FileNotFoundError(f"{where}image {value!r} not found (tried {tried}); pass --images with the "
                            f"folder that holds the benchmark's images")


@dataclass
class Issues:
    """Where bad records go: raised at once, or (skip=True) counted per reason with their line numbers."""

    path: str
    skip: bool = False
    counts: Counter = field(default_factory=Counter)
    lines: dict[str, list[int]] = field(default_factory=dict)
    unit: str = "line"  # what a record's number counts: lines of JSON lines, entries of a JSON list

    def __call__(self, line: int, reason: str, message: str) -> None:
        """Report a bad record at `line` (0 for the file as a whole)."""
        if not self.skip:
            where = f"{self.path}, {self.unit} {line}" if line else self.path
            raise AnswerFileError(f"{where}: {message}")
        self.counts[reason] += 1
        self.lines.setdefault(reason, []).append(line)

    def report(self, name: str = "skipped") -> dict:
        """`skipped` (reason -> count) and the first lines of each reason, or nothing when all was well."""
        if not self.counts:
            return {}
        return {name: dict(self.counts), f"{name}_lines": {k: v[:10] for k, v in self.lines.items()}}

    def require(self, items: Sequence) -> None:
        """Refuse to score nothing: every record was skipped."""
        if not items:
            raise AnswerFileError(f"{self.path}: nothing left to score; skipped {dict(self.counts)}")


_KIND_NAMES = {int: "integer", str: "string", list: "list", dict: "JSON object"}


def _check(value: Any, f: Field) -> tuple[Any, str | None]:
    """The value (normalised) and None, or what is wrong with it."""
    if not isinstance(value, f.types) or (isinstance(value, bool) and bool not in f.types):
        kinds = " or ".join(_KIND_NAMES.get(t, t.__name__) for t in f.types)
        return value, f"field {f.name!r} must be a {kinds} ({f.help}), got {json.dumps(value)}"
    if f.choices is not None:
        norm = value.strip().lower() if f.lower and isinstance(value, str) else value
        if norm not in f.choices:
            return value, (f"unknown {f.name} {json.dumps(value)}; use one of {', '.join(map(str, f.choices))} "
                           f"({f.help})")
        return norm, None
    return value, None


def _problem(record: dict, fields: Sequence[Field]) -> tuple[str, str] | None:
    """Check (and normalise in place) `fields` of a record: None, or (reason, message) for the first fault."""
    names = ", ".join(f.name for f in fields)
    for f in fields:
        if f.name not in record:
            return "missing_field", f"missing field {f.name!r} ({f.help}); every line needs {names}"
        record[f.name], msg = _check(record[f.name], f)
        if msg:
            return f"bad_{f.name}", msg
    return None


def validate(answers: Sequence[Answer], fields: Sequence[Field], issues: Issues) -> list[Answer]:
    """The answers whose `fields` are all present and valid; the others go to `issues`."""
    kept = []
    for a in answers:
        problem = _problem(a.record, fields)
        if problem:
            issues(a.line, *problem)
        else:
            kept.append(a)
    return kept


@dataclass(frozen=True)
class Layout:
    """Other names a released file gives the answer and the question id. `answer`: (field, a field that must
    be beside it, or None), the first present is the answer; `question_id`: fields, the first present is
    the id; `number_rows`: a record with none of them is numbered by its line (or entry), from 1."""

    answer: tuple[tuple[str, str | None], ...] = ()
    question_id: tuple[str, ...] = ()
    number_rows: bool = False

    def apply(self, record: dict, number: int) -> None:
        """Fill `answer` and `question_id` from the other names, in place."""
        if "answer" not in record:
            name = next((k for k, beside in self.answer if k in record and (beside is None or beside in record)),
                        None)
            if name is not None:
                record["answer"] = record[name]
        if "question_id" not in record:
            name = next((k for k in self.question_id if k in record), None)
            if name is not None:
                record["question_id"] = record[name]
            elif self.number_rows:
                record["question_id"] = number


PLAIN = Layout()


def _entries(path: Path) -> list[tuple[int, str]] | list[tuple[int, object]]:
    """(number, raw line) for a JSON-lines file, or (number, entry) for a file that is one JSON list or a
    CHAIR caption file (`imgToEval`), numbered from 1."""
    text = path.read_text(encoding="utf-8")
    if text.lstrip()[:1] in ("[", "{"):
        try:
            whole = json.loads(text)
        except json.JSONDecodeError:
            whole = None
        if isinstance(whole, dict) and isinstance(whole.get("imgToEval"), dict):
            whole = list(whole["imgToEval"].values())
        if isinstance(whole, list):
            return list(enumerate(whole, start=1))
    return list(enumerate(text.splitlines(), start=1))


def read_records(path: str | Path, fields: Sequence[Field], issues: Issues | None = None,
                 kind: str = "records", layout: Layout = PLAIN, unique: bool = True) -> list[Answer]:
    """Records of a JSON-lines file (or a JSON list, see the module notes) with `fields` checked; blank lines
    are allowed, an empty file is not. `unique`: a `question_id` used twice is a bad record."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {kind} file at {path}")
    issues = issues or Issues(str(path))
    names = ", ".join(f.name for f in fields)
    out: list[Answer] = []
    seen: dict[Any, int] = {}
    entries = _entries(path)
    if entries and not isinstance(entries[0][1], str):
        issues.unit = "entry"
    for n, item in entries:
        if isinstance(item, str):
            if not item.strip():
                continue
            try:
                record = json.loads(item)
            except json.JSONDecodeError as e:
                issues(n, "invalid_json", f"not valid JSON ({e.msg} at column {e.colno}); write one JSON "
                                          f"object per line")
                continue
        else:
            record = item
        if not isinstance(record, dict):
            issues(n, "not_an_object", f"expected a JSON object with {names}, got {type(record).__name__}")
            continue
        layout.apply(record, n)
        problem = _problem(record, fields)
        if problem:
            issues(n, *problem)
            continue
        if unique and "question_id" in record:
            qid = record["question_id"]
            if qid in seen:
                issues(n, "duplicate_question_id",
                       f"question_id {json.dumps(qid)} already used on {issues.unit} {seen[qid]}; ids must be unique")
                continue
            seen[qid] = n
        out.append(Answer(n, record))
    if not out and not issues.counts:
        raise AnswerFileError(f"{path}: no {kind} in the file; expected one JSON object per line with {names}")
    return out


def ask_judge(judge, requests: Sequence, lines: Sequence[int], issues: Issues) -> list[str | None]:
    """The judge's reply texts in request order; a failed request is counted in `issues` and gives None."""
    replies = judge.complete(list(requests))
    if len(replies) != len(requests):
        raise RuntimeError(f"judge {judge.name!r} answered {len(replies)} of {len(requests)} requests")
    texts: list[str | None] = []
    for request, reply, line in zip(requests, replies, lines, strict=True):
        if not reply.ok:
            issues(line, "judge_error", f"judge {judge.name!r} failed on {request.id}: {reply.error}")
        texts.append(reply.text)
    return texts


def files_in(paths: Sequence[str | Path], patterns: Sequence[str], what: str, hint: str = "") -> list[Path]:
    """The files given, and in each folder given the files matching `patterns` (an error, naming `what`
    and `hint`, for a folder with none or a path that is neither)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted({f for pattern in patterns for f in p.glob(pattern)})
            if not found:
                raise FileNotFoundError(f"no {what} ({', '.join(patterns)}) in {p}{hint}")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"no {what} or folder of them at {p}")
    return files


def judge_note(judge, paper: str) -> dict:
    """Which judge produced a judged benchmark's figures, the paper's judge, and, when they differ, that the
    figures are a substitute's (printed as a warning; see the README on checking a substitute)."""
    out = {"judge": judge.name, "paper_judge": paper}
    if judge.name != f"api:{paper}":
        out["judge_substituted"] = (f"rated by {judge.name}, not the paper's {paper}: the figures are comparable "
                                    f"to the paper's only as far as this judge agrees with it")
    return out


def read_answers(path: str | Path, fields: Sequence[Field] = (), issues: Issues | None = None,
                 layout: Layout = PLAIN) -> list[Answer]:
    """An answer file: `question_id`, `answer` and the benchmark's `fields` on every line (other names for
    the first two as `layout` allows)."""
    return read_records(path, [QUESTION_ID, ANSWER, *fields], issues, kind="answers", layout=layout)
