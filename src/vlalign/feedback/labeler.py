"""Conquer: a labeler model answers each claim's yes/no question; a claim is rejected when the answer it
needs loses ("no" wins for a claim of presence, "yes" for a claim of absence).

Scores come from P(yes)+P(Yes) against P(no)+P(No) in one forward pass per question (no generation),
and a response's score is minus its number of rejected claims, as in RLAIF-V. A claim with `answers` (a
count) is checked by the labeler's log-probs of each answer instead, and rejected when another answer is
likelier. The labeler is a model in this process, or an `ApiLabeler` on a server (the same P(yes) from a
one-token answer's top log-probs; a server cannot score given answers, so it checks yes/no claims only).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from vlalign.feedback.claims import Claim, ClaimSplitter, first_failure, split_each
from vlalign.feedback.server_backends import ApiLabeler
from vlalign.models.prefix import images_keys
from vlalign.models.scoring import score_responses, yes_probability
from vlalign.progress import warn


@dataclass
class LabeledClaim:
    """A scored claim. `p_yes` is P(yes) of its question; for a claim with `answers`, the probability of
    its own answer against the likeliest other one (below 0.5 when another answer wins)."""

    claim: str
    question: str
    p_yes: float
    holds_if_yes: bool = True
    answers: tuple[str, ...] = ()

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
                            "holds_if_yes": c.holds_if_yes, "rejected": c.rejected,
                            **({"answers": list(c.answers)} if c.answers else {})}
                           for c in self.claims]}


def choice_probability(labeler, processor, images: Sequence[Image.Image], claims: Sequence[Claim],
                       batch_size: int = 64) -> list[float]:
    """For each claim with `answers`: sigmoid(log P(its answer) - log P(the likeliest other)), every answer
    scored whole under the labeler (the answers to one image's question continue one forward of it)."""
    keys = images_keys(images)
    unique = {(key, claim.question, answer): (image, claim.question, answer)  # samples of one prompt repeat claims
              for key, image, claim in zip(keys, images, claims, strict=True) for answer in claim.answers}
    scored = score_responses(labeler, processor, *map(list, zip(*unique.values(), strict=True)), batch_size=batch_size)
    logp = {k: s.sum_logp for k, s in zip(unique, scored, strict=True)}
    out = []
    for key, claim in zip(keys, claims, strict=True):
        own, *others = (logp[key, claim.question, a] for a in claim.answers)
        out.append(1.0 / (1.0 + math.exp(min(max(max(others) - own, -700.0), 700.0))))
    return out


def _checkable(outcomes: list, api: bool) -> list:
    """Without an in-process labeler, claims with answers cannot be scored: they are left out, and said so."""
    if not api:
        return outcomes
    dropped = sum(len([c for c in o if c.answers]) for o in outcomes if not isinstance(o, Exception))
    if dropped:
        warn(f"the API labeler checks yes/no claims only: {dropped} claims with answers (counts) are left out; "
             "use an in-process labeler to check them")
    return [o if isinstance(o, Exception) else [c for c in o if not c.answers] for o in outcomes]


def label_each(labeler, processor, images: Sequence[Image.Image], responses: Sequence[str], split: ClaimSplitter,
               batch_size: int = 64, instructions: Sequence[str] | None = None,
               keys: Sequence[str] | None = None) -> list[ResponseFeedback | Exception]:
    """Split every response into claims and label them all in shared batches; a response the splitter
    could give no claims for gets its error instead (see `split_each`). `instructions` give the splitter the
    question each response answers; `keys` name the records in its errors."""
    api = isinstance(labeler, ApiLabeler)
    outcomes = _checkable(split_each(split, responses, instructions, keys), api)
    ok = [i for i, o in enumerate(outcomes) if not isinstance(o, Exception)]
    flat = [(i, j, c) for i in ok for j, c in enumerate(outcomes[i])]
    yes_no = [(i, j, c) for i, j, c in flat if not c.answers]
    choices = [(i, j, c) for i, j, c in flat if c.answers]
    if api:
        p_yes = labeler.yes_probability([images[i] for i, _, _ in yes_no], [c.question for _, _, c in yes_no],
                                        [f"{keys[i] if keys else i}/claim{j}" for i, j, _ in yes_no])
    else:
        p_yes = yes_probability(labeler, processor, [images[i] for i, _, _ in yes_no],
                                [c.question for _, _, c in yes_no], batch_size=batch_size)
    p_choice = choice_probability(labeler, processor, [images[i] for i, _, _ in choices], [c for _, _, c in choices],
                                  batch_size) if choices else []
    p = {(i, j): v for (i, j, _), v in zip([*yes_no, *choices], [*p_yes, *p_choice], strict=True)}
    out: list[ResponseFeedback | Exception] = list(outcomes)  # type: ignore[arg-type]
    for i in ok:
        cs: list[Claim] = outcomes[i]  # type: ignore[assignment]
        ps = [p[i, j] for j in range(len(cs))]
        failed = next((v for v in ps if isinstance(v, Exception)), None)
        out[i] = failed or ResponseFeedback([LabeledClaim(c.text, c.question, v, c.holds_if_yes, c.answers)
                                             for c, v in zip(cs, ps, strict=True)])
    return out


def labeling_usage(labeler, split: ClaimSplitter) -> dict[str, object]:
    """The backends of a labeling stage that count their requests, by the manifest key their counts go under:
    an API labeler (`labeler_usage`) and the judge an LLM splitter asks (`splitter_usage`; one key for both
    when they share a counter). Models in this process count nothing and are left out."""
    labeling = labeler if isinstance(labeler, ApiLabeler) and labeler.usage is not None else None
    splitting = getattr(split, "judge", None)
    splitting = splitting if getattr(splitting, "usage", None) is not None else None
    if labeling is not None and splitting is not None and labeling.usage is splitting.usage:
        return {"labeler_and_splitter_usage": labeling}
    found = {"labeler_usage": labeling, "splitter_usage": splitting}
    return {key: backend for key, backend in found.items() if backend is not None}


def label_responses(labeler, processor, images: Sequence[Image.Image], responses: Sequence[str],
                    split: ClaimSplitter, batch_size: int = 64, instructions: Sequence[str] | None = None,
                    keys: Sequence[str] | None = None) -> list[ResponseFeedback]:
    """`label_each`, raising the first error (naming its record) when any response has one."""
    out = label_each(labeler, processor, images, responses, split, batch_size, instructions, keys)
    first_failure(out)
    return out  # type: ignore[return-value]
