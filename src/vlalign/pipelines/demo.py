"""The demo on the embedded world: evaluate the shipped base, align it, evaluate again, summarise.

Feedback comes from a labeler model, never from the scene graph; the scene graph only grades.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from vlalign.data.store import RunStore
from vlalign.evaluate.world import evaluate_world
from vlalign.models.load import load
from vlalign.pipelines.rlaif_v import RoundConfig, run_round
from vlalign.train.dpo import DPOConfig
from vlalign.train.loop import OptimConfig

SUMMARY_KEYS = ("chair_s", "chair_i", "chair_i_unique", "object_recall", "mean_words", "pope_f1",
                "pope_accuracy", "pope_yes_ratio", "pope_adversarial_f1", "color_accuracy", "count_accuracy")


@dataclass
class DemoConfig:
    policy: str = "world:base"
    labeler: str = "world:labeler"
    eval_scenes: int = 500
    rlaif_v: RoundConfig = field(default_factory=lambda: RoundConfig(
        prompts=500, samples=8,
        dpo=DPOConfig(beta=0.1, batch_size=16, epochs=2, optim=OptimConfig(lr=2e-4, warmup_ratio=0.1))))


FULL = DemoConfig()
QUICK = replace(FULL, eval_scenes=200, rlaif_v=replace(FULL.rlaif_v, prompts=200, samples=6))


def cached_eval(path: Path, model, processor, n_scenes: int) -> dict:
    """World metrics for `model`, computed once per run directory."""
    if path.exists():
        return json.loads(path.read_text())
    metrics = evaluate_world(model, processor, n_scenes=n_scenes)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=1))
    return metrics


def run_demo(out: Path, quick: bool = False, config: DemoConfig | None = None) -> dict:
    start = time.time()
    config = config or (QUICK if quick else FULL)
    out = Path(out)
    store = RunStore(out)
    policy, processor = load(config.policy, dtype="float32")
    labeler, labeler_processor = load(config.labeler, dtype="float32")
    base = cached_eval(out / "eval" / "base.json", policy, processor, config.eval_scenes)
    aligned, stats = run_round(store, "rlaif_v/round1", policy, processor, config.policy, labeler,
                               labeler_processor, config.labeler, config.rlaif_v)
    rlaif_v = cached_eval(out / "eval" / "rlaif_v.json", aligned, processor, config.eval_scenes)
    summary = {
        "base": {k: base[k] for k in SUMMARY_KEYS},
        "rlaif_v": {**{k: rlaif_v[k] for k in SUMMARY_KEYS}, "rounds": [stats]},
        "eval_scenes": config.eval_scenes,
        "quick": quick,
        "seconds": round(time.time() - start, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
