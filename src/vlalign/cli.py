"""`vlalign ...`: the command line. It only wires configs, the runner and the stages together.

Model libraries are imported by the commands that need them, so `vlalign config show` and a config typo
answer at once. Messages and progress go to stderr; results (paths, JSON) to stdout.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer

from vlalign.console import console, duration
from vlalign.evaluate.commands import eval_, score
from vlalign.evaluate.compare import compare_cmd
from vlalign.plugins import METHODS, add_commands
from vlalign.redaction import redact_secrets

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Align vision-language models with AI feedback (RLAIF-V, VLFeedback/Silkie, POVID, mDPO, MPO).")
config_app = typer.Typer(no_args_is_help=True, help="Method configs: every key with its default and what it does.")
app.add_typer(config_app, name="config")
app.command("score")(score)
app.command("eval")(eval_)
app.command("compare")(compare_cmd)

CONFIG_HELP = ("A shipped recipe's name (`vlalign recipes` lists them) or a YAML file; keys left out keep the "
               "method's defaults (`vlalign config show METHOD`).")
OVERRIDES_HELP = "Dotted overrides of any config key: train.beta=0.2 rounds=2 'eval=[world]'."


def load_method_config(method: str, config: str | None, overrides: list[str] | None, check: bool = False):
    """(method, config): the method's config from a recipe or YAML file and overrides, checked in full (no
    model library is imported yet, so a typo is reported at once). With `check`, what the config names (models,
    files, a judge style that cannot fit its judge) is checked too and reported with the typos
    (`vlalign.preflight`)."""
    from vlalign.config import ConfigError, load_config
    from vlalign.recipes import locate, method_of

    m = METHODS.get(method)
    path = locate(config) if config is not None else None
    named = method_of(path) if path is not None else None
    if named is not None and named != m.name:
        raise ValueError(f"{config} is a recipe for {named}, not {m.name}: run `vlalign run {named} --config "
                         f"{config}`, or pick a {m.name} recipe (`vlalign recipes`)")
    if not check:
        return m, load_config(m.config, path, list(overrides or []))
    from vlalign.preflight import problems

    try:
        settings = load_config(m.config, path, list(overrides or []))
    except ConfigError as e:
        found = problems(e.config) if e.config is not None else []
        raise ConfigError(e.problems + [p for p in found if p not in e.problems], str(path or "")) from None
    found = problems(settings)
    if found:
        raise ConfigError(found, m.name)
    return m, settings


def run_method(method: str, config: str | None, out: Path, overrides: list[str] | None) -> dict:
    m, settings = load_method_config(method, config, overrides, check=True)
    from vlalign.runner import run

    summary = run(m, settings, out)
    from vlalign import ranks

    if ranks.is_main():  # every process of a launched job has the summary; one prints it
        print_summary(summary, out)
    return summary


def print_summary(summary: dict, out: Path) -> None:
    """The run's own benchmarks (the world's, a POPE file, ...): a table each of the base and every round's arms
    against the base, a legend of the figures, and where the models and the summary are."""
    from vlalign.console import run_tables

    run_tables(summary)
    for r in summary["rounds"]:
        for arm, record in r["arms"].items():
            console.print(f"round {r['round']} {arm}: {record['pairs']} {record.get('unit', 'pairs')}, model at {record['checkpoint']}")
    from vlalign.run_record import summary_notes

    for note in summary_notes(summary):
        console.print(f"[yellow]{note}[/yellow]", highlight=False, soft_wrap=True)
    console.print(f"The run took {duration(summary['seconds'])}; summary at {out / 'summary.json'}", highlight=False)
    print(summary["final"])


@app.command("run")
def run_cmd(
    method: str = typer.Argument(..., help="The method: " + ", ".join(METHODS.names()) + "."),
    config: str = typer.Option(None, help=CONFIG_HELP),
    out: Path = typer.Option(..., help="Run directory (resumes if it holds an earlier run of the method)."),
    overrides: list[str] = typer.Argument(None, help=OVERRIDES_HELP, show_default=False),
) -> None:
    """Run any method: its stages, rounds, training and evaluation, resumably."""
    run_method(method, config, out, overrides)


def _method_command(name: str):
    def command(
        config: str = typer.Option(None, help=CONFIG_HELP),
        out: Path = typer.Option(..., help="Run directory (resumes if it holds an earlier run of the method)."),
        overrides: list[str] = typer.Argument(None, help=OVERRIDES_HELP, show_default=False),
    ) -> None:
        run_method(name, config, out, overrides)

    command.__doc__ = f"{METHODS.get(name).summary} (`vlalign run {name}`)."
    return command


for _name in METHODS.names():
    app.command(_name)(_method_command(_name))


@config_app.command("show")
def config_show(
    method: str = typer.Argument(None, help="The method: " + ", ".join(METHODS.names()) + " (default: all)."),
    config: str = typer.Option(None, help="Show this recipe (a name or a YAML file) with the defaults filled in."),
    markdown: bool = typer.Option(False, "--markdown", help="As the Markdown page docs/configs.md is."),
    overrides: list[str] = typer.Argument(None, help=OVERRIDES_HELP, show_default=False),
) -> None:
    """Print a method's full config as YAML: every key, its value and what it does."""
    from vlalign.config import describe

    if method is None and (config or overrides):
        raise typer.BadParameter("name the method whose config to show", param_hint="METHOD")
    pages = []
    for name in [method] if method else METHODS.names():
        m, settings = load_method_config(name, config, overrides)
        text = describe(settings)
        pages.append(f"## {m.name}\n\n{m.summary}.\n\n```yaml\n{text}```\n" if markdown
                     else f"# {m.name}: {m.summary}\n{text}")
    head = ("# Config reference\n\nEvery key of every method, with its default and what it does (the output of "
            "`vlalign config show --markdown`; a test keeps this page equal to it). Defaults are each method's "
            "general recipe; the shipped recipes (`vlalign recipes`) set what they change.\n\n") if markdown else ""
    if markdown:
        from vlalign.config import alias_table
        from vlalign.stages.settings import RunConfig
        from vlalign.train.settings import TERM_HELP

        pages.append("## Loss terms\n\n| term | what it is |\n|---|---|\n"
                     + "".join(f"| `{k}` | {v} |\n" for k, v in TERM_HELP.items()))
        pages.append(alias_table(RunConfig))
    print(head + "\n".join(pages), end="")


