"""HTML pages of a report: Jinja2 templates shipped in the package, filled from `gather` and `pairs`.

Every page links its style sheet, scripts, plots and images by relative paths inside the report folder, so
the folder opens from disk anywhere, offline. Data for the pair viewer goes into `data/*.js` files (a page
opened from disk may load scripts, but not fetch JSON).
"""

from __future__ import annotations

import json
import shutil
import time
from datetime import datetime, timezone
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import yaml
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from vlalign.console import duration
from vlalign.glossary import PREFERRED, Figure, change, glossary
from vlalign.report.gather import HEADLINE, Collection, RunInfo
from vlalign.report.groups import rollout_points
from vlalign.report.pairs import PairSet
from vlalign.report.plots import metric_panels, other_training_keys, rollout_panels, training_panels

PAGES = (("index.html", "overview"), ("metrics.html", "metrics"), ("training.html", "training"),
         ("pairs.html", "pairs"), ("errors.html", "errors"))
GROUPS_PAGE = ("groups.html", "groups")  # an online run's rollouts
ASSETS = ("style.css", "viewer.js", "pairs.js", "groups.js")
SHOWN_ERRORS = 200  # per stage on the errors page; the rest stay in the stage's errors.jsonl


def number(value: Any) -> str:
    """A metric as the tables show it: 4 significant digits, integers as they are."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "" if value is None else str(value)
    return str(value) if isinstance(value, int) else f"{value:.4g}"


def seconds(value: float | None) -> str:
    return "" if value is None else duration(value)


def when(value: float | None) -> str:
    if value is None:
        return ""
    return datetime.fromtimestamp(value, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def environment() -> Environment:
    env = Environment(loader=PackageLoader("vlalign.report", "templates"), autoescape=select_autoescape(),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(number=number, seconds=seconds, when=when, figure=figure_value)
    return env


def copy_assets(out: Path) -> None:
    folder = resources.files("vlalign.report") / "assets"
    for name in ASSETS:
        (out / name).write_bytes((folder / name).read_bytes())


def _common(run_name: str, source: Path, up: str | None, nav: tuple = PAGES) -> dict[str, Any]:
    try:
        version = metadata.version("vlalign")
    except metadata.PackageNotFoundError:
        version = "?"
    return {"run_name": run_name, "source": str(source), "up": up, "nav": nav, "version": version,
            "written": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "headline": HEADLINE}


def write_js(path: Path, variable: str, key: str | None, value: Any) -> None:
    """`value` as a script that sets window[variable] (or window[variable][key])."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    target = f"window.{variable}" if key is None else f"window.{variable}[{json.dumps(key)}]"
    head = "" if key is None else f"window.{variable} = window.{variable} || {{}};\n"
    path.write_text(f"{head}{target} = {data};\n", encoding="utf-8")


# Numbers a model's evaluation records that say how it was made, not how well it did (best-of-N's n, scenes,
# temperature; the pairs an arm trained on): the report shows them apart from the figures.
SETTINGS = ("n", "scenes", "n_scenes", "temperature", "pairs", "limit", "eval_scenes", "rounds")


