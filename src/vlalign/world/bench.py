"""The synthetic world's benchmarks through `vlalign score` / `vlalign eval` and in a run's `eval:` list.

Answer records carry the scene they are about (`Scene.to_dict()`), so scoring is exact and needs no
other file: world-chair scores descriptions with `world.metrics.chair_counts`, world-pope is scored as POPE is,
on the world's splits (`world.pope_items`), world-attributes checks colour and count answers
(`world.attribute_correct`). `vlalign eval` asks the questions `vlalign world eval` asks, on held-out
scenes. `world` evaluates a model on all of them at once (`evaluate_world`): what the world's recipes
list under `eval:`. world-judge and world-labeler measure AI feedback instead (`vlalign.world.feedback_eval`).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

from vlalign.evaluate.answers import Field, Issues, Question, read_answers
from vlalign.evaluate.benchmarks import Benchmark, EvalInputs, ScoreInputs
from vlalign.evaluate.intervals import Outcomes, Result, ratio, scored, statistic
from vlalign.evaluate.pope import pope_result
from vlalign.world.feedback_eval import (
    judge_records,
    labeler_records,
    world_judge_result,
    world_labeler_result,
)
from vlalign.world.metrics import (
    DESCRIBE,
    EVAL_SCENES,
    POPE_SPLITS,
    attribute_correct,
    attribute_items,
    chair_outcomes,
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


def world_chair_result(answers_path: str | Path, skip_bad: bool = False) -> Result:
    """CHAIR, recall and length of descriptions, exact against each answer's scene, with intervals over answers."""
    issues = Issues(str(answers_path), skip=skip_bad)
    pairs = _scenes(read_answers(answers_path, [SCENE], issues), issues)
    issues.require(pairs)
    outcomes = chair_outcomes([s for _, s in pairs], [a.answer for a, _ in pairs], [a.question_id for a, _ in pairs])
    return scored(outcomes, issues.report())


def score_world_chair(answers_path: str | Path, skip_bad: bool = False) -> dict:
    return world_chair_result(answers_path, skip_bad).metrics


@statistic("world-attributes")
def attributes_statistic(sums, params) -> dict:
    return {f"{kind}_accuracy": ratio(sums[f"{kind}_right"], sums[f"{kind}_n"]) for kind in params["kinds"]}


def world_attributes_result(answers_path: str | Path, skip_bad: bool = False) -> Result:
    """Colour and count accuracy: right when the answer names the true value and no other; intervals over
    questions, each kind resampled apart."""
    issues = Issues(str(answers_path), skip=skip_bad)
    answers = read_answers(answers_path, [KIND, TRUTH], issues)
    issues.require(answers)
    vocabularies = {"color": COLORS, "count": NUMBERS}
    kinds = [k for k in vocabularies if any(a["kind"] == k for a in answers)]
    rows = [(a.question_id, {f"{a['kind']}_n": 1,
                             f"{a['kind']}_right": int(attribute_correct(a.answer, a["truth"], vocabularies[a["kind"]]))})
            for a in answers]
    outcomes = Outcomes.from_rows("world-attributes", "question", rows, [a["kind"] for a in answers],
                                  params={"kinds": kinds},
                                  binary={f"{k}_accuracy": (f"{k}_right", f"{k}_n") for k in kinds})
    sizes = {f"{k}_n": sum(a["kind"] == k for a in answers) for k in kinds}
    return scored(outcomes, {**sizes, **issues.report()})


def score_world_attributes(answers_path: str | Path, skip_bad: bool = False) -> dict:
    return world_attributes_result(answers_path, skip_bad).metrics


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


def _no_answer_file(_: ScoreInputs) -> Result:
    raise ValueError("the world benchmark evaluates a model (in a run's eval: list, or `vlalign world eval`); "
                     "score an answer file with world-chair, world-pope or world-attributes")


def _no_questions(_: EvalInputs) -> list[Question]:
    raise ValueError("this benchmark measures a judge or labeler: `vlalign eval` it with --judge or --labeler")


def run_world(model, processor, inputs: EvalInputs) -> Result:
    """Every world metric of `model` on `inputs.limit` held-out scenes (1,000 by default) of `inputs.split`
    (test by default; dev for choosing recipes)."""
    from vlalign.world.metrics import world_result

    return world_result(model, processor, n_scenes=inputs.limit or DEFAULT_SCENES, split=_split(inputs))[0]


BENCHMARKS = (
    Benchmark("world", "every exact world metric (CHAIR, recall, POPE, colour and count, red-team) on held-out "
              "scenes; limit = scenes, split = test (default) or dev", _no_answer_file, _world(chair_questions),
              run=run_world, splits=EVAL_SPLITS),
    Benchmark("world-chair", "CHAIR on the synthetic world, exact",
              lambda i: world_chair_result(i.answers, i.skip_bad), _world(chair_questions), long_tokens=96,
              short_tokens=8, splits=EVAL_SPLITS),
    Benchmark("world-pope", "POPE on the synthetic world",
              lambda i: pope_result(i.answers, i.skip_bad, i.parse), _world(pope_questions), long_tokens=96,
              short_tokens=8, splits=EVAL_SPLITS),
    Benchmark("world-attributes", "colour and count accuracy on the synthetic world",
              lambda i: world_attributes_result(i.answers, i.skip_bad), _world(attribute_questions),
              long_tokens=96, short_tokens=8, splits=EVAL_SPLITS),
    Benchmark("world-judge", "a judge's ratings (--judge, --judge-style; world by default) against the scene graph's, "
              "per aspect and on pairs; limit = scenes (300)", lambda i: world_judge_result(i.answers, i.skip_bad),
              _no_questions, splits=EVAL_SPLITS, judged=judge_records),
    Benchmark("world-labeler", "a labeler's P(yes) on a policy's claims (--labeler, --model: world:base by default) "
              "against the scene graph; limit = scenes (200)", lambda i: world_labeler_result(i.answers, i.skip_bad),
              _no_questions, splits=EVAL_SPLITS, judged=labeler_records),
)
