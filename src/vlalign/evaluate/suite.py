"""A configured list of benchmarks run on one model: what a run's `eval:` asks for after every round.

Each entry is a registered benchmark with its data files. A benchmark that evaluates a model in one go
(`Benchmark.run`, the world's) does so; the others have the model answer their questions greedily, write
the answers next to the results, and score them as `vlalign score` does. Under a launcher every process
answers its share of the questions; the main process writes the answers and scores them (a judge is asked
once), and every process gets the metrics.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from vlalign import ranks
from vlalign.evaluate.benchmarks import EvalInputs, ScoreInputs, generate_answers, get
from vlalign.progress import log


def image_size(processor) -> int | None:
    """The fixed image side of a processor, when it has one (world models do)."""
    crop = getattr(getattr(processor, "image_processor", None), "crop_size", None)
    return crop["height"] if isinstance(crop, dict) and "height" in crop else None


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


Judges = Callable[[str], AbstractContextManager[Any]]  # spec -> a judge held while the block runs (`Models.chat`)


def evaluate_one(model, processor, spec: Any, out_dir: Path, judge: Judges | None = None, seed: int = 0) -> dict:
    """One `EvalSpec`'s metrics for `model`; free-form answers are written to `out_dir/<name>.answers.jsonl`
    and scored, by `judge(spec.judge)` where the benchmark is judged."""
    bench = get(spec.name)
    inputs = EvalInputs(_path(spec.data), tuple(Path(a) for a in spec.annotations), _path(spec.images), spec.limit,
                        image_size(processor), seed, spec.split)
    if bench.run is not None:
        return bench.run(model, processor, inputs)
    records = generate_answers(model, processor, bench.questions(inputs), bench, spec.batch_size)
    held = judge(spec.judge) if spec.judge and judge is not None else nullcontext(None)
    return ranks.on_main(lambda: _score(bench, records, out_dir / f"{spec.name}.answers.jsonl", inputs, held))


def _score(bench, records: list[dict], answers: Path, inputs: EvalInputs, held: AbstractContextManager[Any]) -> dict:
    """Write the answer file and score it (with the judge `held`, loaded only now)."""
    answers.parent.mkdir(parents=True, exist_ok=True)
    answers.write_text("".join(json.dumps(r) + "\n" for r in records))
    with held as judge:
        return bench.score(ScoreInputs(answers, inputs.annotations, judge))


def run_suite(model, processor, specs: Sequence[Any], out_dir: Path, judge: Judges | None = None, seed: int = 0) -> dict[str, dict]:
    """Every spec's metrics, by benchmark name."""
    results = {}
    for spec in specs:
        log(f"evaluating on {spec.name}")
        results[spec.name] = evaluate_one(model, processor, spec, out_dir, judge, seed)
    return results
