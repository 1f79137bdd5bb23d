"""Multi-aspect ratings (VLFeedback / Silkie): what a judge said about one response, and how it is scored.

Each response gets a 1-5 rating with a rationale on helpfulness, visual faithfulness and ethical
considerations. A rating that is missing or out of range is stored as missing (None), never guessed;
a response's score is the mean of its three ratings, and a response with any rating missing has no
score, so it makes no pair. `rating_score(aspect)` pairs by one aspect instead (e.g. faithfulness only).
"""

from __future__ import annotations

from collections.abc import Callable

from vlalign.data.records import FeedbackRecord
from vlalign.feedback.judge import JudgeError
from vlalign.feedback.pairs import PairRules

ASPECTS = ("Helpfulness", "Visual Faithfulness", "Ethical Considerations")


class MissingRating(JudgeError):
    """A rating the judge's reply did not give (or gave unusably); the response is kept without a score."""


def vlfeedback_rules(margin: float = 0.0, claim_balance: bool = False) -> PairRules:
    """VLFeedback's pairs: all C(n, 2) per instruction whose mean ratings differ (by more than `margin`);
    with `claim_balance`, not those whose chosen answer makes fewer claims (where claims were counted)."""
    return PairRules(min_gap=margin, max_per_prompt=None, drop_identical=True, length_balance=False,
                     claim_balance=claim_balance)


def mean_rating(ratings: dict[str, int | None]) -> float | None:
    values = [ratings.get(a) for a in ASPECTS]
    return None if any(v is None for v in values) else sum(values) / len(values)


def rating_feedback(response_id: str, prompt_id: str, ratings: dict[str, int | None],
                    rationales: dict[str, str | None], judge: str, error: str | None = None,
                    claims: list[str] | None = None) -> dict:
    """A feedback row holding the ratings and rationales, scored by their mean (and the judge's error, if
    its request failed; and the answer's claims, where they were counted for claim balance)."""
    return FeedbackRecord(id=response_id, response_id=response_id, prompt_id=prompt_id, score=mean_rating(ratings),
                          details={"ratings": ratings, "rationales": rationales,
                                   "missing": [a for a in ASPECTS if ratings.get(a) is None],
                                   **({"claims": claims} if claims is not None else {})},
                          meta={"judge": judge, **({"error": error} if error else {})}).to_row()


def rating_score(aspect: str | None = None) -> Callable[[FeedbackRecord], float | None]:
    """How pairs read a feedback record: the mean rating, or one aspect's rating."""
    if aspect is None:
        return lambda f: f.score
    if aspect not in ASPECTS:
        raise ValueError(f"unknown aspect {aspect!r}; choose one of {', '.join(ASPECTS)}")
    return lambda f: (f.details.get("ratings") or {}).get(aspect)
