"""One interface for every method that asks a model for words.

Claim splitting and question conversion (RLAIF-V), multi-aspect ratings (VLFeedback), hallucination
injection (POVID) and judged benchmarks (MMHal-Bench) all send a `ChatRequest` (a user message, optional
images, an optional system message) and read a `ChatReply`. A backend answers a whole list at once, so
an in-process model batches and an API backend runs requests concurrently. A failed request comes back
as a reply with `text=None` and an `error` that names the request, never as an exception that loses the
rest of the batch.

Backends: `vlalign.feedback.judge_api.OpenAIJudge` (any OpenAI-compatible endpoint) and
`vlalign.feedback.judge_local.ModelJudge` (a VLM loaded in this process).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol, runtime_checkable

from PIL import Image

from vlalign.data.errors import SetupError


@dataclass(frozen=True)
class ChatRequest:
    """One question to a judge. `id` names the record it is about, so errors can point at it. The sampling
    fields follow vLLM's chat API: `n` answers, answer i drawn with seed `seed + i`; `logprobs` asks for the
    `logprobs` likeliest tokens at each step (None: none); `model` asks a server for another of its models
    (a LoRA adapter it loaded) instead of the judge's own."""

    prompt: str
    images: tuple[Image.Image, ...] = ()
    system: str | None = None
    max_tokens: int = 512
    temperature: float = 0.0
    id: str = ""
    n: int = 1
    seed: int | None = None
    top_p: float = 1.0
    logprobs: int | None = None
    model: str | None = None


LOGPROB_SLACK = 1e-4  # rounding may put a certain token's log-prob a hair above 0


def checked_logprob(value: object) -> float:
    """`value` as a log-probability: a finite number at most 0 (a hair above 0 from rounding counts as 0).
    ValueError for anything else (NaN, an infinity, a positive number, a string), which no probability has,
    so a broken reply fails its request instead of becoming a guessed value."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value > LOGPROB_SLACK:
        raise ValueError(f"{value!r} is not a log-probability (a finite number at most 0)")
    return min(float(value), 0.0)


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token, its log-prob, and the likeliest tokens at its step (likeliest first)."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Choice:
    """One of a reply's answers, with its tokens' log-probs when they were asked for; `finish_reason` is
    "length" when the token limit cut it (OpenAI's names)."""

    text: str
    logprobs: tuple[TokenLogprob, ...] | None = None
    finish_reason: str = "stop"


@dataclass
class ChatReply:
    """The judge's answer, or `text=None` with the reason in `error`."""

    text: str | None
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    meta: dict = field(default_factory=dict)
    choices: list[Choice] = field(default_factory=list)  # all n answers (the first is `text`); empty: just `text`

    @property
    def ok(self) -> bool:
        return self.text is not None

    def answers(self) -> list[Choice]:
        """Every answer of the reply: its choices, or its text as the one choice."""
        return self.choices or ([Choice(self.text)] if self.text is not None else [])


@runtime_checkable
class Judge(Protocol):
    """Anything that answers chat requests in order: `complete(requests)[i]` answers `requests[i]`."""

    name: str

    def complete(self, requests: Sequence[ChatRequest]) -> list[ChatReply]: ...


class JudgeError(RuntimeError):
    """A judge's answer that cannot be used (unparsable, out of range); the message names the record."""


class JudgeUnavailable(SetupError):
    """A judge that cannot be used at all (endpoint unreachable, key refused, model not served); the message
    names the endpoint (credentials masked) and the fix. Raised by a judge's `check()` before a run, and by an
    API judge whose requests keep being refused so (a stage that meets it stops: see `SetupError`)."""


class Decoded:
    """A judge whose requests take the run's decoding settings (`judge_decoding`): each set one replaces the
    request's own, the rest (n, seeds, log-probs) stay as the task asked. Everything else is the judge's."""

    def __init__(self, judge: Judge, max_tokens: int | None = None, temperature: float | None = None):
        self.judge, self.max_tokens, self.temperature = judge, max_tokens, temperature
        self.name = judge.name

    def complete(self, requests: Sequence[ChatRequest]) -> list[ChatReply]:
        changes = {k: v for k, v in (("max_tokens", self.max_tokens), ("temperature", self.temperature))
                   if v is not None}
        return self.judge.complete([replace(r, **changes) for r in requests] if changes else requests)

    def __getattr__(self, name: str):  # usage, check(), ... of the judge itself
        return getattr(self.judge, name)


def decoded(judge: Judge, settings) -> Judge:
    """`judge` under a config's `ChatDecoding` (unchanged when it sets nothing)."""
    if settings is None or (settings.max_tokens is None and settings.temperature is None):
        return judge
    return Decoded(judge, settings.max_tokens, settings.temperature)
