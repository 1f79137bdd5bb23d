"""`vlalign compare A B`: every figure two evaluations of the same items share, as paired differences.

A and B are each a run directory (its final policy's evaluation: the last round's `eval/`), a run's `base/`,
a folder of outcomes (a round's `eval/`), an outcomes file, or the metrics JSON `vlalign score` / `eval`
wrote (its outcomes lie beside it). Benchmarks both evaluated are paired item by item (the items both
answered); each figure's difference B - A comes with its paired-bootstrap 95% interval and p-value, and
yes/no accuracies with McNemar's exact p.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import typer

SUFFIX = ".outcomes.json"


def _named(folder: Path) -> dict[str, Path]:
    return {p.name[:-len(SUFFIX)]: p for p in sorted(folder.glob(f"*{SUFFIX}"))}


def _final_eval(run: Path) -> Path | None:
    """The evaluation folder of a run's final policy: the last round's `eval/`, else its `base/`."""
    rounds = sorted((int(m.group(1)), p) for p in run.glob("round*")
                    if (m := re.fullmatch(r"round(\d+)", p.name)) and _named(p / "eval"))
    if rounds:
        return rounds[-1][1] / "eval"
    return run / "base" if _named(run / "base") else None


def evaluations(path: Path) -> dict[str, Path]:
    """Benchmark name -> outcomes file, for any of the forms the module notes list."""
    path = Path(path)
    if path.is_file() and path.name.endswith(SUFFIX):
        return {path.name[:-len(SUFFIX)]: path}
    if path.is_file():
        from vlalign.evaluate.intervals import outcomes_path

        beside = outcomes_path(path)
        if not beside.is_file():
            raise FileNotFoundError(f"no outcomes beside {path} (expected {beside}); score the answers again with "
                                    f"this version to write them")
        try:
            name = json.loads(path.read_text(encoding="utf-8")).get("benchmark") or path.stem
        except (json.JSONDecodeError, AttributeError):
            name = path.stem
        return {name: beside}
    if not path.is_dir():
        raise FileNotFoundError(f"no run, evaluation folder or outcomes file at {path}")
    folder = _final_eval(path) if (path / "run.json").is_file() else path
    found = _named(folder) if folder is not None else {}
    if not found:
        raise FileNotFoundError(f"no evaluation outcomes (*{SUFFIX}) in {folder or path}; evaluate with this version "
                                f"(an `eval:` list in the run's config, or `vlalign eval`)")
    return found


def compare_paths(a: Path, b: Path, resamples: int | None = None, seed: int | None = None) -> dict[str, dict]:
    """Benchmark -> figure -> the paired difference B - A, for every benchmark both evaluated (the
    bootstrap's resamples and seed as every interval's unless given)."""
    from vlalign.evaluate.intervals import RESAMPLES, SEED, compare, read_outcomes

    ea, eb = evaluations(a), evaluations(b)
    if len(ea) == len(eb) == 1:  # one evaluation each (two files): whatever they are named
        pairs = {next(iter(ea)): (next(iter(ea.values())), next(iter(eb.values())))}
    else:
        pairs = {n: (ea[n], eb[n]) for n in ea if n in eb}
    if not pairs:
        raise ValueError(f"{a} ({', '.join(ea)}) and {b} ({', '.join(eb)}) evaluated no benchmark in common")
    out = {}
    for name, (pa, pb) in pairs.items():
        oa, ob = read_outcomes(pa), read_outcomes(pb)
        shared = len(set(oa.ids) & set(ob.ids))
        diffs = compare(oa, ob, resamples=resamples or RESAMPLES, seed=SEED if seed is None else seed)
        out[name] = {"items": shared, "unit": oa.unit, "figures": {k: d.to_json() for k, d in diffs.items()}}
    return out


def compare_cmd(
    run_a: Path = typer.Argument(..., help="A: a run directory, its base/, an eval folder, or an outcomes/metrics file."),
    run_b: Path = typer.Argument(..., help="B: the same kinds; the differences are B - A."),
    out: Path = typer.Option(None, help="Write the differences as JSON here."),
    resamples: int = typer.Option(None, min=100, help="Bootstrap resamples (default: those of every interval, 1000)."),
    seed: int = typer.Option(None, help="Seed of the bootstrap draws (default: that of every interval, 0)."),
) -> None:
    """Paired differences (B - A) with 95% intervals for every figure two evaluations of the same items share."""
    from rich.table import Table

    from vlalign.console import console
    from vlalign.evaluate.intervals import LEVEL

    result = compare_paths(run_a, run_b, resamples, seed)
    for name, r in result.items():
        table = Table(title=f"{name}: B - A on {r['items']} shared {r['unit']}s ({LEVEL:.0%} intervals)")
        for column in ("figure", "A", "B", "B - A [interval]", "p", "McNemar p", "agree"):
            table.add_column(column, justify="left" if column == "figure" else "right", no_wrap=column == "figure")
        for k, d in r["figures"].items():
            lo, hi = d["interval"]
            mark = "*" if lo > 0 or hi < 0 else ""
            table.add_row(k, f"{d['a']:.3f}", f"{d['b']:.3f}", f"{d['diff']:+.3f} [{lo:+.3f}, {hi:+.3f}]{mark}",
                          f"{d['p']:.3f}", *((f"{d['mcnemar_p']:.3f}", f"{d['agreement']:.3f}") if "mcnemar_p" in d
                                             else ("", "")))
        console.print(table)
    console.print("* the interval excludes 0")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"a": str(run_a), "b": str(run_b), "benchmarks": result}, indent=1))
        console.print(f"wrote {out}")
