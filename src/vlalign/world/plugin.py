"""The embedded world as a vlalign plugin: everything it provides, registered by name.

Installed through the `vlalign.plugins` entry point (pyproject.toml), so the general modules find the
world's models (`world:base`), prompts (`prompts.source: world`), claim splitter, rating style, injection
vocabulary, benchmarks and commands without importing it. Registering is cheap: nothing here loads torch.
"""

from __future__ import annotations

from vlalign.data.sources import PromptRequest, PromptSource
from vlalign.feedback.injection import VocabularyEntry
from vlalign.feedback.vlfeedback import RatingStyle
from vlalign.plugins import (
    BENCHMARKS,
    COMMANDS,
    MODEL_SOURCES,
    PROMPT_SOURCES,
    RATING_STYLES,
    SPLITTERS,
    VOCABULARIES,
)
from vlalign.world import bench
from vlalign.world.claims import WorldClaims
from vlalign.world.judging import judge_prompt, parse_verdict
from vlalign.world.tasks import WorldPrompts
from vlalign.world.vocabulary import training_descriptions, world_vocabulary
from vlalign.world.zoo import shipped_path

NAME = "world"


def _write_prompts(request: PromptRequest):
    from vlalign.world.prompts import write

    return write(request)


def _commands(app) -> None:
    from vlalign.world.cli import add_commands

    add_commands(app)


def register() -> None:
    MODEL_SOURCES.register(NAME, shipped_path)
    PROMPT_SOURCES.register(NAME, PromptSource(NAME, "fresh scenes of the embedded world, with tasks from a mix",
                                               WorldPrompts, _write_prompts))
    SPLITTERS.register(NAME, lambda judge: WorldClaims())
    RATING_STYLES.register(NAME, RatingStyle(NAME, per_answer=True, prompt=judge_prompt, parse=parse_verdict))
    VOCABULARIES.register(NAME, VocabularyEntry(world_vocabulary, training_descriptions))
    for b in bench.BENCHMARKS:
        BENCHMARKS.register(b.name, b)
    COMMANDS.register(NAME, _commands)
