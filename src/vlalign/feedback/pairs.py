"""Turn scored responses into preference pairs, with the selection rules as data."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np


@dataclass(frozen=True)
class Scored:
    id: str
    text: str
    score: float


@dataclass(frozen=True)
class PairRules:
    """RLAIF-V's defaults: pairs whose score gap is at least 1, at most 2 per prompt, no identical texts."""

    min_gap: float = 1.0
    max_per_prompt: int | None = 2
    drop_identical: bool = True
    seed: int = 0


def _rng(seed: int, key: str) -> np.random.Generator:
    return np.random.default_rng([seed, int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "little")])


def candidate_pairs(responses: Sequence[Scored], rules: PairRules, key: str = "") -> list[tuple[Scored, Scored]]:
    """(chosen, rejected) pairs of one prompt's responses. `key` (the prompt id) seeds the subsampling so
    it does not depend on the order prompts are processed in."""
    pairs = []
    for a, b in combinations(responses, 2):
        if rules.drop_identical and a.text.strip() == b.text.strip():
            continue
        hi, lo = (a, b) if a.score >= b.score else (b, a)
        if hi.score - lo.score >= rules.min_gap and hi.score != lo.score:
            pairs.append((hi, lo))
    if rules.max_per_prompt is not None and len(pairs) > rules.max_per_prompt:
        keep = _rng(rules.seed, key).choice(len(pairs), size=rules.max_per_prompt, replace=False)
        pairs = [pairs[int(i)] for i in sorted(keep)]
    return pairs
