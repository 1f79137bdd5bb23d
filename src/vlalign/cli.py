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
def base_path(name: str = typer.Option("base", help="Which shipped world model: base, labeler, judge, small or "
                                                   "careful.")) -> None:
    """Print the directory of a shipped world model (a standard model + processor directory)."""
    from vlalign.world.train_base import shipped_path

    print(shipped_path(name))


@world_app.command("train-base")
def train_base(
    out: Path = typer.Option(..., help="Directory to write the model + processor to."),
    recipe: str = typer.Option("base", help="Recipe name: base, labeler, judge, small or careful."),
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
    src: Path = typer.Argument(..., help="A run directory or one stage directory."),
    out: Path = typer.Option(..., help="Where to write the export."),
    format: str = typer.Option("trl", help="trl (a datasets directory), povid or vlfeedback (JSON + images)."),
) -> None:
    """Export preference pairs (or rated responses) in another tool's format."""
    from vlalign.data.export import export as run_export

    console.print(f"wrote {run_export(src, out, format)}")


@app.command("import")
def import_(
    src: Path = typer.Argument(..., help="The released data: a parquet file/folder, or a JSON / JSON-lines file."),
    out: Path = typer.Option(..., help="Run directory to write the pairs (and responses) into."),
    format: str = typer.Option(..., help="rlaif-v, povid or vlfeedback."),
    images: Path = typer.Option(None, help="Folder the records' image paths are relative to."),
) -> None:
    """Import released preference data into a run directory, ready to train on or export."""
    from vlalign.data.imports import import_data

    stage = import_data(format, src, out, images)
    console.print(f"imported {stage.counts()['rows']} pairs into {stage.dir}; "
                  f"{stage.manifest.get('errors', 0)} records skipped (see {stage.dir / 'errors.jsonl'})")


@app.command("dpo")
def dpo(
    pairs: Path = typer.Argument(..., help="A run or stage directory holding preference pairs (built or imported)."),
    policy: str = typer.Option(..., help="The model to train: a directory or world:<name>."),
    out: Path = typer.Option(..., help="Where to save the trained model (or LoRA adapter) and its history."),
    config: Path = typer.Option(None, help="YAML of DPO settings (beta, loss_type, nll_weight, lora, optim, ...)."),
    beta: float = typer.Option(None, help="Override: DPO beta."),
    epochs: float = typer.Option(None, help="Override: epochs over the pairs."),
) -> None:
    """Train a policy with DPO on the preference pairs under a run directory."""
    _quiet()
    from vlalign.config import load_config
    from vlalign.models.load import load
    from vlalign.pipelines.stages import examples_under
    from vlalign.train.dpo import DPOConfig, train_dpo

    settings = load_config(DPOConfig, config, {"beta": beta, "epochs": epochs})
    examples = examples_under(pairs)
    model, processor = load(policy)
    console.print(f"DPO on {len(examples)} pairs from {pairs}")
    _, history = train_dpo(model, processor, examples, settings, out=out)
    console.print(f"final loss {history[-1]['loss']:.4f}; saved to {out}")


@app.command("generate")
def generate_cmd(
    model: str = typer.Option(..., help="Model directory or world:<name>."),
    image: Path = typer.Option(None, help="One image (with --prompt)."),
    prompt: str = typer.Option(None, help="One instruction (with --image)."),
    prompts: Path = typer.Option(None, help="A prompt file (JSON lines or datasets dir: image + instruction)."),
    out: Path = typer.Option(None, help="Write answers here as JSON lines (question_id, answer, reward)."),
    best_of: int = typer.Option(1, "--best-of", min=1, help="Sample N and keep the best by the implicit reward."),
    reference: str = typer.Option(None, help="The DPO reference for --best-of (default: the model's own base "
                                             "if it is a LoRA adapter)."),
    temperature: float = typer.Option(None, help="Sampling temperature (default: greedy, or 0.3 with --best-of)."),
    max_new_tokens: int = typer.Option(256, help="Longest answer, in tokens."),
    beta: float = typer.Option(0.1, help="beta of the implicit reward (scales it; does not change the ranking)."),
    seed: int = typer.Option(0, help="Base seed of the samples."),
) -> None:
    """Answer with a model; with --best-of N, RLAIF-V's self-feedback picks the best of N samples."""
    _quiet()
    from vlalign.data.prompts import BadRecord, read_prompt_file
    from vlalign.models.best_of_n import TEMPERATURE as best_of_n_temperature
    from vlalign.models.best_of_n import best_of_n
    from vlalign.models.generate import Decoding, generate
    from vlalign.models.load import load

    if (image is None) == (prompts is None) or (image is not None and not prompt):
        raise typer.BadParameter("give either --image with --prompt, or --prompts FILE")
    if prompts is not None:
        records = [r for r in read_prompt_file(prompts) if not isinstance(r, BadRecord)]
        items = [(r.id, r.image, r.instruction) for r in records]
    else:
        items = [("0", str(image), prompt)]
    from PIL import Image

    images = [im if isinstance(im, Image.Image) else Image.open(im).convert("RGB") for _, im, _ in items]
    instructions = [q for _, _, q in items]
    policy, processor = load(model)
    temp = temperature if temperature is not None else (best_of_n_temperature if best_of > 1 else 0.0)
    decoding = Decoding(max_new_tokens=max_new_tokens, temperature=temp)
    if best_of > 1:
        if reference is None and not hasattr(policy, "disable_adapter"):
            raise typer.BadParameter("--best-of needs the DPO reference: pass --reference (or a LoRA adapter as "
                                     "--model, whose base is the reference)", param_hint="--reference")
        ref = load(reference)[0] if reference else policy
        ranked = best_of_n(policy, ref, processor, images, instructions, best_of, decoding, beta, seed)
        answers = [(r.text, r.reward) for r in ranked]
    else:
        seeds = [seed + i for i in range(len(items))] if temp > 0 else None
        answers = [(t, None) for t in generate(policy, processor, images, instructions, decoding, seeds=seeds)]
    lines = [json.dumps({"question_id": qid, "answer": text, **({"reward": reward} if reward is not None else {})})
             for (qid, _, _), (text, reward) in zip(items, answers, strict=True)]
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(line + "\n" for line in lines))
        console.print(f"wrote {len(lines)} answers to {out}")
    else:
        print("\n".join(lines))


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


