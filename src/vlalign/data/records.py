"""The records that flow between stages: prompts, responses, feedback and preference pairs.

Every record has a stable string `id`, so a resumed stage can tell what it already wrote. Images are
referenced by their content hash in the run's image store, never embedded. Free-form dicts (`meta`,
`details`) are stored as JSON strings so every Parquet shard has the same flat schema.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, TypeVar

R = TypeVar("R", bound="Record")


def stable_id(*parts: Any) -> str:
    """A short deterministic id for `parts` (16 hex digits of a sha256), the same in every process and run."""
    blob = json.dumps(list(parts), default=str, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def _to_json(value: dict) -> str:
    return json.dumps(value or {}, sort_keys=True, ensure_ascii=False)


def _from_json(value: Any) -> dict:
    if value is None or value == "":
        return {}
    if isinstance(value, dict):
        return value
    return json.loads(value)


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


class Record:
    """Shared row conversion: JSON for dict fields, plain types for the rest, unknown columns ignored."""

    JSON_FIELDS: ClassVar[tuple[str, ...]] = ("meta",)
    FLOAT_FIELDS: ClassVar[tuple[str, ...]] = ()
    INT_FIELDS: ClassVar[tuple[str, ...]] = ()

    def to_row(self) -> dict[str, Any]:
        row = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if f.name in self.JSON_FIELDS:
                value = _to_json(value)
            elif f.name in self.FLOAT_FIELDS:
                value = _float_or_none(value)
            elif f.name in self.INT_FIELDS:
                value = _int_or_none(value)
            row[f.name] = value
        return row

    @classmethod
    def from_row(cls: type[R], row: dict[str, Any]) -> R:
        kwargs = {}
        for f in fields(cls):  # type: ignore[arg-type]
            if f.name not in row:
                continue
            value = row[f.name]
            if f.name in cls.JSON_FIELDS:
                value = _from_json(value)
            elif f.name in cls.FLOAT_FIELDS:
                value = _float_or_none(value)
            elif f.name in cls.INT_FIELDS:
                value = _int_or_none(value)
            kwargs[f.name] = value
        return cls(**kwargs)


@dataclass
class PromptRecord(Record):
    """An image and an instruction, with the ground-truth answer when the source has one."""

    id: str
    image: str
    instruction: str
    reference: str | None = None
    source: str = ""
    meta: dict = field(default_factory=dict)


@dataclass
class ResponseRecord(Record):
    """One model's answer to a prompt; `seed` tells deconfounded samples of the same model apart."""

    INT_FIELDS: ClassVar[tuple[str, ...]] = ("seed",)

    id: str
    prompt_id: str
    image: str
    instruction: str
    response: str
    model: str = ""
    seed: int | None = None
    meta: dict = field(default_factory=dict)


@dataclass
class FeedbackRecord(Record):
    """A judge's or labeler's verdict on one response: an overall score and method-specific details."""

    JSON_FIELDS: ClassVar[tuple[str, ...]] = ("details", "meta")
    FLOAT_FIELDS: ClassVar[tuple[str, ...]] = ("score",)

    id: str
    response_id: str
    prompt_id: str
    score: float | None = None
    details: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)


@dataclass
class PairRecord(Record):
    """A preference pair for one prompt: what the method prefers, what it rejects, and why (scores, method)."""

    FLOAT_FIELDS: ClassVar[tuple[str, ...]] = ("chosen_score", "rejected_score")

    id: str
    prompt_id: str
    image: str
    instruction: str
    chosen: str
    rejected: str
    chosen_score: float | None = None
    rejected_score: float | None = None
    method: str = ""
    meta: dict = field(default_factory=dict)
