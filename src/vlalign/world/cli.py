"""The world's commands: `vlalign world base-path | train-base | eval` and `vlalign demo`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from vlalign.console import SUMMARY_KEYS, console, metrics_table

world_app = typer.Typer(no_args_is_help=True, help="The embedded synthetic world: train, locate and evaluate its models.")


@world_app.command("base-path")
def base_path(name: str = typer.Option("base", help="Which shipped world model: base, labeler, judge, small or "
                                                   "careful.")) -> None:
    """Print the directory of a shipped world model (a standard model + processor directory)."""
    from vlalign.world.zoo import shipped_path

    print(shipped_path(name))


@world_app.command("train-base")
def train_base(
    out: Path = typer.Option(..., help="Directory to write the model + processor to."),
    recipe: str = typer.Option("base", help="Recipe name: base, labeler, judge, small or careful."),
    init_from: str = typer.Option(None, help="Start from this model (world:<name> or a directory)."),
) -> None:
    """Train a world model from scratch (SFT), reproducibly from the recipe's seed."""
    from vlalign.world.train_base import RECIPES, train_world_model

    if recipe not in RECIPES:
        raise typer.BadParameter(f"unknown recipe {recipe!r}; choose one of {sorted(RECIPES)}")
    print(train_world_model(RECIPES[recipe], out, init_from))


@world_app.command("eval")
def world_eval(
    model: str = typer.Option("world:base", help="Model directory or world:<name>."),
    scenes: int = typer.Option(1000, help="Number of held-out scenes."),
    split: str = typer.Option("test", help="test (report) or dev (choose recipes)."),
    out: Path = typer.Option(None, help="Write the metrics (and answers) as JSON here."),
) -> None:
    """Exact hallucination metrics (CHAIR, recall, POPE, colour/count accuracy) on held-out world scenes."""
    from vlalign.models.load import load
    from vlalign.world.metrics import evaluate_world

    m, p = load(model, dtype="fp32")
    metrics = evaluate_world(m, p, n_scenes=scenes, with_answers=out is not None, split=split)
    answers = metrics.pop("answers", None)
    console.print(metrics_table(f"world eval: {model}", {model: metrics}, SUMMARY_KEYS))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({**metrics, "answers": answers}, indent=1))
    print(json.dumps(metrics))


def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Run directory; summary.json lands here."),
    quick: bool = typer.Option(False, "--quick", help="A smaller run (a few minutes on 2 cores)."),
    policy: str = typer.Option("world:base", help="The policy to align (world:<name> or a directory)."),
    labeler: str = typer.Option("world:labeler", help="The labeler model (world:<name> or a directory)."),
    split: str = typer.Option("test", help="Evaluate on test scenes (the numbers to report) or dev (to choose recipes)."),
) -> None:
    """Every method with a world recipe (`vlalign recipes`), each run as it ships, and a summary."""
    from vlalign import ranks
    from vlalign.world.demo import print_demo, run_demo

    summary = run_demo(out, quick=quick, policy=policy, labeler=labeler, split=split)
    if ranks.is_main():
        print_demo(summary)
        print(out / "summary.json")


def add_commands(app: typer.Typer) -> None:
    app.add_typer(world_app, name="world")
    app.command("demo")(demo)
