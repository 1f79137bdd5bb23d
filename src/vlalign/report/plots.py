"""The report's plots: matplotlib figures rendered to SVG files inside the report folder (no script, no
font or network needed to show them; the Agg backend needs no display)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from vlalign.report.gather import HEADLINE

TRAINING = {"loss": "loss", "reward_margin": "reward margin", "reward_accuracy": "reward accuracy",
            "eval_loss": "held-out loss", "eval_reward_accuracy": "held-out reward accuracy", "lr": "learning rate"}
COLUMNS = 4  # panels per row
MAX_PANELS = 12


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "path", "font.size": 8, "axes.spines.top": False,
                         "axes.spines.right": False, "svg.hashsalt": "vlalign"})
    return plt


def headline_keys(columns: Sequence[tuple[str, dict]]) -> list[str]:
    """The plotted metrics of these columns: the headline ones they report, else their first numeric ones."""
    present = {k for _, metrics in columns for k in metrics}
    keys = [k for k in HEADLINE if k in present]
    if len(keys) < 2:
        keys += [k for k in dict.fromkeys(k for _, m in columns for k in m) if k not in keys]
    return keys[:MAX_PANELS]


def _grid(plt, n: int, width: float = 2.6, height: float = 1.6, columns: int = COLUMNS, below: float = 0.5):
    """`n` panels of `width` x `height` inches, `columns` to a row, with `below` inches under each for its
    tick labels. Margins are fixed in inches: tight_layout measures every text, which costs more than
    drawing the figure."""
    cols = min(columns, n)
    rows = math.ceil(n / cols)
    top, left, right, gap = 0.3, 0.55, 0.15, 0.45
    fig_w, fig_h = left + right + cols * width + (cols - 1) * gap, top + rows * (height + below)
    fig, axes = plt.subplots(rows, cols, figsize=(fig_w, fig_h), squeeze=False)
    fig.subplots_adjust(left=left / fig_w, right=1 - right / fig_w, top=1 - top / fig_h, bottom=below / fig_h,
                        wspace=gap / width, hspace=(below + top) / height)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _save(plt, fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="svg", metadata={"Date": None})
    plt.close(fig)
    return path


def metric_panels(columns: Sequence[tuple[str, dict]], path: Path, keys: Sequence[str] | None = None) -> Path | None:
    """One bar panel per metric, one bar per column (base, rounds, final; or one per method), written to
    `path` as SVG; None when there is nothing to plot."""
    keys = list(keys or headline_keys(columns))
    if not columns or not keys:
        return None
    plt = _pyplot()
    many = len(columns) > 6
    labels = [label for label, _ in columns]
    below = 0.25 + 0.045 * max(len(label) for label in labels)  # room for the rotated model names
    fig, axes = _grid(plt, len(keys), width=max(2.2, 0.32 * len(columns) + 0.6), height=1.9 if many else 1.5,
                      columns=3 if many else COLUMNS, below=below)
    for ax, key in zip(axes, keys, strict=True):
        values = [metrics.get(key) for _, metrics in columns]
        heights = [v if isinstance(v, (int, float)) else 0 for v in values]
        bars = ax.bar(range(len(labels)), heights, color=[f"C{i % 10}" for i in range(len(labels))])
        for bar, v in zip(bars, values, strict=True):
            text = "n/a" if not isinstance(v, (int, float)) else (f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}")
            ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                        fontsize=6.5, xytext=(0, 1), textcoords="offset points")
        ax.set_title(HEADLINE.get(key, key))
        ax.set_xticks(range(len(labels)), labels, rotation=40, ha="right", fontsize=7)
        ax.margins(y=0.18)
        if min(heights) >= 0:  # rates and counts: the axis starts at 0, also when every bar is 0
            ax.set_ylim(0, None if max(heights) > 0 else 1)
    return _save(plt, fig, path)


def training_panels(histories: Sequence[tuple[str, list[dict]]], path: Path,
                    keys: Sequence[str] | None = None) -> Path | None:
    """One line panel per logged value (loss, reward margin, reward accuracy, learning rate by default),
    one line per round and arm, against the step; None when no history holds any of them."""
    histories = [(label, h) for label, h in histories if h]
    if keys is None:
        keys = list(TRAINING)
    keys = [k for k in keys if any(k in e for _, h in histories for e in h)]
    if not keys:
        return None
    plt = _pyplot()
    fig, axes = _grid(plt, len(keys), width=2.8, height=1.8, below=0.45)
    for ax, key in zip(axes, keys, strict=True):
        for i, (label, history) in enumerate(histories):
            points = [(e["step"], e[key]) for e in history if key in e and e[key] is not None]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", markersize=2.5, linewidth=1.2, color=f"C{i % 10}",
                        label=label)
        ax.set_title(TRAINING.get(key, key))
        ax.set_xlabel("step")
        if key == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    axes[0].legend(fontsize=6.5, frameon=False)
    return _save(plt, fig, path)


def other_training_keys(histories: Sequence[tuple[str, list[dict]]]) -> list[str]:
    """The logged values besides the main four (each loss term, the chosen log-prob, POVID's two terms)."""
    keys = dict.fromkeys(k for _, h in histories for e in h for k in e)
    return [k for k in keys if k not in TRAINING and k != "step"]
