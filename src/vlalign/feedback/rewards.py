"""Rewards for online RL as data: weighted components, each read from a model's verdict on an answer, never
from ground truth (on the world the scene graph grades, and no reward reads it).

    rejected_claims   minus the claims the labeler rejects (RLAIF-V's score)          model: the labeler, or self
    accepted_claims   the claims it accepts
    claim_precision   accepted / all claims (0 for an answer that claims nothing)
    rating            a VLFeedback judge's 1-5 rating, one aspect or their mean        model: the judge (api: too)
    implicit          a DPO-trained model's implicit reward beta * log(pi / pi_ref)   model: the DPO policy
    judge             any chat judge: a prompt, and a pattern that reads the number    model: api:MODEL@URL or local
    length            words in the answer (negative weights penalise)                 no model

Components of the claim kinds that name the same labeler and splitter share one labeling pass. A
component whose model fails on an answer (a request that fails after its retries, a reply without a
number in range) leaves the answer without a reward: it is logged, and the answer left out of its group,
never given a guessed value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from vlalign.config import ConfigError, from_dict, to_dict
from vlalign.feedback.judge import JudgeError
from vlalign.feedback.judge_api import excerpt
from vlalign.feedback.ratings import ASPECTS
from vlalign.models.settings import Runtime
from vlalign.plugins import RATING_STYLES, SPLITTERS

SELF = "self"  # a component's model: the policy scores its own answers
CLAIM_KINDS = ("rejected_claims", "accepted_claims", "claim_precision")
KINDS = (*CLAIM_KINDS, "rating", "implicit", "judge", "length")


@dataclass(frozen=True)
class ClaimOptions:
    """The claim kinds' settings: how answers become claims."""

    splitter: str = "llm"  # llm (asks `judge`), sentences, or a plugin's (world, world-implied, ...)
    judge: str | None = None  # the llm splitter's chat model: a model directory or api:MODEL[@URL]
    judge_runtime: Runtime | None = None  # how a local splitter judge loads (null: as the policy)

    def __post_init__(self) -> None:
        if self.splitter not in SPLITTERS:
            raise ValueError(f"unknown splitter {self.splitter!r}; known: {', '.join(SPLITTERS.names())}")
        if self.splitter == "llm" and not self.judge:
            raise ValueError("the llm splitter asks a chat model: set options.judge, or choose another splitter")


@dataclass(frozen=True)
class RatingOptions:
    """The rating kind's settings."""

    aspect: str | None = None  # one aspect (Helpfulness, Visual Faithfulness, Ethical Considerations); null: their mean
    style: str = "vlfeedback"  # how the judge is asked: vlfeedback (the group's answers in one request) or a plugin's per-answer style (world)

    def __post_init__(self) -> None:
        if self.aspect is not None and self.aspect not in ASPECTS:
            raise ValueError(f"unknown aspect {self.aspect!r}; choose one of {', '.join(ASPECTS)}")
        if self.style not in RATING_STYLES:
            raise ValueError(f"unknown style {self.style!r}; known: {', '.join(RATING_STYLES.names())}")


@dataclass(frozen=True)
class ImplicitOptions:
    """The implicit kind's settings: the reward a DPO-trained model implies."""

    reference: str | None = None  # the model it was trained from (its DPO reference): a directory or world:<name>
    beta: float = 0.1  # its DPO beta
    per_token: bool = False  # divide by the answer's tokens (else the sum over them)

    def __post_init__(self) -> None:
        if not self.reference:
            raise ValueError("the implicit reward compares the DPO-trained model with its reference: set options.reference")
        if self.beta <= 0:
            raise ValueError(f"beta must be positive, got {self.beta}")


@dataclass(frozen=True)
class JudgeOptions:
    """The judge kind's settings: what a chat model is asked, and how its reply becomes a number."""

    prompt: str = ""  # the request, with {instruction} and {answer} in it; the image goes with it
    pattern: str = r"-?\d+(?:\.\d+)?"  # a regular expression: its first match in the reply (its first group, if it has one) is the score
    low: float | None = None  # the lowest score a reply may give (below: a failed reply, not a clipped one)
    high: float | None = None  # the highest
    system: str | None = None  # a system message before the request
    max_tokens: int = 64  # the reply's token limit

    def __post_init__(self) -> None:
        missing = [k for k in ("{instruction}", "{answer}") if k not in self.prompt]
        if missing:
            raise ValueError(f"the judge's prompt must hold {' and '.join(missing)}, got {self.prompt!r}")
        try:
            re.compile(self.pattern)
        except re.error as e:
            raise ValueError(f"pattern {self.pattern!r} is not a regular expression: {e}") from None
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError(f"low {self.low} is above high {self.high}")


