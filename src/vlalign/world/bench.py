"""The synthetic world's benchmarks through `vlalign score` / `vlalign eval` and in a run's `eval:` list.

Answer records carry the scene they are about (`Scene.to_dict()`), so scoring is exact and needs no
other file: world-chair scores descriptions with `world.chair_metrics`, world-pope is scored as POPE is,
on the world's splits (`world.pope_items`), world-attributes checks colour and count answers
(`world.attribute_correct`). `vlalign eval` asks the questions `vlalign world eval` asks, on held-out
scenes. `world` evaluates a model on all of them at once (`evaluate_world`): what the world's recipes
list under `eval:`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

from vlalign.evaluate.answers import Field, Issues, Question, read_answers
from vlalign.evaluate.benchmarks import Benchmark, EvalInputs, ScoreInputs
from vlalign.evaluate.pope import score_pope
from vlalign.world.metrics import (
    DESCRIBE,
    EVAL_SCENES,
    POPE_SPLITS,
    attribute_correct,
    attribute_items,
    chair_metrics,
    held_out_scenes,
    pope_items,
)
from vlalign.world.scene import COLORS, EVAL_SPLITS, Scene
from vlalign.world.text import NUMBERS

SCENE = Field("scene", "the world scene the answer is about, as Scene.to_dict() writes it", (dict,))
KIND = Field("kind", "what the question asks", choices=("color", "count"))
TRUTH = Field("truth", "the right colour or number word")
DEFAULT_SCENES = 1000


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


def _split(inputs: EvalInputs) -> str:
    return inputs.split or EVAL_SPLITS[0]


def _held_out(inputs: EvalInputs) -> list[Scene]:
    return held_out_scenes(_split(inputs), inputs.limit or DEFAULT_SCENES, EVAL_SCENES)


def _image(scene: Scene, size: int):
    from vlalign.world.render import render

    return partial(render, scene, size)


def chair_questions(inputs: EvalInputs, image_size: int) -> list[Question]:
    """One description request per held-out scene."""
    return [Question(s.id, DESCRIBE, _image(s, image_size), {"scene": s.to_dict()}, long=True)
            for s in _held_out(inputs)]


def pope_questions(inputs: EvalInputs, image_size: int) -> list[Question]:
    """The world's POPE questions in its three splits."""
    held_out = _held_out(inputs)
    return [Question(f"{split}-{i}", item.question, _image(item.scene, image_size),
                     {"label": "yes" if item.label else "no", "category": split, "object": item.shape,
                      "scene": item.scene.to_dict()})
            for split in POPE_SPLITS for i, item in enumerate(pope_items(held_out, split))]


def attribute_questions(inputs: EvalInputs, image_size: int) -> list[Question]:
    """Colour questions about shapes that appear once, and a count question per scene."""
    color, count = attribute_items(_held_out(inputs))
    return [Question(f"{kind}-{i}", q, _image(s, image_size), {"kind": kind, "truth": t, "scene": s.to_dict()})
            for kind, items in (("color", color), ("count", count)) for i, (s, q, t) in enumerate(items)]


def _world(build: Callable[[EvalInputs, int], list[Question]]) -> Callable[[EvalInputs], list[Question]]:
    """A world question builder fed with the inputs (scenes: `limit`, `split`) and the model's image size."""
    def questions(inputs: EvalInputs) -> list[Question]:
        if not inputs.image_size:
            raise ValueError("world benchmarks need a world model (world:base or one trained on the world)")
        return build(inputs, inputs.image_size)
    return questions


def _no_answer_file(_: ScoreInputs) -> dict:
    raise ValueError("the world benchmark evaluates a model (in a run's eval: list, or `vlalign world eval`); "
                     "score an answer file with world-chair, world-pope or world-attributes")


def run_world(model, processor, inputs: EvalInputs) -> dict:
    """Every world metric of `model` on `inputs.limit` held-out scenes (1,000 by default) of `inputs.split`
    (test by default; dev for choosing recipes)."""
    from vlalign.world.metrics import evaluate_world

    return evaluate_world(model, processor, n_scenes=inputs.limit or DEFAULT_SCENES, split=_split(inputs))


BENCHMARKS = (
    Benchmark("world", "every exact world metric (CHAIR, recall, POPE, colour and count, red-team) on held-out "
              "scenes; limit = scenes, split = test (default) or dev", _no_answer_file, _world(chair_questions),
              run=run_world, splits=EVAL_SPLITS),
    Benchmark("world-chair", "CHAIR on the synthetic world, exact",
              lambda i: score_world_chair(i.answers, i.skip_bad), _world(chair_questions), long_tokens=96,
              short_tokens=8, splits=EVAL_SPLITS),
    Benchmark("world-pope", "POPE on the synthetic world",
              lambda i: score_pope(i.answers, i.skip_bad, i.parse), _world(pope_questions), long_tokens=96,
              short_tokens=8, splits=EVAL_SPLITS),
    Benchmark("world-attributes", "colour and count accuracy on the synthetic world",
              lambda i: score_world_attributes(i.answers, i.skip_bad), _world(attribute_questions),
              long_tokens=96, short_tokens=8, splits=EVAL_SPLITS),
)
