"""Registries: the names a config or a command may use, and what each stands for.

The core registers its own entries (methods, benchmarks, claim splitters, ...). A plugin adds more through
each registry's entry point group (`vlalign.methods`, `vlalign.benchmarks`, ...: the `group` below): an entry
point names a function that takes nothing and calls `register` on that registry. Commands come through the
`vlalign.commands` group, whose functions receive the CLI's typer app (kept apart, so the command line starts
without filling the registries). The embedded world is such a plugin (`vlalign.world.plugin`, one function per
group, listed in pyproject.toml), so no general module imports it. Registries are filled on first use, and
registering is cheap: entries that need torch import it only when they are called.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator
from importlib.metadata import entry_points
from typing import Generic, TypeVar

T = TypeVar("T")


def _run_group(group: str, *args) -> None:
    for ep in sorted(entry_points(group=group), key=lambda e: e.name):
        ep.load()(*args)


def add_commands(app) -> None:
    """Let every installed plugin add its commands to the command line."""
    _run_group("vlalign.commands", app)


class Registry(Generic[T]):
    """Named entries of one kind. `builtins` are the core modules that register entries when imported."""

    def __init__(self, kind: str, group: str, builtins: tuple[str, ...] = (), packages: tuple[str, ...] = ()):
        self.kind, self.group, self.builtins, self.packages = kind, group, builtins, packages
        self._items: dict[str, T] = {}
        self._ready = False

    def register(self, name: str, item: T) -> T:
        if name in self._items and self._items[name] is not item:
            raise ValueError(f"a {self.kind} named {name!r} is registered already")
        self._items[name] = item
        return item

    def _fill(self) -> None:
        if not self._ready:
            self._ready = True
            for module in self.builtins:
                importlib.import_module(module)
            for package in self.packages:  # every module of the package registers its entries
                path = importlib.import_module(package).__path__
                for info in sorted(pkgutil.iter_modules(path), key=lambda i: i.name):
                    importlib.import_module(f"{package}.{info.name}")
            _run_group(self.group)

    def get(self, name: str) -> T:
        self._fill()
        if name not in self._items:
            known = ", ".join(sorted(self._items)) or "none"
            raise ValueError(f"unknown {self.kind} {name!r}; known: {known}")
        return self._items[name]

    __getitem__ = get

    def __contains__(self, name: object) -> bool:
        self._fill()
        return name in self._items

    def names(self) -> list[str]:
        self._fill()
        return list(self._items)

    def items(self) -> Iterator[tuple[str, T]]:
        self._fill()
        return iter(list(self._items.items()))


METHODS: Registry = Registry("method", "vlalign.methods", ("vlalign.methods.rlaif_v", "vlalign.methods.silkie",
                                                           "vlalign.methods.povid"), packages=("vlalign.methods",))
# `world:base`: a prefix before ":" names a source of models, whose entry maps the rest to a directory.
MODEL_SOURCES: Registry = Registry("model source", "vlalign.model_sources")
PROMPT_SOURCES: Registry = Registry("prompt source", "vlalign.prompt_sources", ("vlalign.data.sources",))
SPLITTERS: Registry = Registry("claim splitter", "vlalign.splitters", ("vlalign.feedback.splitters",))
RATING_STYLES: Registry = Registry("rating style", "vlalign.rating_styles", ("vlalign.feedback.vlfeedback",))
VOCABULARIES: Registry = Registry("injection vocabulary", "vlalign.vocabularies", ("vlalign.feedback.injection",))
BENCHMARKS: Registry = Registry("benchmark", "vlalign.benchmarks", ("vlalign.evaluate.benchmarks",))
# Folders of shipped YAML recipes (`vlalign.recipes`): name -> folder.
RECIPE_FOLDERS: Registry = Registry("recipe folder", "vlalign.recipes", ("vlalign.recipes",))
# The report's highlights: an entry maps (answer, its PromptRecord) to `vlalign.report.marks.Mark`s, or to None
# where it knows nothing of that prompt (the world marks the objects its scene graph does not hold).
ANSWER_MARKERS: Registry = Registry("answer marker", "vlalign.answer_markers")
