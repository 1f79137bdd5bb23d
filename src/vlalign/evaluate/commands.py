"""`vlalign score` (an answer file -> metrics, no model), `vlalign eval` (a model answers the benchmark's
questions, or a judge or labeler judges its pairs, then the answers are scored the same way) and `vlalign
compare` (two evaluations of the same items, paired). Each prints a table to stderr and writes JSON; every
figure comes with its 95% interval, and the per-item outcomes go beside the metrics
(`<out>.outcomes.json`) for a later comparison."""

from __future__ import annotations

import json
from pathlib import Path

import typer

BENCH_HELP = ("Benchmark: chair, pope, mme, mmhal, amber, amber-generative, amber-discriminative, object-halbench, "
              "hallusionbench, vl-rewardbench, and the world's (world, world-chair, world-pope, world-attributes, "
              "world-judge, world-labeler).")
ANNOTATIONS_HELP = ("Ground truth the benchmark needs (repeatable): chair: COCO instances_*.json and "
                    "captions_*.json (or their folder); amber: AMBER's data folder; mmhal: response_template.json; "
                    "pope: POPE's question files (or their folder) for answer files without labels, as LLaVA's.")
JUDGE_HELP = ("Judge backend (api:MODEL[@URL] or a model directory) for mmhal, object-halbench, hallusionbench, "
              "--llm-objects, and the judge under test for vl-rewardbench and world-judge. A judge other than the "
              "paper's is named in the output and warned about.")
ANSWERS_HELP = ("The answers: JSON lines with question_id, answer and the benchmark's fields (what `vlalign eval` "
                "writes), or the file a benchmark releases: LLaVA's answer lines (`text`, beside `prompt`; pope takes "
                "the labels from --annotations), CHAIR's caption list or imgToEval file (image_id, caption), AMBER's "
                "result list (id, response), HallusionBench's result file (model_prediction).")
DATA_HELP = ("The benchmark's questions as released: pope: a POPE question file (coco_pope_<split>.json; the split "
             "from `category`, the file name, or one split `all`), llava_pope_test.jsonl, or COCO instances_*.json "
             "to build the splits from; chair / object-halbench: JSON lines with image_id (and image, question); "
             "mme: its eval_tool folder of <subtask>.txt or JSON lines; mmhal: response_template.json; amber: "
             "query_*.json; hallusionbench: HallusionBench.json; vl-rewardbench: data.jsonl.")
STYLE_HELP = ("How the judge under test is asked (vl-rewardbench, world-judge): pairwise (both answers, it names "
              "the better; vl-rewardbench's default) or a rating style (vlfeedback, world: each answer rated, "
              "the higher mean wins).")
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


def _report(title: str, bench: str, result, out: Path, extra: dict) -> None:
    """Print the metrics (each figure with its interval) and the scorer's notes; write them to `out` and the
    outcomes beside them."""
    from vlalign.console import console, metrics_table
    from vlalign.evaluate.intervals import outcomes_path, write_outcomes

    metrics = {"benchmark": bench, **extra, **result.metrics}
    console.print(metrics_table(title, {bench: metrics}))
    for key in ("skipped", "judge_skipped"):
        if metrics.get(key):
            console.print(f"[yellow]{key}:[/yellow] {metrics[key]} (lines: {metrics[f'{key}_lines']})")
    if "parse" in metrics:
        console.print(f"parse: {metrics['parse']}" + (f"; extractor: {metrics['extractor']}" if "extractor" in metrics
                                                       else ""))
    for why in metrics.get("approximate_because", ()):
        console.print(f"[yellow]approximate:[/yellow] {why}")
    if metrics.get("judge_substituted"):
        console.print(f"[yellow]judge:[/yellow] {metrics['judge_substituted']}; see the README, \"Checking a substitute "
                      f"judge\"")
    if "bootstrap" in metrics:
        b = metrics["bootstrap"]
        console.print(f"intervals: {b['level']:.0%}, {b['resamples']} bootstrap resamples of {b['units']} "
                      f"{b['unit']}s (seed {b['seed']})")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(metrics, indent=1))
    console.print(f"wrote {out}")
    if result.outcomes is not None:
        write_outcomes(outcomes_path(out), result.outcomes)


def score(
    bench: str = typer.Argument(..., help=BENCH_HELP),
    answers: Path = typer.Option(..., help=ANSWERS_HELP),
    out: Path = typer.Option(..., help="Where to write the metrics (JSON); the per-item outcomes go beside it."),
    annotations: list[Path] = typer.Option(None, "--annotations", help=ANNOTATIONS_HELP),
    judge: str = typer.Option(None, help=JUDGE_HELP),
    llm_objects: bool = typer.Option(False, "--llm-objects", help="chair: the judge extracts objects (RLAIF-V)."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help=SKIP_HELP),
    parse: str = typer.Option("official", "--parse", help=PARSE_HELP, callback=check_parse_option),
) -> None:
    """Score an answer file of any model on a benchmark, without loading a model."""
    from vlalign.evaluate.benchmarks import ScoreInputs, get

    b = get(bench)
    result = b.score(ScoreInputs(answers, tuple(annotations or ()), resolve_judge(judge), llm_objects, skip_bad,
                                 parse))
    _report(f"{bench}: {answers.name}", bench, result, out, {"answers": str(answers)})


