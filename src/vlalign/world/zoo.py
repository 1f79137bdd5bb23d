"""The world models that ship inside the package, each a standard model + processor directory."""

from __future__ import annotations

from pathlib import Path

CHECKPOINTS = Path(__file__).parent / "checkpoints"
NAMES = ("base", "labeler", "judge", "small", "careful")


def shipped_path(name: str = "base") -> Path:
    """Directory of a shipped world model (`world:<name>`), loadable with `from_pretrained`."""
    name = name or "base"
    if name not in NAMES:
        raise FileNotFoundError(f"there is no world model {name!r}; the world ships {', '.join(NAMES)} "
                                f"(world:base, world:labeler, ...)")
    path = CHECKPOINTS / name
    if not (path / "config.json").exists():
        raise FileNotFoundError(
            f"the shipped world model {name!r} is missing at {path}; rebuild it with "
            f"`vlalign world train-base --recipe {name} --out {path}`")
    return path