@dataclass(frozen=True)
class LengthOptions:
    """The length kind's settings."""

    cap: int | None = None  # words beyond this many count no more (null: no cap)


OPTIONS = {**dict.fromkeys(CLAIM_KINDS, ClaimOptions), "rating": RatingOptions, "implicit": ImplicitOptions,
           "judge": JudgeOptions, "length": LengthOptions}


@dataclass(frozen=True)
class RewardTerm:
    """One weighted component of an answer's reward (the reward is their weighted sum)."""

    SHORTHAND = "kind"

    kind: str  # rejected_claims, accepted_claims, claim_precision, rating, implicit, judge, length (docs/methods.md says what each is)
    weight: float = 1.0  # its weight in the reward (negative: a penalty)
    model: str | None = None  # the model that scores: a directory, world:<name>, self (the policy), or api:MODEL[@URL] (claims, rating, judge); none for length
    runtime: Runtime | None = None  # how a local scoring model loads (null: as the policy)
    options: dict[str, Any] = field(default_factory=dict)  # the kind's own settings (claims: splitter, judge; rating: aspect, style; implicit: reference, beta; judge: prompt, pattern, low, high; length: cap)
    name: str | None = None  # how the logs and the report name it (default: the kind)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown reward kind {self.kind!r}; choose from {', '.join(KINDS)}")
        self.parsed()
        if self.kind == "length":
            if self.model is not None:
                raise ValueError("the length reward reads the answer's words: it takes no model")
        elif not self.model:
            raise ValueError(f"the {self.kind} reward needs the model that scores: set model")
        elif self.kind == "implicit" and (self.model.startswith("api:") or self.model == SELF):
            raise ValueError("the implicit reward scores answers' log-probs in this process: model must be a "
                             "model directory or world:<name>")

    @property
    def label(self) -> str:
        return self.name or self.kind

    def parsed(self) -> Any:
        """`options` as the kind's settings dataclass (checked: unknown keys and bad values are errors)."""
        try:
            return from_dict(OPTIONS[self.kind], self.options, where="options")
        except ConfigError as e:
            raise ValueError("; ".join(e.problems)) from None

    def scorer(self) -> str:
        """The scoring pass this component reads (components with the same one share it)."""
        kind = "claims" if self.kind in CLAIM_KINDS else self.kind
        settings = to_dict({"model": self.model, "runtime": self.runtime, "options": self.parsed()})
        return f"{kind}:{settings}"

    def backends(self) -> list[str]:
        """The models this component calls, checked before the run's first stage."""
        out = [self.model] if self.model not in (None, SELF) else []
        options = self.parsed()
        extra = [getattr(options, "judge", None), getattr(options, "reference", None)]
        return [*out, *(m for m in extra if m)]


def claim_values(claims: list[dict]) -> dict[str, float]:
    """The claim kinds' values of one answer's labeled claims (a feedback record's `details.claims`)."""
    rejected = sum(bool(c.get("rejected")) for c in claims)
    accepted = len(claims) - rejected
    return {"rejected_claims": -float(rejected), "accepted_claims": float(accepted),
            "claim_precision": accepted / len(claims) if claims else 0.0}


def rating_value(ratings: dict[str, int | None], aspect: str | None) -> float | None:
    """One aspect's rating, or the mean of the three (None when a rating it needs is missing)."""
    values = [ratings.get(a) for a in ([aspect] if aspect else ASPECTS)]
    return None if any(v is None for v in values) else sum(values) / len(values)


def judged_value(reply: str, options: JudgeOptions, key: str) -> float:
    """The score a chat judge's reply states (`options.pattern`'s first match), or a `JudgeError` naming the
    answer when it states none, or one out of range (never clipped or guessed)."""
    m = re.search(options.pattern, reply)
    if m is None:
        raise JudgeError(f"answer {key}: the judge's reply has no score matching {options.pattern!r}: {excerpt(reply)}")
    text = m.group(1) if m.groups() else m.group(0)
    try:
        value = float(text)
    except ValueError:
        raise JudgeError(f"answer {key}: the judge's score {text!r} is not a number") from None
    if (options.low is not None and value < options.low) or (options.high is not None and value > options.high):
        bounds = ", ".join("" if b is None else f"{b:g}" for b in (options.low, options.high))
        raise JudgeError(f"answer {key}: the judge's score {value:g} is outside [{bounds}]")
    return value


def length_value(answer: str, options: LengthOptions) -> float:
    words = len(answer.split())
    return float(words if options.cap is None else min(words, options.cap))
