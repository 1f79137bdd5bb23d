"""The run report: a static HTML folder that opens offline from disk (`vlalign report RUN`).

    index.html      overview: method, models, config, versions, time per stage, records and errors
    metrics.html    every configured benchmark for the base, each round and the final model (plots, tables)
    training.html   loss, reward margin, reward accuracy and learning rate per step, per round; an online
                    run's rollouts per round (each reward component, length, KL, clip fraction)
    pairs.html      the pair viewer: filter and search every round's pairs, with what made each preference
    groups.html     an online run's group viewer: each prompt's n answers with their rewards and claims
    errors.html     each stage's logged errors
    style.css, pairs.js, data/*.js, plots/*.svg, images/*.png

A collection of runs (the demo) gets one page comparing every method, and each run's report in a folder
of its own. The folder is written beside its final place and moved there whole, so a reader never sees
half a report; a folder that holds something other than a report is never replaced.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from vlalign.progress import log, warn

MARKER = ".vlalign-report"  # in every report folder, so only a report is ever replaced by a new one


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of `run_dir` (a run or the demo's folder) to `out` (default `run_dir/report`) and
    return its index.html."""
    from vlalign.report.gather import check_run_dir, sub_runs

    root = Path(run_dir).resolve()
    check_run_dir(root)
    out = Path(out).resolve() if out is not None else root / "report"
    _check_out(root, out)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        (tmp / MARKER).write_text("written by vlalign report; replaced whole by the next one\n")
        if sub_runs(root):
            _collection(root, tmp)
        else:
            from vlalign.report.gather import read_run

            _run(read_run(root), tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"report at {out / 'index.html'}")
    return out / "index.html"


def try_report(run_dir: str | Path) -> Path | None:
    """The report at the end of a run: a failure to write it is a warning, never the loss of a finished run."""
    try:
        return write_report(run_dir)
    except Exception as e:  # noqa: BLE001 - any failure here leaves the run itself whole
        warn(f"the report of {run_dir} was not written ({type(e).__name__}: {e}); "
             f"write it with `vlalign report {run_dir}`")
        return None


def _check_out(root: Path, out: Path) -> None:
    if out == root or out in root.parents:
        raise ValueError(f"the report cannot replace {out}, which holds the run {root}; pass another --out")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).exists())):
        raise ValueError(f"{out} exists and is not a vlalign report, so it is left as it is; pass another --out")


def _run(run, out: Path, up: str | None = None) -> None:
    """One run's report (a `gather.RunInfo`) into `out`."""
    from vlalign.report.groups import group_sets
    from vlalign.report.pairs import copy_images, no_pairs_message, read_pair_sets
    from vlalign.report.render import write_run_pages

    sets, groups = read_pair_sets(run), group_sets(run)
    note = None
    if not sets:
        note = no_pairs_message(run)
        if not groups:  # an online run trains on groups, not pairs
            warn(f"report of {run.root}: {note}")
    copy_images([*sets, *groups], out, _noise(run))
    write_run_pages(run, sets, out, up=up, pairs_note=note, groups=groups)


def _noise(run) -> dict | None:
    """POVID's noise settings when its second stage trains on noised images (rounds: 2)."""
    config = run.config or {}
    return config["noise"] if isinstance(config.get("noise"), dict) and config.get("rounds", 1) >= 2 else None


def _collection(root: Path, out: Path) -> None:
    from vlalign.report.gather import read_collection
    from vlalign.report.render import write_collection_page

    collection = read_collection(root)
    for run in collection.runs:
        (out / run.name).mkdir()
        _run(run, out / run.name, up=root.name)
    write_collection_page(collection, out)
