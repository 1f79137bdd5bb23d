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


def splitters() -> None:
    from vlalign.plugins import SPLITTERS
    from vlalign.world.claims import WorldClaims

    SPLITTERS.register(NAME, lambda judge: WorldClaims())


def rating_styles() -> None:
    from vlalign.feedback.vlfeedback import RatingStyle
    from vlalign.plugins import RATING_STYLES
    from vlalign.world.judging import judge_prompt, parse_verdict

    RATING_STYLES.register(NAME, RatingStyle(NAME, per_answer=True, prompt=judge_prompt, parse=parse_verdict))


def vocabularies() -> None:
    from vlalign.feedback.injection import VocabularyEntry
    from vlalign.plugins import VOCABULARIES
    from vlalign.world.vocabulary import training_descriptions, world_vocabulary

    VOCABULARIES.register(NAME, VocabularyEntry(world_vocabulary, training_descriptions))


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
