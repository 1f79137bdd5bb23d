"""A configured list of benchmarks run on one model: what a run's `eval:` asks for after every round.

Each entry is a registered benchmark with its data files. A benchmark that evaluates a model in one go
(`Benchmark.run`, the world's) does so; the others have the model answer their questions greedily, write
the answers next to the results, and score them as `vlalign score` does. Under a launcher every process
answers its share of the questions; the main process writes the answers and scores them (a judge is asked
once), and every process gets the metrics.

Every figure carries its 95% interval, and the per-item outcomes are written beside the answers
(`<name>.outcomes.json`). A round's evaluation inside a run directory is also compared with the base's,
item by item (`vs_base`: each figure's paired difference, its interval and p-values), when the run's
`base/` holds the base's outcomes of the same benchmark.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from vlalign import ranks
from vlalign.evaluate.benchmarks import EvalInputs, ScoreInputs, generate_answers, get
from vlalign.evaluate.intervals import Result, compare, read_outcomes, write_outcomes
from vlalign.progress import log, warn


def image_size(processor) -> int | None:
    """The fixed image side of a processor, when it has one (world models do)."""
    crop = getattr(getattr(processor, "image_processor", None), "crop_size", None)
    try:
        return crop["height"] if crop is not None else None
    except (KeyError, TypeError):  # a processor without a fixed side
        return None


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


Judges = Callable[[str], AbstractContextManager[Any]]  # spec -> a judge held while the block runs (`Models.chat`)


def evaluate_one(model, processor, spec: Any, out_dir: Path, judge: Judges | None = None, seed: int = 0) -> dict:
    """One `EvalSpec`'s metrics for `model`; free-form answers are written to `out_dir/<name>.answers.jsonl`
    and scored, by `judge(spec.judge)` where the benchmark is judged; the outcomes go to
    `out_dir/<name>.outcomes.json`."""
    bench = get(spec.name)
    inputs = EvalInputs(_path(spec.data), tuple(Path(a) for a in spec.annotations), _path(spec.images), spec.limit,
                        image_size(processor), seed, spec.split)
    if bench.run is not None:
        result = bench.run(model, processor, inputs)
    else:
        records = generate_answers(model, processor, bench.questions(inputs), bench, spec.batch_size)
        held = judge(spec.judge) if spec.judge and judge is not None else nullcontext(None)
        result = ranks.on_main(lambda: _score(bench, records, out_dir / f"{spec.name}.answers.jsonl", inputs, held))
    return ranks.on_main(lambda: _keep(result, out_dir, spec.name))


def _score(bench, records: list[dict], answers: Path, inputs: EvalInputs, held: AbstractContextManager[Any]) -> Result:
    """Write the answer file and score it (with the judge `held`, loaded only now)."""
    answers.parent.mkdir(parents=True, exist_ok=True)
    answers.write_text("".join(json.dumps(r) + "\n" for r in records))
    with held as judge:
        return bench.score(ScoreInputs(answers, inputs.annotations, judge))


def _keep(result: Result, out_dir: Path, name: str) -> dict:
    """Write the outcomes beside the answers and add the paired comparison with the run's base."""
    if result.outcomes is None:
        return result.metrics
    path = out_dir / f"{name}.outcomes.json"
    write_outcomes(path, result.outcomes)
    base = base_outcomes(out_dir, name)
    if base is None:
        return result.metrics
    try:
        differences = compare(read_outcomes(base), result.outcomes)
    except ValueError as e:  # another benchmark's items: no pairing, said so
        warn(f"{name}: not compared with the base ({e})")
        return result.metrics
    return {**result.metrics, "vs_base": {k: d.to_json() for k, d in differences.items()}}


def base_outcomes(out_dir: Path, name: str) -> Path | None:
    """The outcomes of the base's `name` in the run directory that holds `out_dir` (a round's eval folder),
    or None (`out_dir` is the base's own folder, or no base was evaluated)."""
    for root in Path(out_dir).resolve().parents:
        base = root / "base"
        if (root / "run.json").is_file():
            found = base / f"{name}.outcomes.json"
            return found if found.is_file() and base != Path(out_dir).resolve() else None
    return None


def run_suite(model, processor, specs: Sequence[Any], out_dir: Path, judge: Judges | None = None,
              seed: int = 0) -> dict[str, dict]:
    """Every spec's metrics, by benchmark name."""
    results = {}
    for spec in specs:
        log(f"evaluating on {spec.name}")
        results[spec.name] = evaluate_one(model, processor, spec, out_dir, judge, seed)
    return results