recipes_app = typer.Typer(help="The recipes that ship with vlalign: list them, or copy one out to edit.")
app.add_typer(recipes_app, name="recipes")


@recipes_app.callback(invoke_without_command=True)
def recipes_list(ctx: typer.Context) -> None:
    """List every shipped recipe: its name (for --config), the method it is for, and what it does."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.table import Table

    from vlalign.recipes import recipes

    table = Table("recipe", "for", "what it is", box=None, pad_edge=False)
    for r in recipes():
        table.add_row(r.name, r.method, r.about)
    console.print(table)


@recipes_app.command("copy")
def recipes_copy(
    name: str = typer.Argument(..., help="The recipe (`vlalign recipes` lists them)."),
    dest: Path = typer.Argument(..., help="A folder (the recipe keeps its file name) or a file path."),
    force: bool = typer.Option(False, "--force", help="Replace a file that is there."),
) -> None:
    """Write a recipe out to edit; run the copy with --config PATH."""
    from vlalign.recipes import copy

    print(copy(name, dest, force))


@app.command("merge")
def merge_cmd(
    adapter: Path = typer.Argument(..., help="A saved LoRA adapter directory (a run's roundK/adapter)."),
    out: Path = typer.Option(..., help="Folder for the merged model (out/policy) and a copy of the adapter "
                                       "(out/adapter), as a run saves them."),
    dtype: str = typer.Option(None, help="bf16, fp16 or fp32 (default: the dtype the adapter's run recorded, "
                                         "else the base's own)."),
) -> None:
    """Fold a LoRA adapter into its base model: the merged model in the run's dtype, beside its adapter."""
    from vlalign.models.paths import require_adapter

    require_adapter(adapter)  # before torch loads: a wrong path answers at once
    from vlalign.models.saved import POLICY, merge

    print(merge(adapter, out, dtype) / POLICY)


