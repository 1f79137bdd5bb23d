"""What a run directory remembers of the configs it ran under, and what it tells the user about itself: no
silent change, a resume that says so, and a stop (Ctrl-C) that says what is kept and how to go on.

- run.json keeps the config of the latest start (`config`); each round's round.json the config it ran under.
- `check_config` compares a new start's config with the recorded one. Keys that change no trained model
  (`FREE`: the report, API connection settings, the device, where metrics are logged) change freely. A
  changed `eval` list is taken, with a warning that finished rounds keep the metrics of the list they were
  evaluated on (`vlalign eval` evaluates their policies on the new one). Any other change is a new recipe: it
  is refused on a finished run (with the differing keys), and on a run whose next round has started; it is
  taken when it comes with rounds still to run, from the first of them on, each round recording its own.
  The policy never changes once the run has evaluated or trained it.
- `say_resumed` prints, as a run starts again, what it finds done; `interrupted` what is kept and the exact
  command that resumes, for the command line's Ctrl-C handler.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

from vlalign.config import to_dict
from vlalign.data.store import Stage, stage_dirs, write_atomic
from vlalign.progress import log, warn
from vlalign.ranks import is_main
from vlalign.redaction import redact

FREE = ("report", "hub", "api", "runtime.device", "runtime.device_map", "train.report_to")  # change no trained model
EVAL = ("eval", "eval_base")  # decide the metrics only
FIXED = ("policy", "pairs_from")  # what the run aligns: never changed
_active: Path | None = None  # the run directory this process works on (for `interrupted`)


def flat(data: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as dotted keys (lists stay whole values: `eval` is one key)."""
    if isinstance(data, dict) and data:
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): data}


