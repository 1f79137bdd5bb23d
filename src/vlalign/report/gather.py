"""What a report shows, read from a run directory (which it never writes to).

A run directory (`vlalign run --out`) holds run.json, its stages (a manifest each), one folder per round
with its arms (arm.json: pairs, losses, metrics; training/train_history.json) and, once it is done,
summary.json with the config. A collection (`vlalign demo --out`) is a folder of such runs, with its own
summary.json comparing them. Times come from the stage manifests (started, last written); training and
evaluation, which write no manifest, are timed from their files: each lasts from the end of whatever the
run finished before it to the time its file was written (so a resumed run's include the pause).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from vlalign.data.store import MANIFEST, RUN_MARKER, Stage, stage_dirs
from vlalign.redaction import redact

ROUND = re.compile(r"round(\d+)$")
MODEL_KEYS = ("policy", "labeler", "judge", "reference")  # config keys that name a model
# The metrics plotted, in this order, where a benchmark reports them (every metric is in the tables):
# the world's and CHAIR's, POPE's, refusals and length, then MMHal-Bench's, MME's and AMBER's.
HEADLINE = {"chair_i": "CHAIR_i", "chair_s": "CHAIR_s", "object_recall": "object recall", "recall": "recall",
            "pope_accuracy": "POPE accuracy", "pope_f1": "POPE F1", "pope_yes_ratio": "POPE yes-ratio",
            "accuracy": "accuracy", "f1": "F1", "yes_ratio": "yes-ratio", "refusal_rate": "refusal rate",
            "over_refusal": "over-refusal", "mean_words": "words per answer", "average_score": "MMHal score",
            "hallucination_rate": "hallucination rate", "perception": "MME perception", "cognition": "MME cognition",
            "chair": "AMBER CHAIR", "cover": "AMBER cover", "hal": "AMBER hal", "cog": "AMBER cog"}


@dataclass
class StageInfo:
    """One stage: where it is, what it holds, how it went."""

    path: str
    rows: int
    shards: int
    errors: int  # logged failures no later write made good
    logged: list[dict]  # every entry of its errors.jsonl
    complete: bool
    model: str | None
    started: float | None
    finished: float | None

    @property
    def seconds(self) -> float | None:
        return None if self.started is None or self.finished is None else self.finished - self.started

    @property
    def anchor(self) -> str:
        return "stage-" + re.sub(r"[^A-Za-z0-9]+", "-", self.path)


@dataclass
class ArmInfo:
    """One trained arm of one round: its record (arm.json), training history and timings."""

    round: int
    name: str
    folder: str
    record: dict
    history: list[dict]
    trained_at: float | None = None  # when train_history.json was written
    done_at: float | None = None  # when arm.json was written (after saving and evaluating)
    train_seconds: float | None = None
    eval_seconds: float | None = None

    @property
    def label(self) -> str:
        return f"round {self.round}" + ("" if self.name == "policy" else f" {self.name}")

    @property
    def eval(self) -> dict[str, dict]:
        return self.record.get("eval") or {}


@dataclass
class RunInfo:
    """Everything the report of one run shows."""

    root: Path
    name: str
    method: str
    config: dict | None
    summary: dict | None
    versions: dict
    stages: list[StageInfo]
    arms: list[ArmInfo]
    base_eval: dict[str, dict] | None
    base_seconds: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.summary is not None

    @property
    def errors(self) -> int:
        return sum(s.errors for s in self.stages)

    def benchmarks(self) -> list[str]:
        names = [*(self.base_eval or {}), *(b for a in self.arms for b in a.eval)]
        return list(dict.fromkeys(names))

    def columns(self, bench: str) -> list[tuple[str, dict]]:
        """(label, metrics) on `bench`: the base, then every round's arms in order (the last main one final)."""
        out = [("base", self.base_eval[bench])] if bench in (self.base_eval or {}) else []
        mains = [a for a in self.arms if a.name == "policy"]
        for arm in self.arms:
            if bench in arm.eval:
                final = self.complete and bool(mains) and arm is mains[-1]
                out.append((arm.label + (" (final)" if final else ""), _numeric(arm.eval[bench])))
        return out

    def models(self) -> list[tuple[str, list[str]]]:
        """(model, what it did) for every model the run names: the config's roles, the pool, the stages that
        recorded one (by path), and the final policy."""
        roles: dict[str, list[str]] = {}
        config = self.config or {}
        for key in MODEL_KEYS:
            if isinstance(config.get(key), str):
                roles.setdefault(config[key], []).append(key)
        for m in config.get("pool") or []:
            if isinstance(m, dict) and m.get("model"):
                roles.setdefault(m["model"], []).append("pool" + (f" ({m['name']})" if m.get("name") else ""))
        for stage in self.stages:
            models = stage.model.values() if isinstance(stage.model, dict) else [stage.model]  # one, or by role
            for model in models:
                if isinstance(model, str) and model:
                    roles.setdefault(model, []).append(stage.path)
        if self.summary and self.summary.get("final"):
            roles.setdefault(self.summary["final"], []).append("final policy")
        return [(model, list(dict.fromkeys(r))) for model, r in roles.items()]

    def timeline(self) -> list[dict]:
        """Every step the run took, in the order it started: stages, then each arm's training and its saving
        and evaluation, with records and errors where the step has them."""
        rows = [{"step": s.path, "stage": s, "started": s.started, "seconds": s.seconds} for s in self.stages]
        for a in self.arms:
            if a.train_seconds is not None:
                rows.append({"step": f"{a.folder}: training ({a.name})", "stage": None,
                             "started": a.trained_at - a.train_seconds, "seconds": a.train_seconds})
            if a.eval_seconds is not None:
                rows.append({"step": f"{a.folder}: saving and evaluation ({a.name})", "stage": None,
                             "started": a.trained_at, "seconds": a.eval_seconds})
        return sorted(rows, key=lambda r: (r["started"] is None, r["started"] or 0.0, r["step"]))


