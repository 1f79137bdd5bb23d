"""The JSON markers a run leaves in its directory (round.json, arm.json, summary.json, ...): written atomically,
read back with damage reported, and with the paths of what the run saved stored relative to the run.

A marker's `checkpoint` and `final` values name folders of the run; on disk they are relative to the run
directory (`round1/policy`), and read back they are absolute under wherever the run directory is now, so
a copied or moved run names its own checkpoints, not the original's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from vlalign.data.store import find_run_root
from vlalign.progress import warn
from vlalign.redaction import redact

PATH_KEYS = ("checkpoint", "final")


def _paths(data: Any, convert) -> Any:
    if isinstance(data, dict):
        return {k: convert(v) if k in PATH_KEYS and isinstance(v, str) else _paths(v, convert) for k, v in data.items()}
    if isinstance(data, list):
        return [_paths(v, convert) for v in data]
    return data


def portable(data: Any, root: Path) -> Any:
    """`data` with every path under `root` (at the keys `PATH_KEYS`) made relative to it."""
    root = root.absolute()

    def relative(value: str) -> str:
        path = Path(value).absolute()
        return path.relative_to(root).as_posix() if path.is_relative_to(root) else value

    return _paths(data, relative)


def located(data: Any, root: Path) -> Any:
    """`data` with every relative path (at the keys `PATH_KEYS`) made absolute under `root`."""
    return _paths(data, lambda value: value if Path(value).is_absolute() else str(root.absolute() / value))


def write_marker(path: Path, data: Any) -> None:
    """Write JSON atomically (a reader, or a resumed run, never sees half a file), run paths relative, secrets
    masked (no credential of a spec reaches a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(portable(redact(data), find_run_root(path)), indent=1, default=str))
    os.replace(tmp, path)


def read_marker(path: Path) -> Any | None:
    """A marker's content, run paths absolute; None when it is missing or damaged (then its step runs again)."""
    if not path.exists():
        return None
    try:
        return located(json.loads(path.read_text()), find_run_root(path))
    except ValueError:
        warn(f"{path} is damaged (not valid JSON); its step runs again")
        return None
