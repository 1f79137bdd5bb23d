"""Claim splitters by name, for configs: `sentences` and `llm` here, more from plugins (`world`)."""

from __future__ import annotations

from collections.abc import Callable

from vlalign.feedback.claims import ClaimSplitter, SentenceClaims
from vlalign.feedback.judge import Judge
from vlalign.plugins import SPLITTERS

# name -> factory(the judge it may ask, or None) -> splitter
Factory = Callable[[Judge | None], ClaimSplitter]


def _llm(judge: Judge | None) -> ClaimSplitter:
    from vlalign.feedback.llm_claims import LLMClaims

    if judge is None:
        raise ValueError("the llm claim splitter needs a judge: set judge (e.g. api:gpt-4o or a model path)")
    return LLMClaims(judge)


SPLITTERS.register("sentences", lambda judge: SentenceClaims())
SPLITTERS.register("llm", _llm)


def make_splitter(name: str, judge: Judge | None = None) -> ClaimSplitter:
    """The splitter a config names (see `SPLITTERS.names()`); `judge` serves the model-backed ones."""
    return SPLITTERS.get(name)(judge)


def needs_judge(name: str) -> bool:
    return name == "llm"
