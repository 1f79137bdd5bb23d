"""Tables of metrics for the terminal (stderr), shared by every command that prints results."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rich import box
from rich.table import Table
from rich.text import Text

from vlalign.glossary import Change, Figure, change, label
from vlalign.progress import console

SUMMARY_KEYS = ("chair_s", "chair_i", "chair_i_unique", "object_recall", "mean_words", "pope_f1", "pope_accuracy",
                "pope_yes_ratio", "count_accuracy", "refusal_rate")

__all__ = ["SUMMARY_KEYS", "console", "duration", "figure", "legend", "metrics_table", "run_tables", "versus_table"]
COLOUR = {"better": "green", "worse": "red"}


def figure(metrics: dict, key: str, digits: int = 3) -> str:
    """A figure with its 95% interval where the metrics carry one: `0.859 [0.851, 0.867]`."""
    value, interval = metrics[key], (metrics.get("intervals") or {}).get(key)
    text = f"{value:.{digits}f}"
    return f"{text} [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]" if interval else text


def metrics_table(title: str, columns: dict[str, dict], keys: list[str] | tuple[str, ...] | None = None) -> Table:
    """One row per metric and one column per model (each figure with its interval, where it has one): long
    model names wrap instead of being cut."""
    table = Table(title=title)
    table.add_column("metric", no_wrap=True)
    for name in columns:
        table.add_column(name, justify="right", overflow="fold")
    first = next(iter(columns.values()), {})
    keys = keys or [k for k, v in first.items() if isinstance(v, int | float) and not isinstance(v, bool)]
    for k in keys:
        table.add_row(k, *(figure(c, k) if isinstance(c.get(k), float) else str(c.get(k, "")) for c in columns.values()))
    return table


def _shown(key: str, value: float) -> str:
    return f"{value:.1f}" if key == "mean_words" else f"{value:.3f}"


def _versus(c: Change | None) -> Text:
    """The change against the base, its paired interval and verdict, coloured by the metric's direction."""
    if c is None:
        return Text("")
    return Text("\n".join(t for t in (c.text, c.interval_text) if t), style=COLOUR.get(c.verdict, ""))


def versus_table(title: str, base: Mapping | None, rows: Mapping[str, Mapping], keys: Sequence[str],
                 names: Mapping[str, Figure]) -> Table:
    """One row per model against the base: the lead figure (the first key) with its 95% interval, its change
    against the base in points and percent with the paired interval (green where better beyond the interval,
    red where worse), and the other figures, each coloured the same way by its own paired comparison.
    Columns never wrap mid-figure or mid-name; the change's interval is on a second line."""
    lead, rest = keys[0], list(keys[1:])
    table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, collapse_padding=True, title_justify="left")
    models = [*(["base"] if base is not None else []), *rows]
    table.add_column("model", no_wrap=True, min_width=max(len(m) for m in models) if models else 5)
    table.add_column(f"{label(lead, names)} [95% CI]", justify="right", no_wrap=True)
    if base is not None:
        table.add_column("vs base [95% CI]", justify="right", no_wrap=True)
    for k in rest:
        table.add_column(label(k, names), justify="right", no_wrap=True)
    for name, m in ({"base": base, **rows} if base is not None else dict(rows)).items():
        cells: list[Text | str] = [name, figure(m, lead) if isinstance(m.get(lead), float) else ""]
        if base is not None:
            cells.append(_versus(change(lead, base, m, names)) if m is not base else Text(""))
        for k in rest:
            c = change(k, base, m, names) if base is not None and m is not base else None
            v = m.get(k)
            cells.append(Text(_shown(k, v), style=COLOUR.get(c.verdict, "") if c else "")
                         if isinstance(v, float) else "")
        table.add_row(*cells)
    return table


def legend(keys: Sequence[str], names: Mapping[str, Figure], against_base: bool = True) -> Table:
    """The columns' legend: each label, what it measures and which way is better, wrapped between words."""
    better = {"lower": "lower is better", "higher": "higher is better", None: "neither way is better"}
    table = Table.grid(padding=(0, 2))
    table.add_column(no_wrap=True, style="bold")
    table.add_column(ratio=1)
    for k in keys:
        if k in names:
            table.add_row(names[k].label, f"{names[k].meaning} ({better[names[k].better]})")
    if against_base:
        table.add_row("vs base", "the change against the base (a rate's in percentage points, and in percent of the "
                                 "base), under it the 95% interval of the paired difference on the same scenes or "
                                 "questions; green: better beyond the interval, red: worse beyond it (the other "
                                 "figures too)")
    return table


def duration(seconds: float) -> str:
    """`384` as `6 min 24 s`; under a minute as `48.4 s`."""
    seconds = max(0.0, seconds)
    return f"{seconds:.1f} s" if seconds < 60 else f"{int(seconds // 60)} min {seconds % 60:02.0f} s"


def run_tables(summary: Mapping) -> None:
    """A run's end: for each benchmark it evaluated, the base and every round's arms against the base (the
    change and its paired interval), then the legend of every column shown."""
    from vlalign.glossary import glossary, table_keys

    base = summary.get("base") or {}
    columns: dict[str, dict[str, Mapping]] = {}
    for r in summary.get("rounds") or []:
        for arm, record in r["arms"].items():
            for bench, metrics in (record.get("eval") or {}).items():
                name = f"round {r['round']}" + ("" if arm == "policy" else f" {arm}")
                columns.setdefault(bench, {})[name] = metrics
    shown: list[str] = []
    names = glossary([*base, *columns])
    for bench in dict.fromkeys([*base, *columns]):
        rows, first = columns.get(bench, {}), base.get(bench)
        numeric = [k for k, v in (first or next(iter(rows.values()), {})).items()
                   if isinstance(v, float) and not isinstance(v, bool)]
        if not numeric:
            continue
        keys = table_keys(numeric)
        where = f"{summary.get('method', 'run')} on {bench}"
        console.print(versus_table(where + ("" if first else " (no base evaluated: eval_base=false)"), first, rows,
                                   keys, names))
        shown += [k for k in keys if k not in shown]
    console.print(legend(shown, names, against_base=bool(base)), highlight=False)
