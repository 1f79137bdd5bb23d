"""Tables of metrics for the terminal (stderr), shared by every command that prints results."""

from __future__ import annotations

from rich.table import Table

from vlalign.progress import console

SUMMARY_KEYS = ("chair_s", "chair_i", "chair_i_unique", "object_recall", "mean_words", "pope_f1", "pope_accuracy",
                "pope_yes_ratio", "count_accuracy", "refusal_rate")

__all__ = ["SUMMARY_KEYS", "console", "metrics_table"]


def metrics_table(title: str, columns: dict[str, dict], keys: list[str] | tuple[str, ...] | None = None) -> Table:
    """One row per metric and one column per model: long model names wrap instead of being cut."""
    table = Table(title=title)
    table.add_column("metric", no_wrap=True)
    for name in columns:
        table.add_column(name, justify="right", overflow="fold")
    first = next(iter(columns.values()), {})
    keys = keys or [k for k, v in first.items() if isinstance(v, int | float) and not isinstance(v, bool)]
    for k in keys:
        table.add_row(k, *(f"{c[k]:.3f}" if isinstance(c.get(k), float) else str(c.get(k, "")) for c in columns.values()))
    return table
