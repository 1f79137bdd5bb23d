"""`vlalign score` (an answer file -> metrics, no model) and `vlalign eval` (a model answers the benchmark's
questions, then the answers are scored the same way). Both print a table to stderr and write JSON."""

from __future__ import annotations

import json
from pathlib import Path

import typer

BENCH_HELP = ("Benchmark: chair, pope, mme, mmhal, amber, object-halbench, world-chair, world-pope or "
              "world-attributes.")
ANNOTATIONS_HELP = ("Ground truth the benchmark needs (repeatable): chair: COCO instances_*.json and "
                    "captions_*.json (or their folder); amber: AMBER's data folder; mmhal: response_template.json.")
JUDGE_HELP = "Judge backend for mmhal and --llm-objects, as vlalign.feedback.judges.make_judge reads it."
SKIP_HELP = "Count bad lines in the metrics (skipped) instead of stopping at the first."
PARSE_HELP = ("official: the benchmark's own script, quirks included (the figures papers report); robust: "
              "vlalign's reading of what an answer means. See the README's benchmark scoring modes.")


def check_parse_option(value: str) -> str:
    """The --parse value, or a usage error that lists the modes."""
    from vlalign.evaluate.answers import check_parse

    try:
        return check_parse(value)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--parse") from e


def resolve_judge(spec: str | None):
    """The judge a `--judge` string names, or None; says so plainly when no backend is installed."""
    if not spec:
        return None
    try:
        from vlalign.feedback.judges import make_judge
    except ImportError as e:
        raise typer.BadParameter(f"no judge backend is available in this installation "
                                 f"(vlalign.feedback.judges cannot be imported: {e})", param_hint="--judge") from e
    return make_judge(spec)


def _report(title: str, name: str, metrics: dict, out: Path) -> None:
    from vlalign.console import console, metrics_table

    console.print(metrics_table(title, {name: metrics}))
    for key in ("skipped", "judge_skipped"):
        if metrics.get(key):
            console.print(f"[yellow]{key}:[/yellow] {metrics[key]} (lines: {metrics[f'{key}_lines']})")
    if "parse" in metrics:
        console.print(f"parse: {metrics['parse']}" + (f"; extractor: {metrics['extractor']}" if "extractor" in metrics
                                                       else ""))
    for why in metrics.get("approximate_because", ()):
        console.print(f"[yellow]approximate:[/yellow] {why}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(metrics, indent=1))
    console.print(f"wrote {out}")


def score(
    bench: str = typer.Argument(..., help=BENCH_HELP),
    answers: Path = typer.Option(..., help="JSON-lines answers: question_id, answer and the benchmark's fields."),
    out: Path = typer.Option(..., help="Where to write the metrics (JSON)."),
    annotations: list[Path] = typer.Option(None, "--annotations", help=ANNOTATIONS_HELP),
    judge: str = typer.Option(None, help=JUDGE_HELP),
    llm_objects: bool = typer.Option(False, "--llm-objects", help="chair: the judge extracts objects (RLAIF-V)."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help=SKIP_HELP),
    parse: str = typer.Option("official", "--parse", help=PARSE_HELP, callback=check_parse_option),
) -> None:
    """Score an answer file of any model on a benchmark, without loading a model."""
    from vlalign.evaluate.benchmarks import ScoreInputs, get

    b = get(bench)
    metrics = b.score(ScoreInputs(answers, tuple(annotations or ()), resolve_judge(judge), llm_objects, skip_bad,
                                  parse))
    _report(f"{bench}: {answers.name}", bench, {"benchmark": bench, **metrics, "answers": str(answers)}, out)


def eval_(
    bench: str = typer.Argument(..., help=BENCH_HELP),
    model: str = typer.Option(..., help="Model directory or world:<name>."),
    out: Path = typer.Option(..., help="Where to write the metrics (JSON)."),
    data: Path = typer.Option(None, help="The benchmark's questions (see vlalign.evaluate.benchmarks)."),
    images: Path = typer.Option(None, help="Folder with the benchmark's images."),
    annotations: list[Path] = typer.Option(None, "--annotations", help=ANNOTATIONS_HELP),
    answers: Path = typer.Option(None, help="Where to write the answers (default: next to --out)."),
    judge: str = typer.Option(None, help=JUDGE_HELP),
    llm_objects: bool = typer.Option(False, "--llm-objects", help="chair: the judge extracts objects (RLAIF-V)."),
    limit: int = typer.Option(None, min=1, help="Only the first N questions (world and built POPE: N scenes/images)."),
    batch_size: int = typer.Option(16, min=1, help="Questions per generation batch."),
    max_new_tokens: int = typer.Option(None, min=1, help="Tokens for free-form answers (yes/no answers get few)."),
    seed: int = typer.Option(0, help="Seed for building POPE splits."),
    split: str = typer.Option(None, help="The benchmark's split, where it has several (world: test or dev)."),
    parse: str = typer.Option("official", "--parse", help=PARSE_HELP, callback=check_parse_option),
) -> None:
    """Let a model answer a benchmark's questions (greedy), then score the answers as `vlalign score` does."""
    from vlalign.console import console
    from vlalign.evaluate.benchmarks import EvalInputs, ScoreInputs, generate_answers, get
    from vlalign.models.load import load

    b = get(bench)
    try:
        b.check_split(split)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--split") from e
    judge_obj = resolve_judge(judge)
    if b.name in ("mmhal", "object-halbench") and judge_obj is None:
        raise typer.BadParameter(f"{bench} is scored by a judge; pass --judge", param_hint="--judge")
    annotations = list(annotations or ())
    if b.name == "amber" and not annotations and data is not None:
        annotations = [data.parent.parent]
    if b.needs_annotations and not annotations:
        raise typer.BadParameter(f"{bench} is scored against ground truth: pass it with --annotations",
                                 param_hint="--annotations")
    m, processor = load(model)
    crop = getattr(getattr(processor, "image_processor", None), "crop_size", None)
    image_size = crop["height"] if crop is not None else None
    questions = b.questions(EvalInputs(data, tuple(annotations), images, limit, image_size, seed, split))
    console.print(f"{bench}: {len(questions)} questions for {model}")
    records = generate_answers(m, processor, questions, b, batch_size, max_new_tokens)
    answers = answers or out.with_name(f"{out.stem}.answers.jsonl")
    answers.parent.mkdir(parents=True, exist_ok=True)
    answers.write_text("".join(json.dumps(r) + "\n" for r in records))
    metrics = b.score(ScoreInputs(answers, tuple(annotations), judge_obj, llm_objects, parse=parse))
    _report(f"{bench}: {model}", bench, {"benchmark": bench, "model": model, **metrics, "answers": str(answers)}, out)
