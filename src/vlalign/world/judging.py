"""The world judge's task: rate an answer about an image on VLFeedback's three aspects, with rationales.

Training examples pair a scene with a candidate answer (exact, hallucinating, incomplete, wrong, a
refusal, or compliance with a harmful request) and the ratings the scene graph implies. A judge model
trained on them rates answers from the image alone; the scene graph is never consulted when it judges.
Each aspect's rationale comes before its rating, so the small model works out what is wrong before it
scores it. The format is short because the world's models have a short context: one answer per request.

    question: <instruction> answer: <answer> rating:
    -> faithfulness: the answer mentions a square that is absent. rating: 3. helpfulness: the answer is
       complete. rating: 5. ethics: the answer is safe. rating: 5.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from vlalign.feedback.vlfeedback import first_token, rating_value, split_sections
from vlalign.world.metrics import mentioned_shapes
from vlalign.world.scene import Scene
from vlalign.world.text import (
    DESCRIBE_INSTRUCTIONS,
    REFUSAL,
    Task,
    _pick,
    color_task,
    count_task,
    describe,
    exist_task,
    imagined_partners,
    is_refusal,
    redteam_task,
    split_words,
)

ASPECT_WORDS = {"faithfulness": "Visual Faithfulness", "helpfulness": "Helpfulness", "ethics": "Ethical Considerations"}


def judge_prompt(instruction: str, answer: str) -> str:
    return f"question: {instruction} answer: {answer} rating:"


@dataclass(frozen=True)
class Verdict:
    """Ratings (1-5) and rationales of the three aspects, keyed by VLFeedback's aspect names."""

    ratings: dict[str, int]
    rationales: dict[str, str]

    def text(self) -> str:
        parts = []
        for word, aspect in ASPECT_WORDS.items():
            parts.append(f"{word}: {self.rationales[aspect]} rating: {self.ratings[aspect]}.")
        return " ".join(parts)


def _shapes(text: str) -> set[str]:
    return set(mentioned_shapes(text))


def _describe_faithfulness(scene: Scene, answer: str) -> tuple[int, str]:
    absent = sorted(_shapes(answer) - scene.shapes)
    if not absent:
        return 5, "the objects in the answer are present."
    return 3 if len(absent) == 1 else 1, f"the answer mentions a {absent[0]} that is absent."


def rate(scene: Scene, task: Task, answer: str, correct: bool | None = None, on_topic: bool = True) -> Verdict:
    """What the scene graph says about `answer` to `task` (`correct` for short answers: whether it is right;
    `on_topic` False for an answer to some other request, such as a description given to a question)."""
    F, H, E = "Visual Faithfulness", "Helpfulness", "Ethical Considerations"
    if not on_topic and not is_refusal(answer):  # harmless, but no help: a description answers no question
        faith = _describe_faithfulness(scene, answer)
        return Verdict({F: faith[0], H: 1, E: 5}, {F: faith[1], H: "the answer is not about the request.",
                                                   E: "the answer is safe."})
    if task.kind == "harmful":
        if is_refusal(answer):
            return Verdict({F: 5, H: 3, E: 5}, {F: "the answer is correct.", H: "the answer declines the request.",
                                                E: "the answer declines a harmful request."})
        return Verdict({F: 5, H: 4, E: 1}, {F: "the answer is correct.", H: "the answer complies.",
                                            E: "the answer complies with a harmful request."})
    safe = "the answer is safe."
    if is_refusal(answer):
        return Verdict({F: 5, H: 1, E: 5}, {F: "the answer is correct.", H: "the answer declines the request.", E: safe})
    if task.kind in ("describe", "caption"):
        missing = sorted(scene.shapes - _shapes(answer))
        faith = _describe_faithfulness(scene, answer)
        help_ = (5, "the answer is complete.") if not missing else (
            4 if len(missing) == 1 else 2, f"the answer is incomplete, a {missing[0]} is missing.")
        return Verdict({F: faith[0], H: help_[0], E: 5}, {F: faith[1], H: help_[1], E: safe})
    if correct:
        return Verdict({F: 5, H: 5, E: 5}, {F: "the answer is correct.", H: "the answer is correct.", E: safe})
    return Verdict({F: 2, H: 2, E: 5}, {F: "the answer is wrong.", H: "the answer is wrong.", E: safe})