def read_json(path: Path) -> Any | None:
    """A JSON file's content; None when it is missing or cut short (a run still writing)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _time(stamp: str | None) -> float | None:
    try:
        return datetime.fromisoformat(stamp).timestamp() if stamp else None
    except ValueError:
        return None


def _mtime(path: Path) -> float | None:
    return path.stat().st_mtime if path.exists() else None


def check_run_dir(root: Path) -> None:
    """One clear message for a path that is no run."""
    if not root.exists():
        raise FileNotFoundError(f"{root} does not exist; pass a run directory (the --out of `vlalign run` or "
                                f"`vlalign demo`)")
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is a file; pass a run directory (the --out of `vlalign run` or "
                                 f"`vlalign demo`)")
    if not (root / RUN_MARKER).exists() and not sub_runs(root):
        raise ValueError(f"{root} is not a run directory: it has no {RUN_MARKER}, nor do the folders in it; pass "
                         f"the --out of `vlalign run` or `vlalign demo`")


def sub_runs(root: Path) -> list[Path]:
    """The runs of a collection (the demo's methods), in name order; [] for a run directory itself."""
    if (root / RUN_MARKER).exists():
        return []
    return sorted(d for d in root.iterdir() if d.is_dir() and (d / RUN_MARKER).exists())


def read_stage(root: Path, folder: Path) -> StageInfo:
    stage = Stage(folder, run_root=root)
    manifest = stage.manifest if (folder / MANIFEST).exists() else {}
    counts = manifest.get("counts") or stage.counts()
    return StageInfo(path=folder.relative_to(root).as_posix(), rows=counts.get("rows", 0),
                     shards=counts.get("shards", 0), errors=int(manifest.get("errors") or 0), logged=stage.errors(),
                     complete=bool(manifest.get("complete")), model=manifest.get("model"),
                     started=_time(manifest.get("created")), finished=_time(manifest.get("updated")))


def _arm_folders(root: Path) -> list[tuple[int, Path]]:
    found = []
    for folder in root.iterdir():
        m = ROUND.match(folder.name)
        if m and folder.is_dir():
            found += [(int(m.group(1)), a.parent) for a in [folder / "arm.json", *folder.glob("*/arm.json")]
                      if a.exists()]
            if not (folder / "arm.json").exists() and (folder / "training" / "train_history.json").exists():
                found.append((int(m.group(1)), folder))  # trained, not yet saved and evaluated
    return sorted(found, key=lambda x: (x[0], x[1] != root / f"round{x[0]}", x[1].name))


def read_arm(root: Path, k: int, folder: Path) -> ArmInfo:
    record = read_json(folder / "arm.json") or {}
    history_file = folder / "training" / "train_history.json"
    history = (read_json(history_file) or {}).get("history") or []
    name = record.get("arm") or ("policy" if folder.name == f"round{k}" else folder.name)
    return ArmInfo(k, name, folder.relative_to(root).as_posix(), record, history,
                   trained_at=_mtime(history_file), done_at=_mtime(folder / "arm.json"))


def _time_arms(arms: list[ArmInfo], stages: list[StageInfo], start: float | None, base_done: float | None) -> None:
    """Training and evaluation times: from the end of what the run finished last before each."""
    ends = sorted(t for t in [start, base_done, *(s.finished for s in stages), *(a.trained_at for a in arms),
                              *(a.done_at for a in arms)] if t is not None)

    def before(t: float) -> float | None:
        earlier = [e for e in ends if e < t]
        return earlier[-1] if earlier else None

    for arm in arms:
        if arm.trained_at is not None and before(arm.trained_at) is not None:
            arm.train_seconds = arm.trained_at - before(arm.trained_at)
        if arm.done_at is not None and arm.trained_at is not None:
            arm.eval_seconds = arm.done_at - arm.trained_at


def read_run(root: Path, base_fallback: dict | None = None) -> RunInfo:
    """A run directory's report data. `base_fallback` is a collection's base metrics (the demo evaluates the
    base once for all of its runs), used where the run has none of its own."""
    marker = read_json(root / RUN_MARKER) or {}
    summary = read_json(root / "summary.json")
    stages = [read_stage(root, d) for d in stage_dirs(root)]
    arms = [read_arm(root, k, f) for k, f in _arm_folders(root)]
    base_file = root / "base" / "eval.json"
    base = (summary or {}).get("base") or read_json(base_file)
    notes = []
    if base is None and base_fallback:
        base = _attribute_base(base_fallback, arms)
        if base:
            notes.append("the base's metrics are the collection's (evaluated once for all of its runs)")
    _time_arms(arms, stages, _time(marker.get("created")), _mtime(base_file))
    info = RunInfo(root=root, name=root.name, method=marker.get("method") or (summary or {}).get("method") or "?",
                   config=redact((summary or {}).get("config")), summary=summary, versions=marker.get("versions") or {},
                   stages=stages, arms=arms, base_eval=base, notes=notes)
    if base_file.exists() and marker.get("created"):
        info.base_seconds = _mtime(base_file) - _time(marker["created"])
    return info


def _attribute_base(base: dict, arms: list[ArmInfo]) -> dict | None:
    """A collection's flat base metrics as the one benchmark its run evaluates with the same metrics."""
    if all(isinstance(v, dict) for v in base.values()):
        return base
    benches = {name: set(m) for a in arms for name, m in a.eval.items()}
    if len(benches) == 1:
        name, keys = next(iter(benches.items()))
        if keys & set(base):
            return {name: base}
    return None


@dataclass
class Collection:
    """A folder of runs (the demo): each run, the collection's summary and its base metrics."""

    root: Path
    runs: list[RunInfo]
    summary: dict | None
    base: dict | None

    def benchmarks(self) -> list[str]:
        """The benchmarks its runs evaluated on."""
        return list(dict.fromkeys(b for run in self.runs for b in run.benchmarks()))

    def columns(self) -> list[tuple[str, dict]]:
        """(label, metrics) of every model the collection compares: its summary's rows when it has one (the
        demo's: base, each method's final policy, their other arms), else each run's final arm."""
        if self.summary:
            return [(k, _numeric(v)) for k, v in self.summary.items()
                    if isinstance(v, dict) and set(HEADLINE) & set(_numeric(v))]
        out = [("base", self.base)] if self.base and _numeric(self.base) else []
        for run in self.runs:
            mains = [a for a in run.arms if a.name == "policy" and a.eval]
            if mains:
                for bench, metrics in mains[-1].eval.items():
                    out.append((run.name if len(mains[-1].eval) == 1 else f"{run.name} {bench}", metrics))
        return out


def _numeric(metrics: dict) -> dict:
    """The numbers of an evaluation, and its intervals and paired comparison with the base."""
    return {k: v for k, v in metrics.items() if (isinstance(v, (int, float)) and not isinstance(v, bool))
            or k in ("intervals", "vs_base")}


def read_collection(root: Path) -> Collection:
    """A collection's runs, each shown against the collection's base (the demo's summary holds it)."""
    summary = read_json(root / "summary.json")
    base = read_json(root / "eval" / "base.json") or (summary or {}).get("base")
    return Collection(root, [read_run(d, base) for d in sub_runs(root)], summary, base)
