"""Kill anywhere: `vlalign run` on a tiny config, SIGKILLed again and again (in every stage, in training, in
the middle of every model save, before every marker, and at random moments), resumed each time, must end
with exactly what a run that was never killed has: every record once, the same ids and texts in the same
order, bit-equal trained weights, the same summary.

The run is a subprocess (`_run_worker.py`) that logs every write it makes as an event; a reference run
gives the events, and each killed attempt dies in the middle of one chosen event. The targets are one
random occurrence of each place (a stage, an arm's training, a save, a marker), in run order, so every
attempt reaches its target before the run could end. Set VLALIGN_KILL_SEED to draw other kill points.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from _runs import differences

WORKER = Path(__file__).parent / "_run_worker.py"
TRAIN = ["runtime.dtype=fp32", "report=false", "train.batch_size=2", "train.epochs=2", "train.optim.lr=1e-3",
         "train.optim.log_every=1", "train.checkpoint_every=1"]
CONFIGS = {
    "rlaif-v": ["policy=world:base", "labeler=self", "rounds=2", "prompts.source=world", "prompts.per_round=6",
                "samples=3", "decoding.max_new_tokens=24", "decoding.temperature=1.0", "splitter=world", "batch_size=4",
                *TRAIN],
    "silkie": ["policy=world:base", "prompts.source=world", "prompts.per_round=6",
               "pool=[{model: world:base, max_new_tokens: 40}, {model: world:small, temperature: 1.0, "
               "max_new_tokens: 40}, {model: world:careful, max_new_tokens: 40}]", "answers_per_prompt=3",
               "judge=world:judge", "judge_style=world", "splitter=world", "claim_balance=[world/describe]", *TRAIN],
    "povid": ["policy=world:base", "prompts.source=world", "prompts.per_round=6", "vocabulary=world",
              "cooccurrence_texts=200", *TRAIN, "stage2.batch_size=2", "stage2.optim.lr=1e-3",
              "stage2.optim.log_every=1", "stage2.checkpoint_every=1"],
}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
RANDOM_TIME_KILLS = 1  # each kills a run of its own from the start; CI time allows one


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def _attempt(method: str, out: Path, events: Path, kill: str = "-", after: float | None = None,
             config: list[str] | None = None) -> tuple[int, str, float]:
    """One `vlalign run`, killed at the event `kill` or `after` seconds into its run (from its first event, so
    the imports do not count); (exit code, stderr, seconds from its first event to its end)."""
    log = out.with_name(out.name + ".stderr")
    before = _lines(events)
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, str(WORKER), str(events), kill, "run", method, "--out", str(out),
                                 *(config or CONFIGS[method])], stdout=subprocess.DEVNULL, stderr=err, env=ENV)
        while proc.poll() is None and _lines(events) <= before:
            time.sleep(0.05)
        began = time.monotonic()
        if after is not None:
            time.sleep(after)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
        code = proc.wait(timeout=900)
    return code, log.read_text(), time.monotonic() - began


def _place(name: str) -> tuple[str, str]:
    """(area, place) of an event: the stage a write belongs to, an arm's training, a save, a marker."""
    kind, _, where = name.partition(":")
    if kind in ("forward", "checkpoint"):
        return "train", where
    if kind in ("save", "items"):
        return "stage" if kind == "items" else "save", where
    if kind == "marker" or "/" not in where:
        return "marker", where
    return "stage", str(Path(where).parent)


def _targets(events: list[str], rng: random.Random) -> list[tuple[str, str, str]]:
    """(area, place, kill) per place, in run order: a random event of the place's first visit (the run of its
    events from its first one on). An attempt resumed after a kill in an earlier place meets that visit's
    events exactly as the reference did, so it always reaches its target."""
    visits: dict[tuple[str, str], list[str]] = {}
    for i, name in enumerate(events):
        place = _place(name)
        if place not in visits:
            visits[place] = []
        if place == _place(events[i - 1] if i else "") or not visits[place]:
            visits[place].append(name)
    out = []
    for (area, place), names in visits.items():
        if area == "marker" and not place.endswith("arm.json") and rng.random() < 0.5:
            continue
        k = rng.randrange(len(names))
        out.append((area, place, f"{names[k]}#{names[:k + 1].count(names[k])}"))
    return out


