"""The synthetic world's benchmarks through `vlalign score` / `vlalign eval`.

Answer records carry the scene they are about (`Scene.to_dict()`), so scoring is exact and needs no
other file: world-chair scores descriptions with `world.chair_metrics`, world-pope is scored as POPE is,
on the world's splits (`world.pope_items`), world-attributes checks colour and count answers
(`world.attribute_correct`). `vlalign eval` asks the questions `vlalign world eval` asks, on held-out
scenes.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from vlalign.evaluate.answers import Field, Issues, Question, read_answers
from vlalign.evaluate.world import (
    DESCRIBE,
    EVAL_SCENES,
    POPE_SPLITS,
    attribute_correct,
    attribute_items,
    chair_metrics,
    pope_items,
)
from vlalign.world.scene import COLORS, Scene, scenes
from vlalign.world.text import NUMBERS

SCENE = Field("scene", "the world scene the answer is about, as Scene.to_dict() writes it", (dict,))
KIND = Field("kind", "what the question asks", choices=("color", "count"))
TRUTH = Field("truth", "the right colour or number word")
DEFAULT_SCENES = 500


def _scenes(answers, issues: Issues) -> list[tuple]:
    """(answer, Scene) for every answer whose scene parses."""
    out = []
    for a in answers:
        try:
            out.append((a, Scene.from_dict(a["scene"])))
        except (KeyError, TypeError, ValueError) as e:
            issues(a.line, "bad_scene", f"field 'scene' is not a world scene ({e!r}); write Scene.to_dict()")
    return out


def score_world_chair(answers_path: str | Path, skip_bad: bool = False) -> dict:
    """CHAIR, recall and length of descriptions, exact against each answer's scene."""
    issues = Issues(str(answers_path), skip=skip_bad)
    pairs = _scenes(read_answers(answers_path, [SCENE], issues), issues)
    issues.require(pairs)
    return {**chair_metrics([s for _, s in pairs], [a.answer for a, _ in pairs]), **issues.report()}


def score_world_attributes(answers_path: str | Path, skip_bad: bool = False) -> dict:
    """Colour and count accuracy: right when the answer names the true value and no other."""
    issues = Issues(str(answers_path), skip=skip_bad)
    answers = read_answers(answers_path, [KIND, TRUTH], issues)
    issues.require(answers)
    out: dict = {}
    for kind, vocab in (("color", COLORS), ("count", NUMBERS)):
        rows = [a for a in answers if a["kind"] == kind]
        if rows:
            out[f"{kind}_accuracy"] = sum(attribute_correct(a.answer, a["truth"], vocab) for a in rows) / len(rows)
            out[f"{kind}_n"] = len(rows)
    return {**out, **issues.report()}


def _held_out(limit: int | None) -> list[Scene]:
    return list(scenes("eval", limit or DEFAULT_SCENES, EVAL_SCENES))


def _image(scene: Scene, size: int):
    from vlalign.world.render import render

    return partial(render, scene, size)


def chair_questions(limit: int | None, image_size: int) -> list[Question]:
    """One description request per held-out scene."""
    return [Question(s.id, DESCRIBE, _image(s, image_size), {"scene": s.to_dict()}, long=True)
            for s in _held_out(limit)]


def pope_questions(limit: int | None, image_size: int) -> list[Question]:
    """The world's POPE questions in its three splits."""
    held_out = _held_out(limit)
    return [Question(f"{split}-{i}", item.question, _image(item.scene, image_size),
                     {"label": "yes" if item.label else "no", "category": split, "object": item.shape,
                      "scene": item.scene.to_dict()})
            for split in POPE_SPLITS for i, item in enumerate(pope_items(held_out, split))]


def attribute_questions(limit: int | None, image_size: int) -> list[Question]:
    """Colour questions about shapes that appear once, and a count question per scene."""
    color, count = attribute_items(_held_out(limit))
    return [Question(f"{kind}-{i}", q, _image(s, image_size), {"kind": kind, "truth": t, "scene": s.to_dict()})
            for kind, items in (("color", color), ("count", count)) for i, (s, q, t) in enumerate(items)]