def figure_value(value: Any) -> str:
    """A figure as every metrics table shows it: rates to 3 decimals, larger figures to 1, counts whole."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "" if value is None else str(value)
    return str(value) if isinstance(value, int) else f"{value:.3f}" if abs(value) <= 1 else f"{value:.1f}"


def metric_table(columns: list[tuple[str, dict]], names: dict[str, Figure]) -> dict:
    """The figures and the settings of these columns, apart, each figure's cells with the change against the
    base column (where there is one), and the legend of the figures shown."""
    keys = list(dict.fromkeys(k for _, m in columns for k in m if isinstance(m.get(k), (int, float))
                              and not isinstance(m.get(k), bool)))
    settings = [k for k in keys if k in SETTINGS or all(isinstance(m.get(k, 0), int) for _, m in columns)]  # counts
    figures = [k for k in keys if k not in SETTINGS]
    first = [k for k in PREFERRED if k in figures]
    figures = first + [k for k in figures if k not in first]
    base = dict(columns).get("base")
    rows = {k: [{"value": figure_value(m.get(k)),
                 "change": change(k, base, m, names) if base is not None and label != "base" else None}
                for label, m in columns] for k in figures}
    legend = [{"key": k, "label": names[k].label, "meaning": names[k].meaning,
               "better": {"lower": "lower is better", "higher": "higher is better"}.get(names[k].better,
                                                                                        "neither way is better")}
              for k in figures if k in names]
    return {"figures": figures, "settings": settings, "rows": rows, "legend": legend, "has_base": base is not None,
            "labels": {k: names[k].label if k in names else k for k in figures}}


def metric_sections(run: RunInfo, out: Path) -> list[dict]:
    sections = []
    for i, bench in enumerate(run.benchmarks()):
        columns = run.columns(bench)
        names = glossary([bench])
        plot = metric_panels(columns, out / "plots" / f"metrics-{i}.svg", names=names)
        sections.append({"bench": bench, "columns": columns, "table": metric_table(columns, names),
                         "plot": plot.relative_to(out).as_posix() if plot else None})
    return sections


def training_section(run: RunInfo, out: Path) -> dict:
    histories = [(a.label, a.history) for a in run.arms]
    main = training_panels(histories, out / "plots" / "training.svg")
    others = other_training_keys(histories)
    extra = training_panels(histories, out / "plots" / "training-other.svg", others) if others else None
    tracked = (run.config or {}).get("train", {}).get("report_to", "none")
    rollouts = rollout_points(run.arms)
    curves = rollout_panels(rollouts, out / "plots" / "rollouts.svg") if rollouts else None
    return {"main": main.relative_to(out).as_posix() if main else None,
            "extra": extra.relative_to(out).as_posix() if extra else None, "others": others, "tracked": tracked,
            "rollouts": curves.relative_to(out).as_posix() if curves else None}


def marked(sets: list[PairSet]) -> bool:
    """Whether a plugin's marker knows these pairs' prompts (the world's do): only then does the pair viewer
    explain its highlights."""
    return any(row[side].get("marks") is not None for s in sets for row in s.rows for side in ("chosen", "rejected"))


def write_run_pages(run: RunInfo, sets: list[PairSet], out: Path, up: str | None = None,
                    pairs_note: str | None = None, groups: list[PairSet] | None = None) -> None:
    """Every page of one run's report into `out` (its images are copied already); the group viewer's too,
    for a run with `groups` (an online run's rollouts)."""
    env = environment()
    copy_assets(out)
    common = _common(run.name, run.root, up, (*PAGES, GROUPS_PAGE) if groups else PAGES)
    headers = [s.header() for s in sets]
    write_js(out / "data" / "sets.js", "VLALIGN_SETS", None, headers)
    for s in sets:
        write_js(out / "data" / f"{s.slug}.js", "VLALIGN_PAIRS", s.slug, s.rows)
    if groups:
        write_js(out / "data" / "group-sets.js", "VLALIGN_GROUP_SETS", None, [s.header() for s in groups])
        for s in groups:
            write_js(out / "data" / f"{s.slug}.js", "VLALIGN_GROUPS", s.slug, s.rows)
    config_text = yaml.safe_dump(run.config, sort_keys=False) if run.config else None
    pages = {
        "index.html": {"run": run, "config_text": config_text, "pairs": sum(s.total for s in sets)},
        "metrics.html": {"run": run, "sections": metric_sections(run, out)},
        "training.html": {"run": run, "training": training_section(run, out)},
        "pairs.html": {"run": run, "sets": headers, "pairs_note": pairs_note, "marked": marked(sets)},
        "errors.html": {"run": run, "shown_errors": SHOWN_ERRORS},
        **({"groups.html": {"run": run, "sets": [s.header() for s in groups]}} if groups else {}),
    }
    for name, context in pages.items():
        html = env.get_template(name).render(page=name, **common, **context)
        (out / name).write_text(html, encoding="utf-8")


def write_collection_page(collection: Collection, out: Path) -> None:
    """The collection's index: every method compared on one page, and a link to each run's report."""
    env = environment()
    copy_assets(out)
    columns = collection.columns()
    names = glossary(collection.benchmarks())
    plot = metric_panels(columns, out / "plots" / "compare.svg", names=names)
    html = env.get_template("collection.html").render(
        page="index.html", **_common(collection.root.name, collection.root, None), collection=collection,
        columns=columns, table=metric_table(columns, names), plot=plot.relative_to(out).as_posix() if plot else None)
    (out / "index.html").write_text(html, encoding="utf-8")


def clear(out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
