"""Benchmarks of AI feedback itself: which of two answers a judge or labeler prefers.

The feedback under test is a `Feedback`: a chat judge (any `make_judge` spec: `api:MODEL` or a model in
this process) asked in a `style`, or a labeler model whose verdicts on an answer's claims score it:

- `pairwise`: both answers in one request; the judge names the better one ("Overall Judgment: Answer 2 is
  better"), as VL-RewardBench asks.
- a rating style (`vlfeedback`, or one a plugin registers, such as `world`): each answer rated on
  VLFeedback's three aspects; the higher mean rating wins, as Silkie's pairs are made.
- a labeler: each answer split into claims (`splitter`), each claim checked by the labeler's P(yes); the
  answer with fewer rejected claims wins, as RLAIF-V's pairs are made.

A tie, a missing rating or an unreadable reply prefers neither answer (None).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

PAIRWISE = "pairwise"


@dataclass(frozen=True)
class Feedback:
    """The judge (with its `style`) or the labeler (model, processor) under test; `splitter` names the
    labeler's claim splitter; `policy` the model whose answers a benchmark has the labeler check, where it
    samples them."""

    judge: object = None
    style: str | None = None
    labeler: tuple | None = None
    labeler_name: str = ""
    splitter: str | None = None
    policy: str | None = None

    @property
    def name(self) -> str:
        if self.labeler is not None:
            return f"labeler:{self.labeler_name}"
        return f"{self.judge.name} ({self.style or PAIRWISE})" if self.judge is not None else "none"


@dataclass(frozen=True)
class PairItem:
    """Two answers to one request about one image."""

    id: str
    image: Image.Image | None
    query: str
    answers: tuple[str, str]


@dataclass(frozen=True)
class Choice:
    """What the feedback said about a pair: the answer it prefers as shown (`shown`: 1 or 2 in the order
    the judge saw them, or whatever number its reply names), whether the answers were shown swapped,
    and its reply (pairwise only)."""

    shown: int | None
    swapped: bool = False
    reply: str | None = None

    @property
    def index(self) -> int | None:
        """The preferred answer's index in the item (0 or 1), or None."""
        if self.shown not in (1, 2):
            return None
        return (self.shown - 1) ^ int(self.swapped)


def swapped(answers: Sequence[str]) -> bool:
    """Whether the pair is shown in reverse order: when the answers' lengths sum to an odd number (the
    deterministic rule lmms-eval and VLMEvalKit use for VL-RewardBench, against position bias)."""
    return sum(len(a) for a in answers) % 2 == 1


PAIRWISE_PROMPT = """You are judging two answers an AI assistant gave to a question about this image.

Question: {query}

Answer 1: {first}

Answer 2: {second}

Weigh how well each answer agrees with what the image shows, how completely it answers, how clearly it is
written and how relevant it is. Explain your reasoning briefly, then end with your verdict in exactly this
form: "Overall Judgment: Answer 1 is better." or "Overall Judgment: Answer 2 is better." """

_VERDICT = re.compile(r"(?:overall judgment|therefore)\s*.*\s*-*\s*answer\s*(\d+)\s*is\s*(?:the\s*)?"
                      r"(?:slightly\s*)?better", re.IGNORECASE)


def read_pairwise(reply: str) -> int | None:
    """The answer number a pairwise reply names, by VL-RewardBench's rule: newlines and "*" removed, the
    last "Answer N is (the) (slightly) better" after the first "Overall Judgment" or "Therefore"."""
    found = _VERDICT.search(reply.replace("\n", "").replace("*", ""))
    return int(found.group(1)) if found else None


def _pairwise(feedback: Feedback, items: Sequence[PairItem]) -> list[Choice]:
    from vlalign.feedback.judge import ChatRequest

    flips = [swapped(i.answers) for i in items]
    requests = [ChatRequest(PAIRWISE_PROMPT.format(query=i.query, first=i.answers[int(f)], second=i.answers[1 - int(f)]),
                            (i.image,) if i.image is not None else (), max_tokens=1024, id=i.id)
                for i, f in zip(items, flips, strict=True)]
    replies = feedback.judge.complete(requests)
    return [Choice(read_pairwise(r.text) if r.ok else None, f, r.text if r.ok else None)
            for r, f in zip(replies, flips, strict=True)]


def _better(scores: Sequence[float | None]) -> int | None:
    """1 or 2 for the higher of two scores; None for a tie or a missing one."""
    a, b = scores
    if a is None or b is None or a == b:
        return None
    return 1 if a > b else 2


def _rated(feedback: Feedback, items: Sequence[PairItem]) -> list[Choice]:
    from vlalign.feedback.ratings import mean_rating
    from vlalign.feedback.vlfeedback import RatingJudge

    rated = RatingJudge(feedback.judge, style=feedback.style).rate(
        [(i.id, i.image, i.query, list(i.answers)) for i in items])
    return [Choice(_better([mean_rating(r.ratings) for r in pair])) for pair in rated]


def _labeled(feedback: Feedback, items: Sequence[PairItem]) -> list[Choice]:
    from vlalign.feedback.labeler import label_each
    from vlalign.feedback.splitters import make_splitter

    model, processor = feedback.labeler
    split = make_splitter(feedback.splitter or "sentences", feedback.judge)
    labeled = label_each(model, processor, [i.image for i in items for _ in i.answers],
                         [a for i in items for a in i.answers], split,
                         instructions=[i.query for i in items for _ in i.answers],
                         keys=[f"{i.id}/{k}" for i in items for k in range(len(i.answers))])
    scores = [None if isinstance(f, Exception) else f.score for f in labeled]
    return [Choice(_better(scores[2 * k:2 * k + 2])) for k in range(len(items))]


def choose(feedback: Feedback, items: Sequence[PairItem]) -> list[Choice]:
    """The feedback's preference on every pair."""
    if feedback.labeler is not None:
        return _labeled(feedback, items)
    if feedback.judge is None:
        raise ValueError("a benchmark of AI feedback needs a judge (--judge) or a labeler (--labeler)")
    if (feedback.style or PAIRWISE) == PAIRWISE:
        return _pairwise(feedback, items)
    return _rated(feedback, items)
