"""Progress bars and messages for every long step (rich), all on stderr, so stdout carries only results.

`scope("rlaif-v round 2")` names what the bars inside it belong to: "rlaif-v round 2: sampling".
Under a launcher only the main process shows bars and news; every process warns, naming its rank.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from vlalign import ranks
from vlalign.redaction import redact_secrets

# A terminal gets its own width; a pipe or a log file 100 columns, wide enough for the tables.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 100)
_scopes: list[str] = []


@contextmanager
def scope(name: str) -> Iterator[None]:
    """Prefix every bar and message inside with `name` (scopes nest: "demo: rlaif-v round 1: sampling")."""
    _scopes.append(name)
    try:
        yield
    finally:
        _scopes.pop()


def _named(text: str) -> str:
    """`text` under its scopes, with any credential it carries masked (a spec's URL, an echoed key)."""
    return redact_secrets(": ".join([*_scopes, text]))


def log(message: str) -> None:
    """One line of progress news (which round, which method), from the main process."""
    if ranks.is_main():
        console.print(f"[bold]{_named(message)}[/bold]", highlight=False)


def warn(message: str) -> None:
    """Something the user should know about and may want to fix, without stopping the run."""
    who = f"rank {ranks.rank()}: " if ranks.launched() else ""
    console.print(f"[yellow]warning:[/yellow] {who}{_named(message)}", highlight=False, soft_wrap=True)  # paths stay whole


class _Bar:
    def __init__(self, progress: Progress | None, task: int | None):
        self._progress, self._task = progress, task

    def advance(self, n: int = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def update(self, description: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description=_named(description))


@contextmanager
def progress(description: str, total: int, disable: bool = False) -> Iterator[_Bar]:
    if disable or not ranks.is_main():
        yield _Bar(None, None)
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as p:
        yield _Bar(p, p.add_task(_named(description), total=total))