CONFIG_HELP = "YAML recipe (the method's config keys); keys left out keep their defaults."


def _run_method(config_cls, runner, config: Path | None, out: Path, **overrides):
    """Load a method's config (YAML + command-line overrides), run it into `out`, return its summary."""
    _quiet()
    from vlalign.config import load_config

    return runner(out, load_config(config_cls, config, overrides))


def _print_metrics(title: str, columns: dict[str, dict]) -> None:
    columns = {k: v for k, v in columns.items() if v}
    if columns:
        console.print(metrics_table(title, columns, SUMMARY_KEYS))


@app.command("rlaif-v")
def rlaif_v(
    config: Path = typer.Option(None, help=CONFIG_HELP),
    out: Path = typer.Option(..., help="Run directory (resumes if it holds an earlier run)."),
    policy: str = typer.Option(None, help="Override: the policy to align."),
    labeler: str = typer.Option(None, help="Override: the labeler model, or 'self' for self-alignment."),
    rounds: int = typer.Option(None, help="Override: number of online rounds."),
    prompts: str = typer.Option(None, help="Override: 'world' or a prompt file (JSON lines / datasets dir)."),
) -> None:
    """RLAIF-V: deconfounded sampling, claim-level labeler feedback, pairs, iterative DPO."""
    from vlalign.pipelines.rlaif_v import RLAIFVConfig, run_rlaif_v

    summary = _run_method(RLAIFVConfig, run_rlaif_v, config, out, policy=policy, labeler=labeler, rounds=rounds,
                          prompts=prompts)
    _print_metrics("RLAIF-V rounds (world, held-out scenes)",
                   {f"round {r['round']}": r.get("metrics") for r in summary["rounds"]})
    console.print(f"{summary['seconds']:.0f} s; summary at {out / 'summary.json'}")


@app.command("silkie")
def silkie(
    config: Path = typer.Option(None, help=CONFIG_HELP),
    out: Path = typer.Option(..., help="Run directory (resumes if it holds an earlier run)."),
    policy: str = typer.Option(None, help="Override: the policy to align."),
    judge: str = typer.Option(None, help="Override: the judge (world:judge, a model directory, api:MODEL[@URL])."),
    prompts: str = typer.Option(None, help="Override: 'world' or a prompt file (JSON lines / datasets dir)."),
) -> None:
    """VLFeedback / Silkie: a response pool rated by an AI judge on three aspects, pairs, DPO."""
    from vlalign.pipelines.silkie import SilkieConfig, run_silkie

    summary = _run_method(SilkieConfig, run_silkie, config, out, policy=policy, judge=judge, prompts=prompts)
    _print_metrics("Silkie (world, held-out scenes)",
                   {k: summary[k]["metrics"] for k in ("silkie", "silkie_longest") if k in summary})
    console.print(f"{summary['seconds']:.0f} s; summary at {out / 'summary.json'}")


@app.command("povid")
def povid(
    config: Path = typer.Option(None, help=CONFIG_HELP),
    out: Path = typer.Option(..., help="Run directory (resumes if it holds an earlier run)."),
    policy: str = typer.Option(None, help="Override: the policy to align."),
    prompts: str = typer.Option(None, help="Override: 'world' or a prompt file with reference answers."),
    stages: int = typer.Option(None, help="Override: 1 (injected pairs only) or 2 (plus the noisy-image term)."),
) -> None:
    """POVID: ground truth preferred over injected hallucinations and the policy's noisy-image answers."""
    from vlalign.pipelines.povid import POVIDConfig, run_povid

    summary = _run_method(POVIDConfig, run_povid, config, out, policy=policy, prompts=prompts, stages=stages)
    _print_metrics("POVID (world, held-out scenes)", {k: summary.get(k) for k in ("stage1", "stage2")})
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