def _feedback(b, judge_obj, judge_style: str | None, labeler: str | None, splitter: str | None, model: str | None):
    """The judge or labeler a benchmark of AI feedback measures."""
    from vlalign.evaluate.feedback import Feedback

    if judge_obj is None and labeler is None:
        raise typer.BadParameter(f"{b.name} measures a judge or a labeler: pass --judge or --labeler",
                                 param_hint="--judge")
    loaded = None
    if labeler is not None:
        from vlalign.models.load import load

        loaded = load(labeler)
    return Feedback(judge_obj, judge_style, loaded, labeler or "", splitter, model)


def eval_(
    bench: str = typer.Argument(..., help=BENCH_HELP),
    model: str = typer.Option(None, help="Model directory or world:<name> that answers (world-labeler: the policy "
                                         "whose answers the labeler checks)."),
    out: Path = typer.Option(..., help="Where to write the metrics (JSON); the per-item outcomes go beside it."),
    data: Path = typer.Option(None, help=DATA_HELP),
    images: Path = typer.Option(None, help="Folder with the benchmark's images."),
    annotations: list[Path] = typer.Option(None, "--annotations", help=ANNOTATIONS_HELP),
    answers: Path = typer.Option(None, help="Where to write the answers (default: next to --out)."),
    judge: str = typer.Option(None, help=JUDGE_HELP),
    judge_style: str = typer.Option(None, "--judge-style", help=STYLE_HELP),
    labeler: str = typer.Option(None, help="The labeler under test (vl-rewardbench, world-labeler): a model "
                                           "directory or world:<name>."),
    splitter: str = typer.Option(None, help="The labeler's claim splitter (sentences, llm, or a plugin's: world)."),
    llm_objects: bool = typer.Option(False, "--llm-objects", help="chair: the judge extracts objects (RLAIF-V)."),
    limit: int = typer.Option(None, min=1, help="Only the first N questions (world and built POPE: N scenes/images)."),
    batch_size: int = typer.Option(16, min=1, help="Questions per generation batch."),
    max_new_tokens: int = typer.Option(None, min=1, help="Tokens for free-form answers (yes/no answers get few)."),
    seed: int = typer.Option(0, help="Seed for building POPE splits."),
    split: str = typer.Option(None, help="The benchmark's split, where it has several (world: test or dev)."),
    parse: str = typer.Option("official", "--parse", help=PARSE_HELP, callback=check_parse_option),
) -> None:
    """Let a model answer a benchmark's questions (greedy), or a judge or labeler judge its pairs, then score
    the answers as `vlalign score` does."""
    from vlalign.console import console
    from vlalign.evaluate.benchmarks import EvalInputs, ScoreInputs, generate_answers, get

    b = get(bench)
    try:
        b.check_split(split)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--split") from e
    judge_obj = resolve_judge(judge)
    if b.name in ("mmhal", "object-halbench") and judge_obj is None:
        raise typer.BadParameter(f"{bench} is scored by a judge; pass --judge", param_hint="--judge")
    annotations = list(annotations or ())
    if b.name.startswith("amber") and not annotations and data is not None:
        annotations = [data.parent.parent]
    if b.needs_annotations and not annotations:
        raise typer.BadParameter(f"{bench} is scored against ground truth: pass it with --annotations",
                                 param_hint="--annotations")
    answers = answers or out.with_name(f"{out.stem}.answers.jsonl")
    if b.judged is not None:
        feedback = _feedback(b, judge_obj, judge_style, labeler, splitter, model)
        inputs = EvalInputs(data, tuple(annotations), images, limit, None, seed, split)
        records = b.judged(feedback, inputs)
        who, judge_obj = feedback.name, None  # the judge under test scores nothing itself
    else:
        if model is None:
            raise typer.BadParameter(f"{bench} asks a model its questions: pass --model", param_hint="--model")
        from vlalign.evaluate.suite import image_size
        from vlalign.models.load import load

        m, processor = load(model)
        inputs = EvalInputs(data, tuple(annotations), images, limit, image_size(processor), seed, split)
        if b.run is not None:  # a benchmark that evaluates a model in one go (the world's)
            _report(f"{bench}: {model}", bench, b.run(m, processor, inputs), out, {"model": model})
            return
        questions = b.questions(inputs)
        console.print(f"{bench}: {len(questions)} questions for {model}")
        records = generate_answers(m, processor, questions, b, batch_size, max_new_tokens)
        who = model
    answers.parent.mkdir(parents=True, exist_ok=True)
    answers.write_text("".join(json.dumps(r) + "\n" for r in records))
    result = b.score(ScoreInputs(answers, tuple(annotations), judge_obj, llm_objects, parse=parse))
    _report(f"{bench}: {who}", bench, result, out, {"model": who, "answers": str(answers)})
