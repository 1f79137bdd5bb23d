"""Tables of metrics for the terminal (stderr), shared by every command that prints results."""

from __future__ import annotations

from rich import box
from rich.table import Table

from vlalign.progress import console

SUMMARY_KEYS = ("chair_s", "chair_i", "chair_i_unique", "object_recall", "mean_words", "pope_f1", "pope_accuracy",
                "pope_yes_ratio", "count_accuracy", "refusal_rate")

__all__ = ["SUMMARY_KEYS", "console", "figure", "metrics_table", "models_table"]


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


SHORT = {"chair_i": "CHAIRi", "chair_s": "CHAIRs", "chair_i_unique": "CHi/ob", "object_recall": "recall",
         "mean_words": "words", "pope_f1": "POPEf1", "pope_accuracy": "POPEac", "pope_yes_ratio": "yes",
         "count_accuracy": "count", "refusal_rate": "refuse"}


def models_table(title: str, rows: dict[str, dict], keys: tuple[str, ...] = SUMMARY_KEYS) -> Table:
    """One row per model and one narrow column per metric, so many models fit a 100-column terminal
    (CHi/ob is CHAIR_i per distinct object; POPEf1, POPEac and yes are POPE's F1, accuracy and yes-ratio)."""
    table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, collapse_padding=True)
    table.add_column("model", overflow="fold", min_width=17, max_width=22)
    for k in keys:
        table.add_column(SHORT.get(k, k), justify="right", no_wrap=True)
    for name, m in rows.items():
        table.add_row(name, *(f"{m[k]:.1f}" if k == "mean_words" and isinstance(m.get(k), float)
                              else f"{m[k]:.3f}" if isinstance(m.get(k), float) else "" for k in keys))
    return table
