"""Conquer: a labeler model answers each claim's yes/no question; a claim is rejected when the answer it
needs loses ("no" wins for a claim of presence, "yes" for a claim of absence).

Scores come from P(yes)+P(Yes) against P(no)+P(No) in one forward pass per question (no generation),
and a response's score is minus its number of rejected claims, as in RLAIF-V. The labeler is a model in
this process, or an `ApiLabeler` on a server (the same P(yes) from a one-token answer's top log-probs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from vlalign.feedback.claims import Claim, ClaimSplitter, first_failure, split_each
from vlalign.feedback.server_backends import ApiLabeler
from vlalign.models.scoring import yes_probability


@dataclass
class LabeledClaim:
    claim: str
    question: str
    p_yes: float
    holds_if_yes: bool = True

    @property
    def rejected(self) -> bool:
        return self.p_yes < 0.5 if self.holds_if_yes else self.p_yes > 0.5


@dataclass
class ResponseFeedback:
    claims: list[LabeledClaim]

    @property
    def score(self) -> float:
        return -float(sum(c.rejected for c in self.claims))

    def to_dict(self) -> dict:
        return {"score": self.score,
                "claims": [{"claim": c.claim, "question": c.question, "p_yes": c.p_yes,
                            "holds_if_yes": c.holds_if_yes, "rejected": c.rejected}
                           for c in self.claims]}


def label_each(labeler, processor, images: Sequence[Image.Image], responses: Sequence[str], split: ClaimSplitter,
               batch_size: int = 64, instructions: Sequence[str] | None = None,
               keys: Sequence[str] | None = None) -> list[ResponseFeedback | Exception]:
    """Split every response into claims and label them all in shared batches; a response the splitter
    could give no claims for gets its error instead (see `split_each`). `instructions` give the splitter the
    question each response answers; `keys` name the records in its errors."""
    outcomes = split_each(split, responses, instructions, keys)
    ok = [i for i, o in enumerate(outcomes) if not isinstance(o, Exception)]
    flat_images = [images[i] for i in ok for _ in outcomes[i]]
    flat_questions = [c.question for i in ok for c in outcomes[i]]
    if isinstance(labeler, ApiLabeler):
        flat_keys = [f"{keys[i] if keys else i}/claim{j}" for i in ok for j in range(len(outcomes[i]))]
        p_yes = labeler.yes_probability(flat_images, flat_questions, flat_keys)
    else:
        p_yes = yes_probability(labeler, processor, flat_images, flat_questions, batch_size=batch_size)
    out: list[ResponseFeedback | Exception] = list(outcomes)  # type: ignore[arg-type]
    k = 0
    for i in ok:
        cs: list[Claim] = outcomes[i]  # type: ignore[assignment]
        ps = p_yes[k:k + len(cs)]
        failed = next((p for p in ps if isinstance(p, Exception)), None)
        out[i] = failed or ResponseFeedback([LabeledClaim(c.text, c.question, p, c.holds_if_yes)
                                             for c, p in zip(cs, ps, strict=True)])
        k += len(cs)
    return out


def label_responses(labeler, processor, images: Sequence[Image.Image], responses: Sequence[str],
                    split: ClaimSplitter, batch_size: int = 64, instructions: Sequence[str] | None = None,
                    keys: Sequence[str] | None = None) -> list[ResponseFeedback]:
    """`label_each`, raising the first error (naming its record) when any response has one."""
    out = label_each(labeler, processor, images, responses, split, batch_size, instructions, keys)
    first_failure(out)
    return out  # type: ignore[return-value]
