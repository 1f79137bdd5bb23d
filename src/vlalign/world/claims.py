"""The world's claim splitters (RLAIF-V's divide step, by rule, for the world's language): every object an
answer names is an existence claim; the `world-*` variants add count claims for the totals they name."""

from __future__ import annotations

import re

from vlalign.feedback.claims import YES_NO_REPLY, Claim, EachAnswer, sentences
from vlalign.world.scene import COLORS, SHAPES, SIZES
from vlalign.world.text import DESCRIBE_INSTRUCTIONS, NUMBERS, PLURALS, SINGULARS, existence_question

_SHAPE_WORDS = "|".join(sorted([*SHAPES, *SINGULARS], key=len, reverse=True))
_NUMBER_WORDS = "|".join(NUMBERS[1:])
_OBJECT = re.compile(
    rf"\b(?:(?P<size>{'|'.join(SIZES)})\s+)?(?:(?P<color>{'|'.join(COLORS)})\s+)?(?P<shape>{_SHAPE_WORDS})\b")
_NEGATED = re.compile(r"\b(no|not|without)\s+(\w+\s+){0,2}$")
_ABSENT = re.compile(r"\bno\s+(\w+\s+){0,2}$")  # "there is no (big red) star": a claim of absence
# "a red circle" brings in an object and "two circles" two; "the red circle" names one again
_INTRODUCED = re.compile(rf"\b(?P<n>a|an|{_NUMBER_WORDS})\s+$")
_TOTAL = re.compile(rf"\b(?P<n>{_NUMBER_WORDS})\s+(?:shapes?|objects?)\b")  # "the image shows seven shapes"
TOTAL_QUESTION = "how many objects are there?"
# which totals are count claims: what a count answer states, what a description states, what it implies
COUNT_KINDS = frozenset({"answers", "stated", "implied"})


def count_answer(n: int, noun: str) -> str:
    """The world's answer to a count question: "there are no circles.", "there is one object.", ..."""
    plural = PLURALS.get(noun, f"{noun}s")
    if n == 0:
        return f"there are no {plural}."
    return f"there is one {noun}." if n == 1 else f"there are {NUMBERS[n]} {plural}."


def count_claim(n: int, noun: str, question: str, least: int) -> Claim:
    """"there are n <noun>s", checked by the count question: n's answer must beat every other number's."""
    others = [k for k in range(least, len(NUMBERS)) if k != n]
    return Claim(count_answer(n, noun), question, answers=tuple(count_answer(k, noun) for k in [n, *others]))


class WorldClaims(EachAnswer):
    """One existence claim per object the answer names ("there is a big red circle"), asked back as
    "is there a red circle in the image?"; naming it again is the same claim. "there is no star" is a claim
    of absence; other negated mentions ("not next to the star") say nothing about existence and are not
    claims. A bare "yes." or "no." to an existence question claims what the question asks.

    Counts are claims too, checked by the count question the world's models answer ("how many objects are
    there?"): the total an answer states ("the image shows seven shapes"), and, for a description (which
    lists every object), the total it implies by the objects it brings in ("a red circle ... a blue star
    ... a red circle": three), so a description that repeats an object pays for the repeat. Counts of one
    shape ("two circles") are not checked: the world's models count a shape far less reliably than all
    objects, so such a claim would be noise.

    Which totals are claims is the splitter's choice (`counts`, any of COUNT_KINDS): `answers`, the total a
    count answer states ("there are three objects." to "how many objects are there?"); `stated`, the total
    a description states; `implied`, the total it implies. The splitters `world` (none), `world-answers`,
    `world-implied` (answers and implied) and `world-counts` (all three) name them. A description's stated
    total costs the most: the rejected answer mostly overstates it (it counts the objects it imagined), so
    pairs that differ in that word teach DPO "say a smaller number", and the count answers follow; the
    README's results give what each choice measured."""

    def __init__(self, counts: frozenset[str] = frozenset()):
        unknown = set(counts) - COUNT_KINDS
        if unknown:
            raise ValueError(f"unknown count claim kinds {sorted(unknown)}; choose from {sorted(COUNT_KINDS)}")
        self.count_kinds = frozenset(counts)

    def __call__(self, answer: str, instruction: str | None = None) -> list[Claim]:
        claims: list[Claim] = []
        seen: set[str] = set()
        introduced = 0
        for sentence in sentences(answer.lower()):
            for m in _OBJECT.finditer(sentence):
                before = sentence[:m.start()]
                absent = bool(_ABSENT.search(before))
                if _NEGATED.search(before) and not absent:
                    continue
                shape = SINGULARS.get(m["shape"], m["shape"])
                brought = _INTRODUCED.search(before)
                introduced += 0 if brought is None else 1 if brought["n"] in ("a", "an") else NUMBERS.index(brought["n"])
                words = " ".join(w for w in (m["size"], m["color"], shape) if w)
                question = existence_question(shape, m["color"])
                if question in seen:
                    continue
                seen.add(question)
                claims.append(Claim(f"there is no {words}." if absent else f"there is a {words}.", question,
                                    holds_if_yes=not absent))
        asked = (instruction or "").strip().lower()
        describes = asked in DESCRIBE_INSTRUCTIONS
        total_kind = "stated" if describes else "answers"  # whose total a stated number is
        claims += self.counts(answer.lower() if total_kind in self.count_kinds else "",
                              introduced if describes and "implied" in self.count_kinds else 0)
        reply = YES_NO_REPLY.match(answer)
        if reply and asked and asked not in seen and _asks_existence(asked):
            said = reply[1].lower()
            claims.insert(0, Claim(f"{said}: {instruction.strip()}", asked, holds_if_yes=said == "yes"))
        return claims

    @staticmethod
    def counts(answer: str, introduced: int) -> list[Claim]:
        """The answer's total-count claims: the first total it states, and the number of objects it brings
        in where that differs (one claim when they agree)."""
        total = _TOTAL.search(answer)
        totals = dict.fromkeys([*([NUMBERS.index(total["n"])] if total else []),
                                *([min(introduced, len(NUMBERS) - 1)] if introduced else [])])
        return [count_claim(n, "object", TOTAL_QUESTION, least=1) for n in totals]


def _asks_existence(question: str) -> bool:
    """Whether the (stripped, lower-case) question is the world's existence question about one object."""
    m = _OBJECT.search(question)
    return bool(m) and question == existence_question(SINGULARS.get(m["shape"], m["shape"]), m["color"])
