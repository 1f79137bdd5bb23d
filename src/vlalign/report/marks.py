"""Highlights in answers: the spans a plugin's answer marker finds (`vlalign.plugins.ANSWER_MARKERS`).

The report knows no ground truth of its own; a plugin that does (the world's scene graph) registers a
marker, a function `(answer, prompt) -> list[Mark] | None` that says which characters of the answer are
wrong and why, or None when the prompt is not one it knows.
"""

from __future__ import annotations

from dataclasses import dataclass

from vlalign.data.records import PromptRecord
from vlalign.plugins import ANSWER_MARKERS
from vlalign.progress import warn

KINDS = ("hallucinated", "attribute")  # what the report's style sheet colours; other kinds get a plain mark


@dataclass(frozen=True)
class Mark:
    """Characters `start:end` of an answer, what is wrong there (`kind`) and a note for the reader."""

    start: int
    end: int
    kind: str
    note: str = ""

    def to_json(self) -> list:
        return [self.start, self.end, self.kind, self.note]


def mark_answer(answer: str, prompt: PromptRecord | None) -> list[list] | None:
    """Every registered marker's marks on `answer`, in text order; None when no marker knows the prompt."""
    if prompt is None:
        return None
    found: list[Mark] | None = None
    for name, marker in ANSWER_MARKERS.items():
        try:
            marks = marker(answer, prompt)
        except Exception as e:  # a broken plugin costs its highlights, never the report
            warn(f"answer marker {name!r} failed on prompt {prompt.id}: {type(e).__name__}: {e}")
            continue
        if marks is not None:
            found = (found or []) + [m for m in marks if 0 <= m.start < m.end <= len(answer)]
    return None if found is None else [m.to_json() for m in sorted(found, key=lambda m: (m.start, m.end))]
