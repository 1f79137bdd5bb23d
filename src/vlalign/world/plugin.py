"""The embedded world as a vlalign plugin: everything it provides, registered by name.

Each function below fills one registry and is installed as an entry point of that registry's group
(pyproject.toml), so the general modules find the world's models (`world:base`), prompts
(`prompts.source: world`), claim splitter, rating style, injection vocabulary, benchmarks, the report's
answer marks and commands without importing it, and a registry loads only what it needs: nothing here
loads torch.
"""

from __future__ import annotations

NAME = "world"


def model_sources() -> None:
    from vlalign.plugins import MODEL_SOURCES
    from vlalign.world.zoo import shipped_path

    MODEL_SOURCES.register(NAME, shipped_path)


def _write_prompts(request):
    from vlalign.world.prompts import write

    return write(request)


def prompt_sources() -> None:
    from vlalign.data.sources import PromptSource
    from vlalign.plugins import PROMPT_SOURCES
    from vlalign.world.tasks import WorldPrompts

    PROMPT_SOURCES.register(NAME, PromptSource(NAME, "fresh scenes of the embedded world, with tasks from a mix",
                                               WorldPrompts, _write_prompts))


def _world_claims(judge):
    from vlalign.world.claims import WorldClaims  # here: checking a config's splitter name needs no scenes

    return WorldClaims()


def splitters() -> None:
    from vlalign.plugins import SPLITTERS

    SPLITTERS.register(NAME, _world_claims)


def _judge_prompt(*args, **kwargs):
    from vlalign.world.judging import judge_prompt

    return judge_prompt(*args, **kwargs)


def _parse_verdict(*args, **kwargs):
    from vlalign.world.judging import parse_verdict

    return parse_verdict(*args, **kwargs)


def rating_styles() -> None:
    from vlalign.feedback.vlfeedback import RatingStyle
    from vlalign.plugins import RATING_STYLES

    RATING_STYLES.register(NAME, RatingStyle(NAME, per_answer=True, prompt=_judge_prompt, parse=_parse_verdict))


def _world_vocabulary(*args, **kwargs):
    from vlalign.world.vocabulary import world_vocabulary

    return world_vocabulary(*args, **kwargs)


def _training_descriptions(*args, **kwargs):
    from vlalign.world.vocabulary import training_descriptions

    return training_descriptions(*args, **kwargs)


def vocabularies() -> None:
    from vlalign.feedback.injection import VocabularyEntry
    from vlalign.plugins import VOCABULARIES

    VOCABULARIES.register(NAME, VocabularyEntry(_world_vocabulary, _training_descriptions))


def benchmarks() -> None:
    from vlalign.plugins import BENCHMARKS
    from vlalign.world import bench

    for b in bench.BENCHMARKS:
        BENCHMARKS.register(b.name, b)


def _scene_marks(answer, prompt):
    from vlalign.world.marks import scene_marks

    return scene_marks(answer, prompt)


def answer_markers() -> None:
    from vlalign.plugins import ANSWER_MARKERS

    ANSWER_MARKERS.register(NAME, _scene_marks)
