"""Shortfalls: a stage that made less than it was asked for (fewer prompts than `per_round`, fewer edits than
`edits`, records skipped for a missing image) says so once, as a warning, and records it in its manifest, so
the round's record and the run's summary count it (`of_round`) instead of letting it scroll past.
"""

from __future__ import annotations

from pathlib import Path

from vlalign import ranks
from vlalign.data.store import ERRORS, Stage, stage_dirs
from vlalign.progress import warn

KEY = "shortfalls"


def note(stage: Stage, key: str, count: int, message: str) -> None:
    """Record that `count` of something `stage` was asked for fell short (`message` says what, and the fix),
    and warn; a count of 0 clears an earlier note of the same key (a resume made up for it)."""
    current = dict(stage.manifest.get(KEY) or {})
    if count <= 0:
        if key in current:
            del current[key]
            stage.annotate(**{KEY: current})
        return
    current[key] = {"count": count, "message": message}
    stage.annotate(**{KEY: current})
    warn(message)


def of_stages(dirs: list[Path], root: Path) -> list[dict]:
    """The shortfalls the stages in `dirs` recorded, and their records that failed and were skipped, each as
    {stage, what, count, message}."""
    out = []
    for d in dirs:
        stage = Stage(d, run_root=root)
        manifest = stage.manifest
        name = str(d.relative_to(root))
        for key, entry in (manifest.get(KEY) or {}).items():
            out.append({"stage": name, "what": key, "count": entry["count"], "message": entry["message"]})
        failed = manifest.get("errors") or 0
        if failed:
            out.append({"stage": name, "what": "skipped", "count": failed,
                        "message": f"{name}: {failed} record(s) failed and were skipped (each reason is in "
                                   f"{d / ERRORS})"})
    return out


def of_round(root: Path, k: int) -> list[dict]:
    """The shortfalls of round k's stages (round 1's include the stages the run shares, such as a prompt
    file read once at its root)."""
    root = Path(root)
    dirs = [d for d in stage_dirs(root) if d.relative_to(root).parts[0] == f"round{k}"
            or (k == 1 and not d.relative_to(root).parts[0].startswith(("round", "base")))]
    return ranks.on_main(lambda: of_stages(dirs, root))


def require_pairs(pairs: Stage | str, root: Path, k: int, arm: str) -> None:
    """Stop before training an arm whose pair stage made no pair, saying what the round fell short of (a
    judge that rated nothing, prompts that were skipped) rather than only that nothing is left to train on."""
    if not isinstance(pairs, Stage) or pairs.counts()["rows"]:
        return
    found = [s["message"] for s in of_round(root, k)]
    why = ("; what fell short before it: " + "; ".join(found)) if found else \
        " (nothing fell short before it: no two answers of a prompt differed enough under the pair rules)"
    raise ValueError(f"round {k}: the {arm} arm has no preference pair to train on ({pairs.dir} is empty){why}")