def _kill_and_resume(method: str, out: Path, plan: list[tuple[str, str, str | None, float | None]],
                     tally: dict[str, Counter]) -> None:
    """Run the attempts of `plan` (area, place, kill event, or seconds after the start) on `out`, then one to
    the end; count per area what each did."""
    events = out.with_name(out.name + ".events")
    for area, place, kill, after in [*plan, ("final", "resume", None, None)]:
        code, err, _ = _attempt(method, out, events, kill or "-", after)
        counts = tally.setdefault(area, Counter())
        counts["tried"] += 1
        counts["logged"] += sum(1 for line in err.splitlines() if line.startswith(("warning:", "error:")))
        if code == -signal.SIGKILL:
            counts["retried"] += 1  # the next attempt resumes it
        elif code != 0:
            counts["crashed"] += 1
            pytest.fail(f"{method}: the attempt aimed at {place} ({kill or after}) failed with {code}:\n{err[-3000:]}")
        elif area != "final":
            counts["ended before its kill"] += 1
    assert code == 0, "the last attempt resumes to the end"


@pytest.mark.slow
@pytest.mark.parametrize("method", list(CONFIGS))
def test_a_run_killed_anywhere_ends_as_if_never_killed(tmp_path, method):
    seed = int(os.environ.get("VLALIGN_KILL_SEED", "0"))
    rng = random.Random(f"{method}:{seed}")
    ref = tmp_path / "reference"
    code, err, duration = _attempt(method, ref, tmp_path / "reference.events")
    assert code == 0, err[-3000:]
    events = (tmp_path / "reference.events").read_text().splitlines()

    tally: dict[str, Counter] = {}
    targets = _targets(events, rng)
    _kill_and_resume(method, tmp_path / "aimed", [(a, p, k, None) for a, p, k in targets], tally)
    times: list[float] = []
    for _ in range(RANDOM_TIME_KILLS):  # each within what is left of the run after the kills before it
        times.append(rng.uniform(0, 0.8 * (duration - sum(times))))
    _kill_and_resume(method, tmp_path / "timed", [("time", f"{t:.1f} s", None, t) for t in times], tally)
    problems = [f"{d.name}: {p}" for d in (tmp_path / "aimed", tmp_path / "timed") for p in differences(ref, d)]
    tally["final"]["silent-wrong"] = len(problems)
    print(f"\n{method} (seed {seed}, {len(targets)} aimed kills): "
          + "; ".join(f"{a}: {dict(c)}" for a, c in tally.items()))
    assert not problems, problems
    aimed = [c for a, c in tally.items() if a not in ("time", "final")]
    assert sum(c["ended before its kill"] for c in aimed) == 0, "every aimed attempt died where it was aimed"
    assert {"stage", "train", "save", "marker"} <= set(tally)


@pytest.mark.slow
def test_a_kill_after_an_arm_is_saved_costs_its_evaluation_not_its_training(tmp_path):
    """SIGKILLed once the round's policy is saved and evaluated but before its marker is written (what is on disk
    after a kill anywhere in the evaluation), the resumed run evaluates the saved policy again: no training
    forward pass runs, and it ends with the same summary as the run that was never killed."""
    config = [a for a in CONFIGS["rlaif-v"] if not a.startswith("rounds=")] + [
        "rounds=1", "eval=[{name: world, limit: 2}]", "eval_base=false"]
    code, err, _ = _attempt("rlaif-v", tmp_path / "reference", tmp_path / "reference.events", config=config)
    assert code == 0, err[-3000:]
    events = tmp_path / "run.events"
    code, _, _ = _attempt("rlaif-v", tmp_path / "run", events, "marker:round1/arm.json#1", config=config)
    assert code == -signal.SIGKILL
    before = _lines(events)
    code, err, _ = _attempt("rlaif-v", tmp_path / "run", events, config=config)
    assert code == 0, err[-3000:]
    resumed = events.read_text().splitlines()[before:]
    assert not [e for e in resumed if e.startswith("forward:")], "the resumed run trained again"
    assert "marker:round1/arm.json" in resumed
    assert differences(tmp_path / "reference", tmp_path / "run") == []
