"""Checks before a run spends time: what a config names exists and fits, and the models that give feedback
answer the run's own prompts in a form the run can read.

Two steps, both before the first long stage:

- `problems(config)`: without torch, in the time a config takes to parse. The config's own `problems()`,
  every model it names (a directory that holds no model, a plugin model that does not exist), the files and
  folders it reads, a rating style whose prompt cannot fit the judge's context, a quantization whose package
  is missing or a quantized policy trained in full. The command line reports them with the typos
  (`vlalign.cli.load_method_config`), the runner again before it claims the run directory.
- `trial(config, models, prompts)`: a local judge, claim splitter, injector or labeler gets the first prompts
  of the run's first round (written before anything else, so the trial asks about exactly those), asked the
  way the run will ask them, and the start is refused (`Refused`, with
  the replies' reasons and the fix) when nothing usable comes back. API backends are not asked here (their
  reachability is checked by `vlalign.feedback.judges.check_judge`, and a trial would be paid).

A start refused by either leaves no run directory behind (`vlalign.runner.run` removes what it made).
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from vlalign import ranks
from vlalign.models.paths import API, context_length, reference_problem, token_count
from vlalign.models.settings import Runtime
from vlalign.progress import log, warn

TRIAL_PROMPTS = 2  # the first prompts of the source every trial asks about
STOCK_ANSWER = "The image shows a scene with several objects."  # answered where a prompt has no reference
MODEL_KEYS = ("policy", "labeler", "judge", "model", "reference", "sampler")  # fields that name a model
QLORA_FIX = "pip install bitsandbytes (or pip install 'vlalign[qlora]')"


class Refused(ValueError):
    """A start refused before it did any work: the message says why and what to change."""


# ---- the config, without torch ----

def _fields(config: Any, where: str = "") -> Iterator[tuple[str, str, Any]]:
    """(path, field name, value) of every field of a config, nested dataclasses and lists of them included."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        path = f"{where}.{f.name}" if where else f.name
        yield path, f.name, value
        if dataclasses.is_dataclass(value):
            yield from _fields(value, path)
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    yield from _fields(item, f"{path}[{i}]")


def _model_problems(config: Any) -> list[str]:
    return [p for path, name, value in _fields(config) if name in MODEL_KEYS and isinstance(value, str)
            if (p := reference_problem(path, value)) is not None]


def _path_problems(config: Any) -> list[str]:
    """Files and folders the config reads that are not there."""
    from vlalign.plugins import PROMPT_SOURCES

    out = []
    prompts = getattr(config, "prompts", None)
    if prompts is not None and prompts.source is not None and prompts.source not in PROMPT_SOURCES \
            and not Path(prompts.source).exists():
        out.append(f"prompts.source: {prompts.source} is neither a prompt source "
                   f"({', '.join(n for n in PROMPT_SOURCES.names() if n != 'file')}) nor an existing prompt file")
    if getattr(config, "pairs_from", None) and not Path(config.pairs_from).exists():
        out.append(f"pairs_from: {config.pairs_from} does not exist; name a run or stage directory with pairs")
    for i, spec in enumerate(getattr(config, "eval", None) or []):
        out += [f"eval[{i}].{key}: {value} does not exist" for key in ("data", "images")
                if (value := getattr(spec, key)) and not Path(value).exists()]
    out += [f"{path}: the chat template file {value} does not exist" for path, name, value in _fields(config)
            if name == "chat_template" and isinstance(value, str) and value.endswith((".jinja", ".j2"))
            and not Path(value).exists()]
    return out


_NO_TRAINING = object()


def quantization_problems(runtime: Runtime, key: str, lora: Any = _NO_TRAINING) -> list[str]:
    """What stops a model from loading quantized under `runtime` (setting `key`): bitsandbytes missing; and
    for a policy that trains (`lora` given, None for full training), training in full."""
    if not runtime.quantization:
        return []
    out = []
    if find_spec("bitsandbytes") is None:
        out.append(f"{key}: {runtime.quantization} loads through bitsandbytes, which is not installed: {QLORA_FIX}")
    if lora is None:
        out.append(f"{key}: a {runtime.quantization} policy trains only through LoRA adapters (QLoRA); set "
                   f"train.lora (e.g. lora_r=16) or drop the quantization")
    return out


def _quantization_problems(config: Any) -> list[str]:
    train = getattr(config, "train", None)
    return [p for path, _, value in _fields(config) if isinstance(value, Runtime)
            for p in quantization_problems(value, f"{path}.quantization",
                                           train.lora if path == "runtime" and train is not None else _NO_TRAINING)]