def differences(old: dict, new: dict) -> dict[str, tuple[Any, Any]]:
    """key -> (old, new) for every dotted key whose value differs."""
    a, b = flat(old), flat(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def _shown(diffs: dict[str, tuple[Any, Any]]) -> str:
    return "; ".join(f"{k}: {json.dumps(a, default=str)} -> {json.dumps(b, default=str)}" for k, (a, b) in diffs.items())


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except ValueError:
        return {}


def finished_rounds(root: Path) -> int:
    """How many rounds in a row, from the first, are marked done."""
    k = 0
    while (root / f"round{k + 1}" / "round.json").exists():
        k += 1
    return k


def _started(folder: Path) -> bool:
    return folder.exists() and any(folder.iterdir())


def _served(data: Any) -> Any:
    """`data` with every `api:MODEL@URL` spec as `api:MODEL`: where a backend is served (a restarted server's
    new port) is no setting of the run; the model it serves is."""
    if isinstance(data, dict):
        return {k: _served(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_served(v) for v in data]
    if isinstance(data, str) and data.startswith("api:"):
        return data.split("@", 1)[0]
    return data


def check_config(root: Path, config: Any) -> dict[str, tuple[Any, Any]]:
    """The recipe keys that differ from the run's recorded config (see the module notes); `ValueError` naming
    them when the change is refused. A run without a recorded config (new, or made before configs were
    recorded) takes any."""
    recorded = _read(root / "run.json").get("config")
    if recorded is None:
        return {}
    diffs = {k: v for k, v in differences(_served(recorded), _served(redact(to_dict(config)))).items()
             if not _under(k, FREE)}
    if not diffs:
        return {}
    done, rounds = finished_rounds(root), config.rounds
    recipe = {k: v for k, v in diffs.items() if not _under(k, (*EVAL, "rounds"))}
    fixed = {k: v for k, v in recipe.items() if _under(k, FIXED)}
    began = done > 0 or (root / "base" / "eval.json").exists() or _started(root / "round1")
    where = f"{root} was started under another config"
    if fixed and began:
        raise ValueError(f"{where}: {_shown(fixed)}. A run aligns one policy; use a new --out for another")
    if rounds < done:
        raise ValueError(f"{where}: rounds {rounds}, but {done} rounds are finished there; keep rounds >= {done} "
                         f"or use a new --out")
    if recipe and done >= rounds:
        raise ValueError(f"{where} and is finished ({done} round(s)): {_shown(recipe)}. Its models were made "
                         f"under the old settings; use a new --out for the new ones, or add rounds "
                         f"(rounds={done + 1}) to go on from its last policy with them")
    if recipe and _started(root / f"round{done + 1}"):
        raise ValueError(f"{where}, and its round {done + 1} has started under the old settings: {_shown(recipe)}. "
                         f"Run it to the end with the old settings first, delete {root / f'round{done + 1}'} to "
                         f"redo that round with the new ones, or use a new --out")
    if recipe:
        log(f"config changed since the run's last start: {_shown(recipe)}; rounds 1-{done} keep theirs (each "
            f"round.json records its own), round {done + 1} on use the new")
    evals = {k: v for k, v in diffs.items() if _under(k, EVAL)}
    if evals and done:
        warn(f"eval changed ({_shown(evals)}): the {done} finished round(s) keep the metrics of the list they ran; "
             f"evaluate their policies on the new list with `vlalign eval`")
    return diffs


def record_start(root: Path, config: Any) -> None:
    """Keep the config of this start in run.json (from the main process)."""
    if not is_main():
        return
    marker = root / "run.json"
    text = json.dumps({**_read(marker), "config": redact(to_dict(config))}, indent=1, default=str)
    write_atomic(marker, lambda tmp: Path(tmp).write_text(text))


def round_changes(rounds: list[dict]) -> list[dict]:
    """Where the rounds' own configs differ from the round before: [{round, changes}], for the summary."""
    out = []
    for before, after in zip(rounds, rounds[1:], strict=False):
        if "config" in before and "config" in after:
            diffs = {k: v for k, v in differences(before["config"], after["config"]).items()
                     if not _under(k, (*FREE, "rounds"))}
            if diffs:
                out.append({"round": after["round"], "changes": {k: {"before": a, "now": b}
                                                                 for k, (a, b) in diffs.items()}})
    return out


# ---- what a run finds, and what a stop keeps ----

def progress_of(root: Path) -> list[str]:
    """One line per thing a run directory holds done or under way: finished rounds, the next round's stages
    (complete, or how many rows so far), its trained arms."""
    root = Path(root)
    lines = []
    if (root / "base" / "eval.json").exists():
        lines.append("the base policy's evaluation")
    done = finished_rounds(root)
    if done:
        lines.append(f"round{'s 1-' if done > 1 else ' '}{done} finished" + "".join(
            f" ({root / f'round{k}' / 'policy'})" for k in [done]))
    current = root / f"round{done + 1}"
    stages = [d for d in stage_dirs(current)] if current.exists() else []
    for d in stages:
        stage = Stage(d, run_root=root)
        state = "complete" if stage.is_complete else f"{stage.counts()['rows']} rows so far"
        lines.append(f"round {done + 1} {d.relative_to(current)}: {state}")
    for arm in sorted(current.glob("**/arm.json")) if current.exists() else []:
        lines.append(f"round {done + 1} arm {arm.parent.relative_to(root)} trained")
    return lines


def say_resumed(root: Path) -> None:
    """When the run directory holds an earlier start's work, say that this start resumes it and what it keeps."""
    global _active
    _active = Path(root)
    found = progress_of(root)
    if found:
        log(f"resuming {root}: " + "; ".join(found))


def resume_command() -> str:
    """The command this process was started with, as a shell line that runs it again."""
    program = Path(sys.argv[0]).name
    head = ["vlalign"] if program in ("vlalign", "__main__.py") or program.startswith("vlalign") else [sys.argv[0]]
    return shlex.join([*head, *sys.argv[1:]])


def interrupted() -> str | None:
    """What a stopped run keeps and how to resume it (None when no run was under way)."""
    if _active is None:
        return None
    kept = progress_of(_active)
    what = "; ".join(kept) if kept else "nothing finished yet"
    return (f"stopped. {_active} keeps: {what}. Resume where it stopped (finished stages are not run again) "
            f"with:\n  {resume_command()}")


def finished() -> None:
    """The run this process worked on is over (a later Ctrl-C stops no run)."""
    global _active
    _active = None


def summary_notes(summary: dict) -> list[str]:
    """The lines a summary adds below its metrics: every round's shortfalls, and where a round ran under
    settings changed since the round before."""
    out = [f"round {r['round']} shortfall: {s['message']}" for r in summary["rounds"] for s in r.get("shortfalls", [])]
    out += [f"round {c['round']} ran under changed settings: "
            + _shown({k: (v["before"], v["now"]) for k, v in c["changes"].items()})
            for c in summary.get("changes", [])]
    return out
