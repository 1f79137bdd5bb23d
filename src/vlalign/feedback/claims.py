"""Divide: split an answer into atomic claims, each with a yes/no question that checks it (RLAIF-V).

`SentenceClaims` is the rule-based fallback for plain English (one claim per sentence);
`vlalign.feedback.llm_claims.LLMClaims` asks a chat model; plugins add their own (the world's splitter
knows its language). All answer `split_many(answers, instructions, keys)`, so a model-backed splitter
can batch its requests; `vlalign.feedback.splitters.make_splitter` builds one by name. `split_each` asks
any of them for every answer's claims or the error that says why it has none, so one bad answer of a batch
costs only itself where the splitter can fail one answer at a time (the LLM splitter).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from vlalign.feedback.judge import JudgeError

_SENTENCE = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class Claim:
    """A fact an answer states and the yes/no question that checks it. `holds_if_yes` is False for a
    claim of absence ("there is no star" is checked by "is there a star?", and holds when "no" wins).

    With `answers`, the question is not yes/no: the claim holds when the first of them is the labeler's
    likeliest answer to it among them all (a count: "there are three objects." against every other number).
    """

    text: str
    question: str
    holds_if_yes: bool = True
    answers: tuple[str, ...] = ()


class ClaimSplitter(Protocol):
    def split_many(self, answers: Sequence[str], instructions: Sequence[str] | None = None,
                   keys: Sequence[str] | None = None) -> list[list[Claim]]: ...


Outcome = list[Claim] | Exception  # an answer's claims, or why it has none


def split_each(split: ClaimSplitter, answers: Sequence[str], instructions: Sequence[str] | None = None,
               keys: Sequence[str] | None = None) -> list[Outcome]:
    """Per answer: its claims, or the error that says why it has none. A splitter that can fail one answer
    at a time (`split_each` of its own) does; the others give every answer's claims or raise."""
    each = getattr(split, "split_each", None)
    return each(answers, instructions, keys) if each is not None else split.split_many(answers, instructions, keys)


def first_failure(outcomes: Sequence[object]) -> None:
    """Raise the first error among `outcomes` (a `JudgeError` counting the others), if there is one."""
    errors = [o for o in outcomes if isinstance(o, Exception)]
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise JudgeError(f"{errors[0]} (and {len(errors) - 1} more answers failed)")


class EachAnswer:
    """Rule-based splitters read every answer on its own, with `__call__(answer, instruction)`."""

    def split_many(self, answers: Sequence[str], instructions: Sequence[str] | None = None,
                   keys: Sequence[str] | None = None) -> list[list[Claim]]:
        return [self(a, q) for a, q in zip(answers, instructions or [None] * len(answers), strict=True)]


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(text.strip()) if s.strip()]


YES_NO_REPLY = re.compile(r"\s*(yes|no)\b", re.IGNORECASE)  # an answer that opens with yes or no (match())


class SentenceClaims(EachAnswer):
    """Plain-English fallback: each sentence is a claim, asked as a true/false question."""

    def __call__(self, answer: str, instruction: str | None = None) -> list[Claim]:
        return [Claim(s, f"Is the following statement about the image correct? {s} Answer yes or no.")
                for s in sentences(answer)]
