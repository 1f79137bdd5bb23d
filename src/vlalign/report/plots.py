"""The report's plots: matplotlib figures rendered to SVG files inside the report folder (no script, no
font or network needed to show them; the Agg backend needs no display)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from vlalign.glossary import CORE, Figure, change
from vlalign.glossary import label as label_of
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


def _grid(plt, n: int, width: float = 2.6, height: float = 1.6, columns: int = COLUMNS, below: float = 0.5,
          top: float = 0.3):
    """`n` panels of `width` x `height` inches, `columns` to a row, with `below` inches under each for its
    tick labels. Margins are fixed in inches: tight_layout measures every text, which costs more than
    drawing the figure."""
    cols = min(columns, n)
    rows = math.ceil(n / cols)
    left, right, gap = 0.55, 0.15, 0.45
    fig_w, fig_h = left + right + cols * width + (cols - 1) * gap, top + rows * (height + below)
    fig, axes = plt.subplots(rows, cols, figsize=(fig_w, fig_h), squeeze=False)
    fig.subplots_adjust(left=left / fig_w, right=1 - right / fig_w, top=1 - top / fig_h, bottom=below / fig_h,
                        wspace=gap / width, hspace=(below + 0.3) / height)  # 0.3 in: room for a title
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _save(plt, fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="svg", metadata={"Date": None})
    plt.close(fig)
    return path


BASE = "base"  # the column every other is compared with: a dashed line across its panel
VERDICT_COLOUR = {"better": "#1b7f3b", "worse": "#b3261e", "within noise": "#8d96a8", "": "#5b7fc7"}


def metric_panels(columns: Sequence[tuple[str, dict]], path: Path, keys: Sequence[str] | None = None,
                  names: Mapping[str, Figure] | None = None) -> Path | None:
    """One bar panel per metric, one bar per column (base, rounds, final; or one per method), written to
    `path` as SVG; None when there is nothing to plot. The base's value is a dashed line across the panel
    (its SVG group's id is `base-<metric>`), and each other bar is coloured by its change against the base:
    green better and red worse beyond the paired 95% interval, grey within it, blue with no interval. The
    title says which way is better."""
    names = names if names is not None else CORE
    keys = list(keys or headline_keys(columns))
    if not columns or not keys:
        return None
    plt = _pyplot()
    many = len(columns) > 6
    labels = [label for label, _ in columns]
    base = dict(columns).get(BASE)
    below = 0.25 + 0.045 * max(len(label) for label in labels)  # room for the rotated model names
    fig, axes = _grid(plt, len(keys), width=max(2.2, 0.32 * len(columns) + 0.6), height=1.9 if many else 1.5,
                      columns=3 if many else COLUMNS, below=below)
    for ax, key in zip(axes, keys, strict=True):
        values = [metrics.get(key) for _, metrics in columns]
        heights = [v if isinstance(v, (int, float)) else 0 for v in values]
        colours = []
        for label, metrics in columns:
            c = change(key, base, metrics, names) if base is not None and label != BASE else None
            colours.append("#3d4454" if label == BASE else VERDICT_COLOUR[c.verdict if c else ""])
        bars = ax.bar(range(len(labels)), heights, color=colours)
        for bar, v in zip(bars, values, strict=True):
            text = "n/a" if not isinstance(v, (int, float)) else (f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}")
            ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                        fontsize=6.5, xytext=(0, 1), textcoords="offset points")
        if base is not None and isinstance(base.get(key), (int, float)):
            ax.axhline(base[key], color="#3d4454", linestyle="--", linewidth=0.9, gid=f"base-{key}")
        better = names[key].better if key in names else None
        ax.set_title(label_of(key, names) + {"lower": " (lower is better)", "higher": " (higher is better)"}.get(
            better, ""), fontsize=7.5)
        ax.set_xticks(range(len(labels)), labels, rotation=40, ha="right", fontsize=7)
        ax.margins(y=0.18)
        if min(heights) >= 0:  # rates and counts: the axis starts at 0, also when every bar is 0
            top = max(heights)
            # a rate's axis shows at least 0.05, so one tiny bar among zeros does not fill its panel
            ax.set_ylim(0, max(top * 1.25, 0.05) if top <= 1 else None)
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
    from matplotlib.ticker import MaxNLocator

    fig, axes = _grid(plt, len(keys), width=2.8, height=1.8, below=0.45, top=0.55)
    for ax, key in zip(axes, keys, strict=True):
        for i, (label, history) in enumerate(histories):
            points = [(e["step"], e[key]) for e in history if key in e and e[key] is not None]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", markersize=2.5, linewidth=1.2, color=f"C{i % 10}",
                        label=label)
        ax.set_title(TRAINING.get(key, key))
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        if key == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:  # one legend for every panel, above them, so it covers no line
        fig.legend(handles, labels, loc="upper left", ncol=min(len(labels), 6), fontsize=6.5, frameon=False,
                   bbox_to_anchor=(0.0, 1.0))
    return _save(plt, fig, path)


def other_training_keys(histories: Sequence[tuple[str, list[dict]]]) -> list[str]:
    """The logged values besides the main four (each loss term, the chosen log-prob, POVID's two terms)."""
    keys = dict.fromkeys(k for _, h in histories for e in h for k in e)
    return [k for k in keys if k not in TRAINING and k != "step"]


def rollout_panels(points: Sequence[dict[str, float]], path: Path) -> Path | None:
    """One line panel per value of an online run's rollouts (rewards, length, KL, clip fraction), against the
    round; None for a run without rollouts."""
    keys = list(dict.fromkeys(k for p in points for k in p if k != "round"))
    if not keys:
        return None
    plt = _pyplot()
    fig, axes = _grid(plt, len(keys), width=2.8, height=1.8, below=0.45)
    for ax, key in zip(axes, keys, strict=True):
        xy = [(p["round"], p[key]) for p in points if key in p]
        ax.plot(*zip(*xy, strict=True), marker="o", markersize=2.5, linewidth=1.2)
        ax.set_title(key)
        ax.set_xlabel("round")
    return _save(plt, fig, path)
