"""The embedded world as a vlalign plugin: everything it provides, registered by name.

Each function below fills one registry and is installed as an entry point of that registry's group
(pyproject.toml), so the general modules find the world's models (`world:base`), prompts
(`prompts.source: world`), claim splitter, rating style, injection vocabulary, benchmarks, recipes, the
report's answer marks and commands without importing it, and a registry loads only what it needs: nothing here
loads torch.
"""

from __future__ import annotations

import importlib

NAME = "world"


def _later(module: str, name: str):
    """`module.name`, imported when first called: registering it imports nothing (a config check loads no
    scenes, no numpy and no torch)."""
    def call(*args, **kwargs):
        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    call.__qualname__ = call.__name__ = name
    return call


def model_sources() -> None:
    from vlalign.plugins import MODEL_SOURCES
    from vlalign.world.zoo import shipped_path

    MODEL_SOURCES.register(NAME, shipped_path)


def prompt_sources() -> None:
    from vlalign.data.sources import PromptSource
    from vlalign.plugins import PROMPT_SOURCES
    from vlalign.world.tasks import WorldPrompts

    PROMPT_SOURCES.register(NAME, PromptSource(NAME, "fresh scenes of the embedded world, with tasks from a mix",
                                               WorldPrompts, _later("vlalign.world.prompts", "write")))


def _world_claims(*counts: str):
    def make(judge):  # imported here: checking a config's splitter name needs no scenes
        from vlalign.world.claims import WorldClaims

        return WorldClaims(counts=frozenset(counts))
    return make


def splitters() -> None:
    from vlalign.plugins import SPLITTERS

    SPLITTERS.register(NAME, _world_claims())
    SPLITTERS.register(f"{NAME}-counts", _world_claims("answers", "stated", "implied"))
    SPLITTERS.register(f"{NAME}-answers", _world_claims("answers"))
    SPLITTERS.register(f"{NAME}-implied", _world_claims("answers", "implied"))


def rating_styles() -> None:
    from vlalign.feedback.vlfeedback import RatingStyle
    from vlalign.plugins import RATING_STYLES

    RATING_STYLES.register(NAME, RatingStyle(NAME, per_answer=True,
                                             prompt=_later("vlalign.world.judging", "judge_prompt"),
                                             parse=_later("vlalign.world.judging", "parse_verdict")))


def vocabularies() -> None:
    from vlalign.feedback.injection import VocabularyEntry
    from vlalign.plugins import VOCABULARIES

    VOCABULARIES.register(NAME, VocabularyEntry(_later("vlalign.world.vocabulary", "world_vocabulary"),
                                                 _later("vlalign.world.vocabulary", "training_descriptions")))


def benchmarks() -> None:
    from vlalign.plugins import BENCHMARKS
    from vlalign.world import bench

    for b in bench.BENCHMARKS:
        BENCHMARKS.register(b.name, b)


def recipes() -> None:
    from pathlib import Path

    from vlalign.plugins import RECIPE_FOLDERS

    RECIPE_FOLDERS.register(NAME, Path(__file__).resolve().parent / "recipes")


def answer_markers() -> None:
    from vlalign.plugins import ANSWER_MARKERS

    ANSWER_MARKERS.register(NAME, _later("vlalign.world.marks", "scene_marks"))