def _style_problems(config: Any) -> list[str]:
    """A rating style whose prompt alone is longer than the local judge reads."""
    style_name, judge = getattr(config, "judge_style", None), getattr(config, "judge", None)
    if style_name is None or judge is None or judge.startswith(API) or getattr(config, "pairs_from", None):
        return []
    from vlalign.feedback.vlfeedback import rubric_prompt
    from vlalign.plugins import RATING_STYLES

    if style_name not in RATING_STYLES:
        return []
    style = RATING_STYLES.get(style_name)
    context = context_length(judge)
    if context is None:
        return []
    tokens = token_count(judge, style.prompt("", "") if style.per_answer else rubric_prompt("", ["", ""]))
    if tokens < context:
        return []
    others = [n for n, s in RATING_STYLES.items() if s.per_answer]
    return [f"judge_style: {style_name}'s request is {tokens} tokens before the image and the answers, but the "
            f"judge {judge} reads at most {context} (max_position_embeddings in its config.json), so it cannot "
            f"read it; use a judge with a longer context"
            + (f", or a per-answer style it was trained for ({', '.join(others)})" if others else "")]


def problems(config: Any) -> list[str]:
    """Everything wrong with a parsed config that can be found without torch (see the module notes)."""
    return [*config.problems(), *_model_problems(config), *_path_problems(config), *_quantization_problems(config),
            *_style_problems(config)]


# ---- the trial, with the feedback models the run uses ----

@dataclass(frozen=True)
class TrialPrompt:
    id: str
    image: Any  # a PIL image
    instruction: str
    answer: str  # the reference answer, or a stock one


def policy_processor(config: Any):
    """The policy's processor under the run's runtime, without its weights (what a prompt source that renders
    images sizes them for)."""
    from vlalign.models.paths import model_dir
    from vlalign.models.processors import configure, load_processor

    return configure(load_processor(model_dir(config.policy), config.runtime.trust_remote_code), config.runtime)


def first_prompts(prompts: Any, n: int = TRIAL_PROMPTS) -> list[TrialPrompt]:
    """The first `n` prompts of the run's first round (its prompt stage), with their images."""
    from vlalign.data.records import PromptRecord

    records = [PromptRecord.from_row(row) for row in prompts.rows()[:n]]
    return [TrialPrompt(p.id, prompts.images.get(p.image), p.instruction, p.reference or STOCK_ANSWER)
            for p in records]


def _local(spec: str | None) -> bool:
    return spec is not None and not spec.startswith(API)


def _rating_trial(config: Any, models: Any, prompts: list[TrialPrompt]) -> str | None:
    """Why the judge's ratings of the trial answers cannot be read (None when at least one can)."""
    from vlalign.feedback.judge import decoded
    from vlalign.feedback.vlfeedback import RatingJudge

    answers = [p.answer for p in prompts]
    with models.chat(config.judge, getattr(config, "judge_runtime", None)) as chat:
        judge = RatingJudge(decoded(chat, getattr(config, "judge_decoding", None)), style=config.judge_style)
        rated = judge.rate([(p.id, p.image, p.instruction, [p.answer, answers[(i + 1) % len(answers)]])
                            for i, p in enumerate(prompts)])
    flat = [r for rs in rated for r in rs]
    usable = [r for r in flat if not r.reasons]
    if usable:
        if len(usable) < len(flat):
            warn(f"pre-flight: the judge {config.judge} rated {len(usable)} of {len(flat)} trial answers in full "
                 f"(judge_style {config.judge_style}); the others: {next(r.error for r in flat if r.reasons)}")
        return None
    return (f"the judge {config.judge} gave no usable rating for any of the {len(flat)} answers to the first "
            f"{len(prompts)} prompt(s) of {config.prompts.source} (judge_style {config.judge_style}): "
            f"{flat[0].error}. Fix: a judge_style the judge was trained for, a judge that follows it, or a longer "
            f"reply (judge_decoding.max_tokens) if the replies were cut")


def _splitter_trial(config: Any, models: Any, prompts: list[TrialPrompt]) -> str | None:
    """Why the llm splitter's judge gives no claims for the trial answers."""
    from vlalign.feedback.claims import split_each
    from vlalign.feedback.judge import decoded
    from vlalign.feedback.splitters import make_splitter

    with models.chat(config.judge, config.judge_runtime) as chat:
        split = make_splitter(config.splitter, decoded(chat, config.judge_decoding))
        outcomes = split_each(split, [p.answer for p in prompts], [p.instruction for p in prompts],
                              keys=[p.id for p in prompts])
    errors = [o for o in outcomes if isinstance(o, Exception)]
    if 2 * len(errors) < len(outcomes):  # a splitter that fails half its trials fails most of a round
        if errors:
            warn(f"pre-flight: the claim splitter's judge {config.judge} split {len(outcomes) - len(errors)} of "
                 f"{len(outcomes)} trial answers; the others: {errors[0]}")
        return None
    return (f"the claim splitter's judge {config.judge} gave no list of claims for {len(errors)} of the "
            f"{len(outcomes)} trial answers (the first {len(prompts)} prompt(s)' answers): {errors[0]}. Fix: a judge "
            f"that follows the claim prompt, another splitter, or a longer reply (judge_decoding.max_tokens)")


