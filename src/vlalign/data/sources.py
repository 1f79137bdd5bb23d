"""Prompt sources: where a run's prompts come from, by name (`prompts.source` in every config).

A registered source (`world`, from the world plugin) makes prompts itself; any other value of
`prompts.source` is a prompt file (JSON lines or a `datasets` directory, see `vlalign.data.prompts`).
Each source declares its `options` as a dataclass, so `prompts.options` is checked with the rest of the
config before anything heavy is imported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vlalign.plugins import PROMPT_SOURCES

if TYPE_CHECKING:
    from vlalign.data.store import RunStore, Stage

FILE = "file"


@dataclass
class PromptRequest:
    """What a source is asked for: `n` prompts starting at `offset` of its stream, written into `stage`.
    `processor` is the policy's (a source that renders images may size them for it)."""

    store: RunStore
    stage: Stage
    n: int
    offset: int
    options: Any
    processor: Any = None
    path: str | None = None  # the prompt file, for the file source
    seed: int = 0


@dataclass(frozen=True)
class PromptSource:
    """A named source: its options (a dataclass) and the function that writes a round's prompts."""

    name: str
    summary: str
    options: type
    write: Callable[[PromptRequest], Stage]
    endless: bool = True  # every offset gives new prompts (a file repeats once it is used up)


@dataclass(frozen=True)
class FileOptions:
    """Settings of a prompt file."""

    images: str | None = None  # folder the records' relative image paths start from (default: the file's folder)
    allow_outside: bool = False  # allow image paths that leave that folder (a data file could name any file)


def source_named(source: str | None) -> PromptSource:
    """The source a config's `prompts.source` names: a registered one, or else the prompt-file source."""
    if source is None:
        raise ValueError("prompts.source is not set: name a prompt source (" + ", ".join(
            n for n in PROMPT_SOURCES.names() if n != FILE) + ") or a prompt file")
    return PROMPT_SOURCES.get(source if source in PROMPT_SOURCES else FILE)


def _write_file(request: PromptRequest) -> Stage:
    from vlalign.data.prompts import file_prompts

    return file_prompts(request)


PROMPT_SOURCES.register(FILE, PromptSource(FILE, "records of a JSON-lines file or a datasets directory",
                                           FileOptions, _write_file, endless=False))