@app.command("push")
def push(
    path: Path = typer.Argument(..., help="A saved model (a run's roundK, `vlalign dpo`'s --out, any model directory) "
                                          "or, with --data, a run directory."),
    repo: str = typer.Option(..., help="The repo to push to, ORG/NAME (created if missing)."),
    data: bool = typer.Option(False, "--data", help="Push a run's data (stages, pairs, summary, report; no weights) "
                                                    "to a dataset repo."),
    endpoint: str = typer.Option(None, help="The Hub's URL (default: HF_ENDPOINT, else huggingface.co)."),
    public: bool = typer.Option(False, "--public", help="Create the repo public (default: private)."),
) -> None:
    """Push a trained model (policy/ at the root, adapter/ beside it) or a run's data to a Hugging Face Hub; the
    token comes from HF_TOKEN."""
    from vlalign.data.hub import push_model, push_run

    print((push_run if data else push_model)(path, repo, endpoint, private=not public))


@app.command("export")
def export(
    src: Path = typer.Argument(..., help="A run directory or one stage directory."),
    out: Path = typer.Option(..., help="Where to write the export."),
    format: str = typer.Option("trl", help="trl (a datasets directory), povid or vlfeedback (JSON + images)."),
) -> None:
    """Export preference pairs (or rated responses) in another tool's format."""
    from vlalign.formats.export import export as run_export

    print(run_export(src, out, format))


@app.command("report")
def report_cmd(
    run: Path = typer.Argument(..., help="A run directory: the --out of `vlalign run` or of `vlalign demo`."),
    out: Path = typer.Option(None, help="Folder to write the report to (default: RUN/report); an earlier report "
                                        "there is replaced."),
) -> None:
    """Write a run's report: static HTML that opens offline (overview, metrics, training, the pair viewer)."""
    from vlalign.report import write_report

    print(write_report(run, out))


@app.command("import")
def import_(
    src: Path = typer.Argument(..., help="The released data: a parquet file/folder, or a JSON / JSON-lines file."),
    out: Path = typer.Option(..., help="Run directory to write the pairs (and responses) into."),
    format: str = typer.Option(..., help="rlaif-v, povid or vlfeedback."),
    images: Path = typer.Option(None, help="Folder the records' image paths are relative to, and must stay in "
                                           "(default: the data file's folder)."),
) -> None:
    """Import released preference data into a run directory, ready to train on or export."""
    from vlalign.formats.imports import import_data, import_summary

    stage = import_data(format, src, out, images)
    console.print(import_summary(stage), highlight=False, soft_wrap=True)
    print(stage.dir)


@app.command("dpo")
def dpo(
    pairs: Path = typer.Argument(..., help="A run or stage directory holding preference pairs (built or imported)."),
    policy: str = typer.Option(..., help="The model to train: a directory or world:<name>."),
    out: Path = typer.Option(..., help="Folder for the trained model (out/policy, LoRA merged in; out/adapter with "
                                       "LoRA) and its training (out/training)."),
    config: Path = typer.Option(None, help="YAML of training settings (loss, beta, lora, optim, reference, ...)."),
    beta: float = typer.Option(None, help="Shorthand for the override beta=..."),
    epochs: float = typer.Option(None, help="Shorthand for the override epochs=..."),
    dtype: str = typer.Option("auto", help="auto (the checkpoint's), bf16, fp16 or fp32; the model is saved in it."),
    gradient_checkpointing: bool = typer.Option(False, "--gradient-checkpointing",
                                                help="Recompute activations in the backward: less memory, more time."),
    quantization: str = typer.Option(None, help="4bit or 8bit: load the policy quantized (bitsandbytes) and train "
                                                "LoRA on it (QLoRA); needs lora settings."),
    overrides: list[str] = typer.Argument(None, help="Dotted overrides of the training settings: loss={sft: 1.0} "
                                                     "reference=/models/sft (TRL's names work: learning_rate=1e-6).",
                                          show_default=False),
) -> None:
    """Train a policy on the preference pairs under a run directory (any objective of `loss`)."""
    from vlalign.config import ConfigError, load_config
    from vlalign.models.paths import reference_problem
    from vlalign.models.settings import Runtime
    from vlalign.preflight import quantization_problems
    from vlalign.train.settings import TrainConfig

    shorthands = [f"{k}={v}" for k, v in (("beta", beta), ("epochs", epochs)) if v is not None]
    settings = load_config(TrainConfig, config, [*shorthands, *(overrides or [])])
    runtime = Runtime(dtype=dtype, quantization=quantization)
    problems = [p for p in (reference_problem("--policy", policy), reference_problem("reference", settings.reference))
                if p] + quantization_problems(runtime, "--quantization", settings.lora)
    if problems:
        raise ConfigError(problems, "dpo")
    from vlalign import ranks
    from vlalign.models.load import load
    from vlalign.models.saved import POLICY, save_trained
    from vlalign.stages.pairs import examples_under
    from vlalign.train.fit import fit

    examples = examples_under(pairs)
    model, processor = load(policy, runtime)
    reference = load(settings.reference, runtime)[0] if settings.reference else None
    if ranks.is_main():
        console.print(f"training on {len(examples)} pairs from {pairs} ({ranks.world_size()} process(es))")
    model, history = fit(model, processor, examples, settings, out=out / "training", reference=reference,
                         gradient_checkpointing=gradient_checkpointing)
    save_trained(model, processor, out, runtime)  # every process holds the same weights; the main one writes them
    if ranks.is_main():
        console.print(f"final loss {history[-1]['loss']:.4f}")
        print(out / POLICY)
    ranks.barrier()


