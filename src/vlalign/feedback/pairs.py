"""Turn scored responses into preference pairs, with the selection rules as data.

Per prompt (`candidate_pairs`): every two responses whose scores differ by at least `min_gap` make a pair,
the higher score chosen; ties and identical texts are dropped; at most `max_per_prompt` pairs are kept,
drawn with a seed derived from the prompt. RLAIF-V uses min_gap 1 and 2 pairs per prompt; VLFeedback
keeps all C(n, 2) pairs of distinct mean ratings (min_gap 0, no cap).

With `claim_balance`, a pair whose chosen answer makes fewer claims than the rejected one is dropped. A
score of -(rejected claims) favours answers that claim less, and length balancing does not see it when
the words stay and the objects go: a pair where the chosen answer names fewer objects teaches "name
fewer objects" as much as "name no false ones". The pairs left differ in what is claimed, not how much.

Over all pairs (`balance_lengths`): RLAIF-V's length balancing. Answers with fewer rejected claims tend to
be shorter, so DPO on raw pairs learns "say less". For each threshold r in 0, 0.02, ..., 0.98 the pairs
whose chosen answer is shorter than the rejected one by more than the fraction r are dropped, and the r
whose survivors have the closest mean chosen and mean rejected lengths (relative to the rejected) wins.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from itertools import combinations
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class Scored:
    id: str
    text: str
    score: float
    claims: int | None = None  # how many claims the feedback found in it, where it counts them


@dataclass(frozen=True)
class PairRules:
    """RLAIF-V's defaults: score gap >= 1, at most 2 pairs per prompt, no identical texts, lengths balanced."""

    min_gap: float = 1.0  # a pair's scores differ by at least this much
    max_per_prompt: int | None = 2  # pairs kept per prompt (null: all), picked as `pick` says
    pick: str = "draw"  # draw: a seeded draw of the candidate pairs (RLAIF-V's); extremes: the best answer against the worst first, then the widest gaps
    drop_identical: bool = True  # two identical answers make no pair
    length_balance: bool = True  # RLAIF-V's length balancing, within each prompt source
    claim_balance: bool = False  # the chosen answer makes at least as many claims as the rejected one
    seed: int = 0  # of the per-prompt draw

    def __post_init__(self) -> None:
        if self.min_gap < 0:
            raise ValueError(f"min_gap must be >= 0, got {self.min_gap}")
        if self.max_per_prompt is not None and self.max_per_prompt < 1:
            raise ValueError(f"max_per_prompt must be at least 1 or None (no cap), got {self.max_per_prompt}")
        if self.pick not in ("draw", "extremes"):
            raise ValueError(f"pick must be draw or extremes, got {self.pick!r}")


def _rng(seed: int, key: str) -> np.random.Generator:
    import numpy as np  # here, not at the top: configs import this module, and a config check needs no numpy

    return np.random.default_rng([seed, int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "little")])


def candidate_pairs(responses: Sequence[Scored], rules: PairRules, key: str = "") -> list[tuple[Scored, Scored]]:
    """(chosen, rejected) pairs of one prompt's responses. `key` (the prompt id) seeds the subsampling so
    it does not depend on the order prompts are processed in."""
    pairs = []
    for a, b in combinations(responses, 2):
        if rules.drop_identical and a.text.strip() == b.text.strip():
            continue
        hi, lo = (a, b) if a.score >= b.score else (b, a)
        if rules.claim_balance and hi.claims is not None and lo.claims is not None and hi.claims < lo.claims:
            continue
        if hi.score != lo.score and hi.score - lo.score >= rules.min_gap:
            pairs.append((hi, lo))
    if rules.max_per_prompt is not None and len(pairs) > rules.max_per_prompt:
        if rules.pick == "extremes":  # the widest gap first; among equal gaps, the best chosen answer
            widest = sorted(range(len(pairs)), key=lambda i: (pairs[i][1].score - pairs[i][0].score, -pairs[i][0].score))
            keep = widest[:rules.max_per_prompt]
        else:
            keep = _rng(rules.seed, key).choice(len(pairs), size=rules.max_per_prompt, replace=False).tolist()
        pairs = [pairs[i] for i in sorted(keep)]
    return pairs


def words(text: str) -> int:
    return len(text.split())


def shortening(chosen: str, rejected: str) -> float:
    """How much shorter the chosen answer is, as a fraction of the rejected one (negative: it is longer)."""
    return (words(rejected) - words(chosen)) / max(words(rejected), 1)


@dataclass(frozen=True)
class LengthBalance:
    """What `balance_lengths` chose: the threshold and the mean lengths before and after."""

    threshold: float | None
    kept: int
    dropped: int
    chosen_words_before: float
    rejected_words_before: float
    chosen_words: float
    rejected_words: float

    def to_dict(self) -> dict:
        return asdict(self)


def _mean_words(texts: Sequence[str]) -> float:
    import numpy as np

    return float(np.mean([words(t) for t in texts])) if texts else 0.0


def balance_lengths(pairs: Sequence[tuple[str, str]], step: float = 0.02) -> tuple[list[int], LengthBalance]:
    """Indices of the (chosen, rejected) text pairs to keep, and the threshold that kept them."""
    if not pairs:
        return [], LengthBalance(None, 0, 0, 0.0, 0.0, 0.0, 0.0)
    import numpy as np

    shorten = np.array([shortening(c, r) for c, r in pairs])
    chosen = np.array([words(c) for c, _ in pairs], dtype=float)
    rejected = np.array([words(r) for _, r in pairs], dtype=float)
    best: tuple[float, float] | None = None
    for r in np.arange(0.0, 1.0, step):
        keep = shorten <= r + 1e-12
        if not keep.any() or rejected[keep].mean() == 0:
            continue
        gap = abs(chosen[keep].mean() - rejected[keep].mean()) / rejected[keep].mean()
        if best is None or gap < best[1]:
            best = (float(round(r, 10)), float(gap))
    if best is None:  # every pair's chosen answer is empty-vs-empty or shorter by 100%: keep them as they are
        kept = list(range(len(pairs)))
        threshold = None
    else:
        threshold = best[0]
        kept = [i for i, s in enumerate(shorten) if s <= threshold + 1e-12]
    return kept, LengthBalance(
        threshold, len(kept), len(pairs) - len(kept),
        _mean_words([c for c, _ in pairs]), _mean_words([r for _, r in pairs]),
        _mean_words([pairs[i][0] for i in kept]), _mean_words([pairs[i][1] for i in kept]))


def balance_lengths_by(pairs: Sequence[tuple[str, str]], groups: Sequence[str]) -> tuple[list[int], dict]:
    """`balance_lengths` within each group (the prompts' source): descriptions apart from yes/no questions,
    whose right answer is often the shorter "no.", so one kind's lengths never set another's threshold.
    With one group the statistics are that group's; with several, per group under `by_source`."""
    members: dict[str, list[int]] = {}
    for i, group in enumerate(groups):
        members.setdefault(group, []).append(i)
    kept: list[int] = []
    stats: dict[str, dict] = {}
    for group, idx in sorted(members.items()):
        keep, balance = balance_lengths([pairs[i] for i in idx])
        kept += [idx[k] for k in keep]
        stats[group] = balance.to_dict()
    if len(stats) <= 1:
        return sorted(kept), next(iter(stats.values()), balance_lengths([])[1].to_dict())
    return sorted(kept), {"kept": len(kept), "dropped": len(pairs) - len(kept), "by_source": stats}
