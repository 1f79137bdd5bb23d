"""`vlalign ...`: the command line. It only wires stages and recipes together."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from vlalign.evaluate.commands import eval_, score

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Align vision-language models with AI feedback (RLAIF-V, VLFeedback/Silkie, POVID).")
world_app = typer.Typer(no_args_is_help=True, help="The embedded synthetic world: train, locate and evaluate its models.")
app.add_typer(world_app, name="world")
app.command("score")(score)
app.command("eval")(eval_)
console = Console(stderr=True)
SUMMARY_KEYS = ["chair_s", "chair_i", "object_recall", "mean_words", "pope_f1", "pope_accuracy", "pope_yes_ratio"]


def _quiet() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def metrics_table(title: str, columns: dict[str, dict], keys: list[str] | None = None) -> Table:
    """A table with one row per metric and one column per model/method."""
    table = Table(title=title)
    table.add_column("metric")
    for name in columns:
        table.add_column(name, justify="right")
    keys = keys or [k for k, v in next(iter(columns.values())).items() if isinstance(v, int | float)]
    for k in keys:
        table.add_row(k, *(f"{c[k]:.3f}" if isinstance(c.get(k), float) else str(c.get(k, "")) for c in columns.values()))
    return table


@world_app.command("base-path")
def base_path(name: str = typer.Option("base", help="Which shipped world model: base or labeler.")) -> None:
    """Print the directory of a shipped world model (a standard model + processor directory)."""
    from vlalign.world.train_base import shipped_path

    print(shipped_path(name))


@world_app.command("train-base")
def train_base(
    out: Path = typer.Option(..., help="Directory to write the model + processor to."),
    recipe: str = typer.Option("base", help="Recipe name: base or labeler."),
    init_from: str = typer.Option(None, help="Start from this model (world:<name> or a directory)."),
) -> None:
    """Train a world model from scratch (SFT), reproducibly from the recipe's seed."""
    _quiet()
    from vlalign.world.train_base import RECIPES, train_world_model

    if recipe not in RECIPES:
        raise typer.BadParameter(f"unknown recipe {recipe!r}; choose one of {sorted(RECIPES)}")
    path = train_world_model(RECIPES[recipe], out, init_from)
    console.print(f"saved {recipe} to {path}")


@world_app.command("eval")
def world_eval(
    model: str = typer.Option("world:base", help="Model directory or world:<name>."),
    scenes: int = typer.Option(500, help="Number of held-out scenes."),
    out: Path = typer.Option(None, help="Write the metrics (and answers) as JSON here."),
) -> None:
    """Exact hallucination metrics (CHAIR, recall, POPE, colour/count accuracy) on held-out world scenes."""
    _quiet()
    from vlalign.evaluate.world import evaluate_world
    from vlalign.models.load import load

    m, p = load(model)
    metrics = evaluate_world(m, p, n_scenes=scenes, with_answers=out is not None)
    answers = metrics.pop("answers", None)
    console.print(metrics_table(f"world eval: {model}", {model: metrics}))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({**metrics, "answers": answers}, indent=1))
    print(json.dumps(metrics))


@app.command("export")
def export(
    src: Path = typer.Argument(..., help="A run directory or one stage directory holding pairs."),
    out: Path = typer.Option(..., help="Where to save the dataset (datasets.save_to_disk)."),
    format: str = typer.Option("trl", help="Output format: trl."),
) -> None:
    """Export preference pairs in another tool's format."""
    from vlalign.data.export import export_trl

    if format != "trl":
        raise typer.BadParameter(f"unknown export format {format!r}; supported: trl")
    path = export_trl(src, out)
    console.print(f"wrote {path}")


@app.command("serve")
def serve(
    model: str = typer.Argument(..., help="Model directory or world:<name> to answer with."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="Port (0 picks a free one and prints it)."),
    name: str = typer.Option(None, help="Model name the API reports (default: the model reference)."),
    fail_every: int = typer.Option(0, help="Fail every k-th request on purpose (tests of client retries)."),
    fail_status: int = typer.Option(503, help="HTTP status of those failures (503, 429, ...)."),
) -> None:
    """Serve a local model behind an OpenAI-compatible chat endpoint (/v1/chat/completions)."""
    _quiet()
    from vlalign.feedback.judges import make_judge
    from vlalign.serve import make_server

    server = make_server(make_judge(model), host, port, name or model, fail_every, fail_status)
    print(f"serving {model} at http://{host}:{server.server_port}/v1", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.shutdown()


@app.command("rlaif-v")
def rlaif_v(
    config: Path = typer.Option(None, help="YAML recipe (keys of RLAIFVConfig); missing keys keep defaults."),
    out: Path = typer.Option(..., help="Run directory (resumes if it holds an earlier run)."),
    policy: str = typer.Option(None, help="Override: the policy to align."),
    labeler: str = typer.Option(None, help="Override: the labeler model, or 'self' for self-alignment."),
    rounds: int = typer.Option(None, help="Override: number of online rounds."),
    prompts: str = typer.Option(None, help="Override: 'world' or a prompt file (JSON lines / datasets dir)."),
) -> None:
    """RLAIF-V: deconfounded sampling, claim-level labeler feedback, pairs, iterative DPO."""
    _quiet()
    from vlalign.config import load_config
    from vlalign.pipelines.rlaif_v import RLAIFVConfig, run_rlaif_v

    cfg = load_config(RLAIFVConfig, config, {"policy": policy, "labeler": labeler, "rounds": rounds,
                                             "prompts": prompts})
    summary = run_rlaif_v(out, cfg)
    columns = {f"round {r['round']}": r["metrics"] for r in summary["rounds"] if "metrics" in r}
    if columns:
        console.print(metrics_table("RLAIF-V rounds (world, held-out scenes)", columns, SUMMARY_KEYS))
    console.print(f"{summary['seconds']:.0f} s; summary at {out / 'summary.json'}")


@app.command("demo")
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Run directory; summary.json lands here."),
    quick: bool = typer.Option(False, "--quick", help="A smaller run (about 3 minutes on 2 cores) for CI."),
    policy: str = typer.Option("world:base", help="The policy to align (world:<name> or a directory)."),
    labeler: str = typer.Option("world:labeler", help="The labeler model (world:<name> or a directory)."),
) -> None:
    """The whole loop on the embedded world: base -> samples -> labeler feedback -> pairs -> DPO -> eval."""
    _quiet()
    from dataclasses import replace

    from vlalign.pipelines.demo import FULL, QUICK, run_demo

    config = replace(QUICK if quick else FULL, policy=policy, labeler=labeler)
    summary = run_demo(out, quick=quick, config=config)
    columns = {k: v for k, v in summary.items() if isinstance(v, dict) and "chair_i" in v}
    console.print(metrics_table("demo summary (world, held-out scenes)", columns, SUMMARY_KEYS))
    console.print(f"{summary['seconds']:.0f} s; summary at {out / 'summary.json'}")


def main() -> None:
    try:
        app()
    except (FileNotFoundError, ValueError) as e:
        console.print(f"[red]error:[/red] {e}")
        sys.exit(2)


if __name__ == "__main__":
    main()
