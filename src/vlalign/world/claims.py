"""The world's claim splitter: every object an answer names is an existence claim (RLAIF-V's divide step,
by rule, for the world's language)."""

from __future__ import annotations

import re

from vlalign.feedback.claims import YES_NO_REPLY, Claim, EachAnswer, sentences
from vlalign.world.scene import COLORS, SHAPES, SIZES
from vlalign.world.text import SINGULARS, existence_question

_SHAPE_WORDS = "|".join(sorted([*SHAPES, *SINGULARS], key=len, reverse=True))
_OBJECT = re.compile(
    rf"\b(?:(?P<size>{'|'.join(SIZES)})\s+)?(?:(?P<color>{'|'.join(COLORS)})\s+)?(?P<shape>{_SHAPE_WORDS})\b")
_NEGATED = re.compile(r"\b(no|not|without)\s+(\w+\s+){0,2}$")
_ABSENT = re.compile(r"\bno\s+(\w+\s+){0,2}$")  # "there is no (big red) star": a claim of absence


class WorldClaims(EachAnswer):
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
