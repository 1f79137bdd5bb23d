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
    text: str
    question: str


class ClaimSplitter(Protocol):
    def split_many(self, answers: Sequence[str], instructions: Sequence[str] | None = None,
                   keys: Sequence[str] | None = None) -> list[list[Claim]]: ...


class _EachAnswer:
    """Rule-based splitters read every answer on its own, with `__call__(answer)`."""

    def split_many(self, answers: Sequence[str], instructions: Sequence[str] | None = None,
                   keys: Sequence[str] | None = None) -> list[list[Claim]]:
        return [self(a) for a in answers]


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(text.strip()) if s.strip()]


_SHAPE_WORDS = "|".join(sorted([*SHAPES, *SINGULARS], key=len, reverse=True))
_OBJECT = re.compile(
    rf"\b(?:(?P<size>{'|'.join(SIZES)})\s+)?(?:(?P<color>{'|'.join(COLORS)})\s+)?(?P<shape>{_SHAPE_WORDS})\b")
_NEGATED = re.compile(r"\b(no|not|without)\s+(\w+\s+){0,2}$")


class WorldClaims(_EachAnswer):
    """One existence claim per object the answer names ("there is a big red circle"), asked back as
    "is there a red circle in the image?". Negated mentions ("there is no star") are not claims."""

    def __call__(self, answer: str) -> list[Claim]:
        claims: list[Claim] = []
        seen: set[str] = set()
        for sentence in sentences(answer.lower()):
            for m in _OBJECT.finditer(sentence):
                if _NEGATED.search(sentence[:m.start()]):
                    continue
                shape = SINGULARS.get(m["shape"], m["shape"])
                words = [w for w in (m["size"], m["color"], shape) if w]
                question = existence_question(shape, m["color"])
                if question in seen:
                    continue
                seen.add(question)
                claims.append(Claim(f"there is a {' '.join(words)}.", question))
        return claims


class SentenceClaims(_EachAnswer):
    """Plain-English fallback: each sentence is a claim, asked as a true/false question."""

    def __call__(self, answer: str) -> list[Claim]:
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
