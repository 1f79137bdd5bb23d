"""`Models` stand-ins for stage tests: chat backends given by a function, models loaded by a function or not
at all (a test fails if a stage loads one it should not)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest


class GivenModels:
    """`chat(spec)` yields `chat(spec)`; `using(spec)` yields `load(spec)`, or fails the test when `load` is None."""

    def __init__(self, chat: Callable[[str], Any], load: Callable[[str], tuple] | None = None):
        self._chat, self._load = chat, load

    @contextmanager
    def using(self, spec: str, runtime: Any = None) -> Iterator[tuple]:
        if self._load is None:
            pytest.fail(f"{spec} was loaded, and nothing should load here")
        yield self._load(spec)

    @contextmanager
    def chat(self, spec: str, runtime: Any = None) -> Iterator[Any]:
        yield self._chat(spec)