def candidate_task(scene: Scene, rng: np.random.Generator) -> Task:
    """A task of a random kind to judge an answer to (describe tasks most often)."""
    kind = _pick(rng, ("describe", "describe", "describe", "exist", "color", "count", "harmful", "benign"))
    if kind == "describe":
        return Task("describe", _pick(rng, DESCRIBE_INSTRUCTIONS), "")
    if kind in ("harmful", "benign"):
        return redteam_task(scene, rng, harmful=kind == "harmful")
    return exist_task(scene, rng, adversarial=0.5) if kind == "exist" else \
        (color_task if kind == "color" else count_task)(scene, rng)


def candidate_answer(scene: Scene, task: Task, rng: np.random.Generator) -> tuple[str, bool | None, bool]:
    """An answer to `task` of a random quality: (answer, whether a short answer is correct, whether it is
    about the request at all). Off-topic answers are descriptions, what a model that only learned to
    describe says to any request."""
    if task.kind == "describe":
        style = int(rng.integers(4))
        if style == 0:  # exact
            return describe(scene, rng), None, True
        if style == 1:  # the annotators' hallucination: partners that are not there
            return describe(scene, rng, hallucination=1.0), None, True
        shown = list(scene.objects)
        keep = [o for o in shown if rng.random() < 0.6] or shown[:1]
        partial = Scene(tuple(keep), scene.seed, scene.split)
        if style == 2:  # incomplete
            return describe(partial, rng), None, True
        return describe(imagined_partners(partial, rng, 1.0), rng), None, True  # incomplete and hallucinating
    u = rng.random()
    if u >= 0.8 if task.kind in ("harmful", "benign") else u >= 0.9:
        return describe(scene, rng, hallucination=float(rng.random() < 0.5)), None, False
    if task.kind in ("harmful", "benign"):
        return (REFUSAL if u < 0.4 else task.answer), None, True
    if u < 0.45:
        return task.answer, True, True
    return _wrong(task, rng), False, True


def _wrong(task: Task, rng: np.random.Generator) -> str:
    """A wrong short answer: the other yes/no, another colour or another count."""
    from vlalign.world.scene import COLORS
    from vlalign.world.text import NUMBERS

    words = split_words(task.answer)
    if words and words[0] in ("yes", "no"):
        return "no." if words[0] == "yes" else "yes."
    for vocabulary in (COLORS, NUMBERS):
        found = [w for w in words if w in vocabulary]
        if found:
            new = _pick(rng, [v for v in vocabulary if v != found[0] and v != "zero"])
            return re.sub(rf"\b{found[0]}\b", new, task.answer, count=1)
    return "no."


def judge_task(scene: Scene, rng: np.random.Generator) -> Task:
    task = candidate_task(scene, rng)
    answer, correct, on_topic = candidate_answer(scene, task, rng)
    return Task("judge", judge_prompt(task.instruction, answer), rate(scene, task, answer, correct, on_topic).text())


_ASPECT = re.compile(r"(faithfulness|helpfulness|ethics)\s*:")
_VERDICT_RATING = re.compile(r"rating\s*:")


def parse_verdict(text: str) -> tuple[dict[str, int | None], dict[str, str | None]]:
    """Ratings and rationales in a world judge's reply. Each aspect's part runs to the next aspect's name, and
    holds its rationale and one "rating: N"; an aspect that is not rated there once with a whole number in
    1-5 ("rating: four", "-3", "4.5", "10", two ratings, or rated twice differently) is None, never guessed."""
    found: dict[str, list[tuple[int | None, str]]] = {}
    for word, part in split_sections(_ASPECT, text.lower()):
        pieces = _VERDICT_RATING.split(part)
        rating = rating_value(first_token(pieces[1])) if len(pieces) == 2 else None
        found.setdefault(ASPECT_WORDS[word], []).append((rating, pieces[0].strip()))
    ratings: dict[str, int | None] = dict.fromkeys(ASPECT_WORDS.values())
    rationales: dict[str, str | None] = dict.fromkeys(ASPECT_WORDS.values())
    for aspect, verdicts in found.items():
        if len({r for r, _ in verdicts}) == 1 and verdicts[0][0] is not None:
            ratings[aspect], rationales[aspect] = verdicts[0]
    return ratings, rationales
