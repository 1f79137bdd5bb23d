"""Divide: split an answer into atomic claims, each with a yes/no question that checks it (RLAIF-V).

`WorldClaims` is the rule-based splitter for the world's language; `SentenceClaims` is the fallback for
plain English (one claim per sentence); `vlalign.feedback.llm_claims.LLMClaims` asks a chat model. All
three answer `split_many(answers, instructions, keys)`, so a model-backed splitter can batch its requests.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from vlalign.world.scene import COLORS, SHAPES, SIZES
from vlalign.world.text import SINGULARS, existence_question

_SENTENCE = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class Claim:
    """A fact an answer states and the yes/no question that checks it. `holds_if_yes` is False for a
    claim of absence ("there is no star" is checked by "is there a star?", and holds when "no" wins)."""

    text: str
    question: str
    holds_if_yes: bool = True


class ClaimSplitter(Protocol):
    def split_many(self, answers: Sequence[str], instructions: Sequence[str] | None = None,
                   keys: Sequence[str] | None = None) -> list[list[Claim]]: ...


class _EachAnswer:
    """Rule-based splitters read every answer on its own, with `__call__(answer, instruction)`."""

    def split_many(self, answers: Sequence[str], instructions: Sequence[str] | None = None,
                   keys: Sequence[str] | None = None) -> list[list[Claim]]:
        return [self(a, q) for a, q in zip(answers, instructions or [None] * len(answers), strict=True)]


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(text.strip()) if s.strip()]


_SHAPE_WORDS = "|".join(sorted([*SHAPES, *SINGULARS], key=len, reverse=True))
_OBJECT = re.compile(
    rf"\b(?:(?P<size>{'|'.join(SIZES)})\s+)?(?:(?P<color>{'|'.join(COLORS)})\s+)?(?P<shape>{_SHAPE_WORDS})\b")
_NEGATED = re.compile(r"\b(no|not|without)\s+(\w+\s+){0,2}$")
_ABSENT = re.compile(r"\bno\s+(\w+\s+){0,2}$")  # "there is no (big red) star": a claim of absence
YES_NO_REPLY = re.compile(r"\s*(yes|no)\b", re.IGNORECASE)  # an answer that opens with yes or no (match())


class WorldClaims(_EachAnswer):
    """One existence claim per object the answer names ("there is a big red circle"), asked back as
    "is there a red circle in the image?"; "there is no star" is a claim of absence. Other negated mentions
    ("not next to the star") say nothing about existence and are not claims. A bare "yes." or "no." to an
    existence question claims what the question asks, so short answers are checked too."""

    def __call__(self, answer: str, instruction: str | None = None) -> list[Claim]:
        claims: list[Claim] = []
        seen: set[str] = set()
        for sentence in sentences(answer.lower()):
            for m in _OBJECT.finditer(sentence):
                before = sentence[:m.start()]
                absent = bool(_ABSENT.search(before))
                if _NEGATED.search(before) and not absent:
                    continue
                shape = SINGULARS.get(m["shape"], m["shape"])
                words = " ".join(w for w in (m["size"], m["color"], shape) if w)
                question = existence_question(shape, m["color"])
                if question in seen:
                    continue
                seen.add(question)
                claims.append(Claim(f"there is no {words}." if absent else f"there is a {words}.", question,
                                    holds_if_yes=not absent))
        reply = YES_NO_REPLY.match(answer)
        question = (instruction or "").strip().lower()
        if reply and question and question not in seen and _asks_existence(question):
            said = reply[1].lower()
            claims.insert(0, Claim(f"{said}: {instruction.strip()}", question, holds_if_yes=said == "yes"))
        return claims


def _asks_existence(question: str) -> bool:
    """Whether the (stripped, lower-case) question is the world's existence question about one object."""
    m = _OBJECT.search(question)
    return bool(m) and question == existence_question(SINGULARS.get(m["shape"], m["shape"]), m["color"])


class SentenceClaims(_EachAnswer):
    """Plain-English fallback: each sentence is a claim, asked as a true/false question."""

    def __call__(self, answer: str, instruction: str | None = None) -> list[Claim]:
        return [Claim(s, f"Is the following statement about the image correct? {s} Answer yes or no.")
                for s in sentences(answer)]


def make_splitter(name: str, judge: str | None = None) -> ClaimSplitter:
    """The splitter a config names: world (rule-based, the world's language), sentences (plain English),
    or llm (a chat model through the judge backends, `judge` names it)."""
    if name == "world":
        return WorldClaims()
    if name == "sentences":
        return SentenceClaims()
    if name == "llm":
        from vlalign.feedback.judges import make_judge
        from vlalign.feedback.llm_claims import LLMClaims

        if not judge:
            raise ValueError("the llm claim splitter needs a judge: set judge (e.g. api:gpt-4o or a model path)")
        return LLMClaims(make_judge(judge))
    raise ValueError(f"unknown claim splitter {name!r}; choose world, sentences or llm")