def _prompt_file_items(prompts: Path) -> tuple[list[tuple[str, str | None, str]], list]:
    """(id, image path, instruction) and the image of every usable record of a prompt file; each record that
    is not (malformed, or its image missing or unreadable) is reported with its line and skipped."""
    from vlalign.data.prompts import BadRecord, open_image, read_prompt_file

    items, images, skipped = [], [], 0
    for r in read_prompt_file(prompts):
        try:
            if isinstance(r, BadRecord):
                raise r.error
            images.append(open_image(r))
        except (FileNotFoundError, ValueError) as e:
            skipped += 1
            where = "" if str(e).startswith(str(prompts)) else f"{prompts} "
            console.print(f"[yellow]skipped[/yellow] {where}{e}", highlight=False)
            continue
        items.append((r.id, r.image if isinstance(r.image, str) else None, r.instruction))
    if not items:
        raise ValueError(f"no usable prompts in {prompts} ({skipped} skipped); fix the records reported above")
    return items, images


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
    dtype: str = typer.Option("auto", help="auto (the checkpoint's), bf16, fp16 or fp32."),
) -> None:
    """Answer with a model; with --best-of N, RLAIF-V's self-feedback picks the best of N samples."""
    from vlalign.models.settings import Decoding, Runtime

    if (image is None) == (prompts is None) or (image is not None and not prompt):
        raise typer.BadParameter("give either --image with --prompt, or --prompts FILE")
    from vlalign.models.paths import reference_problem

    problem = reference_problem("--model", model) or reference_problem("--reference", reference)
    if problem:  # before torch loads: a wrong path answers at once
        raise typer.BadParameter(problem)
    runtime = Runtime(dtype=dtype)
    from vlalign.models.best_of_n import TEMPERATURE as best_of_n_temperature
    from vlalign.models.best_of_n import best_of_n
    from vlalign.models.generate import generate
    from vlalign.models.load import load

    if prompts is not None:
        items, images = _prompt_file_items(prompts)
    else:
        from PIL import Image

        items, images = [("0", str(image), prompt)], [Image.open(image).convert("RGB")]
    instructions = [q for _, _, q in items]
    policy, processor = load(model, runtime)
    temp = temperature if temperature is not None else (best_of_n_temperature if best_of > 1 else 0.0)
    decoding = Decoding(max_new_tokens=max_new_tokens, temperature=temp)
    if best_of > 1:
        if reference is None and not hasattr(policy, "disable_adapter"):
            raise typer.BadParameter("--best-of needs the DPO reference: pass --reference (or a LoRA adapter as "
                                     "--model, whose base is the reference)", param_hint="--reference")
        ref = load(reference, runtime)[0] if reference else policy
        ranked = best_of_n(policy, ref, processor, images, instructions, best_of, decoding, beta, seed)
        answers = [(r.text, r.reward) for r in ranked]
    else:
        seeds = [seed + i for i in range(len(items))] if temp > 0 else None
        answers = [(t, None) for t in generate(policy, processor, images, instructions, decoding, seeds=seeds)]
    lines = [json.dumps({"question_id": qid, "instruction": q, "image": im,
                         "model": model, "answer": text, **({"reward": reward} if reward is not None else {})})
             for (qid, im, q), (text, reward) in zip(items, answers, strict=True)]
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
    name: str = typer.Option(None, help="Model name the API reports (default: the model reference); requests "
                                        "for any other name get 404."),
    api_key: str = typer.Option(None, envvar="VLALIGN_API_KEY", show_default=False,
                                help="Require 'Authorization: Bearer KEY' on every request (or set VLALIGN_API_KEY)."),
    lora_dir: list[Path] = typer.Option([], help="A folder /v1/load_lora_adapter may load adapters from "
                                                 "(repeat for more; none: loading is off)."),
    max_body_mb: float = typer.Option(16.0, help="Largest request body in MB, refused (413) before it is read."),
    max_image_pixels: int = typer.Option(4096 * 4096, help="Largest image (width x height) a request may send."),
    max_tokens: int = typer.Option(4096, help="Most tokens a request may ask for."),
    max_n: int = typer.Option(128, help="Most answers one request may ask for (n)."),
    max_queue: int = typer.Option(256, help="Requests waiting at once; more get 429 with Retry-After."),
    body_timeout: float = typer.Option(30.0, help="Seconds a client has to send the body it announced."),
    max_batch: int = typer.Option(16, help="Answers the model generates together; large n are generated in "
                                           "slices of this, shared with the other requests waiting."),
    fail_every: int = typer.Option(0, help="Fail every k-th request on purpose (tests of client retries)."),
    fail_status: int = typer.Option(503, help="HTTP status of those failures (503, 429, ...)."),
) -> None:
    """Serve a local model behind an OpenAI-compatible chat endpoint (/v1/chat/completions with n, seed and
    top_logprobs as vLLM's; /v1/load_lora_adapter and /v1/unload_lora_adapter for each round's adapter).
    One line per request (time, route, status, tokens, seconds) goes to stderr."""
    from vlalign.feedback.judges import make_judge
    from vlalign.serve import Limits, make_server

    limits = Limits(max_body=int(max_body_mb * 2 ** 20), max_image_pixels=max_image_pixels, max_tokens=max_tokens,
                    default_max_tokens=min(256, max_tokens), max_n=max_n, max_queue=max_queue,
                    body_timeout=body_timeout)
    server = make_server(make_judge(model), host, port, name or model, fail_every, fail_status, limits=limits,
                         api_key=api_key, lora_dirs=lora_dir, max_batch=max_batch,
                         log=lambda line: (sys.stderr.write(line + "\n"), sys.stderr.flush()))
    guarded = "an API key is required" if api_key else "no API key is required"
    print(f"serving {model} at http://{host}:{server.server_port}/v1 ({guarded}; adapters load from "
          f"{', '.join(map(str, lora_dir)) or 'nowhere'})", flush=True)
    if not api_key and host not in ("127.0.0.1", "localhost", "::1"):
        console.print(f"[yellow]warning:[/yellow] {host} is reachable from other machines and no API key is set: "
                      f"pass --api-key or set VLALIGN_API_KEY", highlight=False)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.shutdown()


add_commands(app)


def _quiet() -> None:
    """No info logs or tqdm bars from the model libraries (their own settings, read when they import)."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def main() -> None:
    _quiet()
    try:
        app()
    except (FileNotFoundError, ValueError, RuntimeError, OSError) as e:
        if os.environ.get("VLALIGN_DEBUG"):
            raise
        console.print(f"[red]error:[/red] {redact_secrets(str(e))}", highlight=False, soft_wrap=True)  # one line
        sys.exit(2)
    except KeyboardInterrupt:
        _stopped()
        sys.exit(130)
    except SystemExit as e:  # typer turns Ctrl-C inside a command into exit code 130, saying nothing
        if e.code == 130:
            _stopped()
        raise


def _stopped() -> None:
    from vlalign.run_record import interrupted

    console.print(interrupted() or "stopped; run the same command again to continue where it stopped",
                  highlight=False, soft_wrap=True)


if __name__ == "__main__":
    main()