def _labeler_trial(config: Any, models: Any, prompts: list[TrialPrompt]) -> str | None:
    """Why the labeler cannot give P(yes) for a question about the trial images."""
    import math

    from vlalign.models.scoring import yes_probability

    question = "Is there an object in the image?"
    try:
        with models.using(config.labeler, config.labeler_runtime) as (model, processor):
            p = yes_probability(model, processor, [x.image for x in prompts], [question] * len(prompts))
    except (ValueError, RuntimeError, KeyError, IndexError) as e:
        return f"the labeler {config.labeler} cannot answer a yes/no question about the run's images: {e}"
    if not all(math.isfinite(v) for v in p):
        return f"the labeler {config.labeler} gives no finite P(yes) about the run's images ({p})"
    return None


def _injection_trial(config: Any, models: Any, prompts: list[TrialPrompt]) -> str | None:
    """Why the llm injector's judge changes none of the trial references."""
    from vlalign.feedback.injection import LLMInjector
    from vlalign.feedback.judge import decoded

    with models.chat(config.judge) as chat:
        injector = LLMInjector(decoded(chat, config.judge_decoding), edits=config.edits)
        out = injector.inject_many([p.instruction for p in prompts], [p.answer for p in prompts],
                                   [p.id for p in prompts])
    if any(x is not None for x in out):
        return None
    return (f"the injector's judge {config.judge} returned none of the first {len(prompts)} reference answers "
            f"changed (or its requests failed); it cannot inject hallucinations. Fix: another judge, or "
            f"injector: rules")


def trials(config: Any) -> list[tuple[str, Any]]:
    """(what is tried, the trial) for every local feedback model the config uses."""
    if getattr(config, "pairs_from", None):
        return []
    out = []
    if getattr(config, "judge_style", None) is not None and _local(config.judge):
        out.append((f"judge {config.judge}", _rating_trial))
    if getattr(config, "splitter", None) == "llm" and _local(getattr(config, "judge", None)) \
            and hasattr(config, "labeler"):
        out.append((f"claim splitter's judge {config.judge}", _splitter_trial))
    if _local(getattr(config, "labeler", None)) and config.labeler != "self":
        out.append((f"labeler {config.labeler}", _labeler_trial))
    if getattr(config, "injector", None) == "llm" and _local(config.judge):
        out.append((f"injector's judge {config.judge}", _injection_trial))
    return out


def trial(config: Any, models: Any, prompts: Any) -> None:
    """Ask every local feedback model the run uses about the first prompts of its first round (`prompts`, the
    round's prompt stage); `Refused` naming each that gave nothing usable."""
    checks = trials(config)
    if not checks:
        return
    picked = first_prompts(prompts)
    if not picked:
        raise Refused(f"pre-flight: {config.prompts.source} gave no usable prompt; fix its records (each needs an "
                      f"image that opens and an instruction)")
    failed = []
    for what, check in checks:
        log(f"pre-flight: the {what} answers {len(picked)} prompt(s) of {config.prompts.source}")
        problem = check(config, models, picked)
        if problem is not None:
            failed.append(problem)
    if failed:
        raise Refused("pre-flight refused the run before its first stage:\n" + "\n".join(f"  - {p}" for p in failed))


# ---- a refused start leaves nothing behind ----

@contextmanager
def nothing_left(out: str | Path) -> Iterator[None]:
    """A start refused inside (`Refused`, or an API backend that cannot be used: `JudgeUnavailable`) removes
    what it made in `out`: the folder itself when it made it, else the entries it added. Any other failure
    keeps everything (it may hold finished work)."""
    from vlalign.feedback.judge import JudgeUnavailable

    out = Path(out)
    before = set(out.iterdir()) if out.exists() else None
    try:
        yield
    except (Refused, JudgeUnavailable):
        if ranks.is_main():
            if before is None:
                shutil.rmtree(out, ignore_errors=True)
            else:
                for entry in set(out.iterdir()) - before:
                    shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
        raise
