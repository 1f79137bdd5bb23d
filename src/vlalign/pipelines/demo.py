"""The demo on the embedded world: evaluate the shipped base, align it with each method, summarise.

Feedback comes from models (a labeler, the policy itself, a judge), never from the scene graph; the scene
graph only grades, and serves as POVID's ground-truth answers.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from vlalign.evaluate.world import evaluate_world
from vlalign.models.load import load
from vlalign.pipelines.rlaif_v import SELF, RLAIFVConfig, run_rlaif_v
from vlalign.progress import log
from vlalign.train.dpo import DPOConfig
from vlalign.train.loop import OptimConfig

SUMMARY_KEYS = ("chair_s", "chair_i", "chair_i_unique", "object_recall", "mean_words", "pope_f1",
                "pope_accuracy", "pope_yes_ratio", "pope_adversarial_f1", "color_accuracy", "count_accuracy")


def _rlaif_v(rounds: int, prompts: int, samples: int, eval_scenes: int, labeler: str = "world:labeler") -> RLAIFVConfig:
    return RLAIFVConfig(
        labeler=labeler, rounds=rounds, prompts_per_round=prompts, samples=samples, eval_scenes=eval_scenes,
        dpo=DPOConfig(beta=0.3, batch_size=16, epochs=2, optim=OptimConfig(lr=1e-4, warmup_ratio=0.1)))


@dataclass
class DemoConfig:
    policy: str = "world:base"
    labeler: str = "world:labeler"
    eval_scenes: int = 500
    rlaif_v: RLAIFVConfig = field(default_factory=lambda: _rlaif_v(rounds=3, prompts=300, samples=8, eval_scenes=500))
    rlaif_v_self: RLAIFVConfig = field(
        default_factory=lambda: _rlaif_v(rounds=3, prompts=300, samples=8, eval_scenes=500, labeler=SELF))


FULL = DemoConfig()
QUICK = DemoConfig(eval_scenes=200, rlaif_v=_rlaif_v(rounds=1, prompts=200, samples=6, eval_scenes=200),
                   rlaif_v_self=_rlaif_v(rounds=1, prompts=200, samples=6, eval_scenes=200, labeler=SELF))


def cached_eval(path: Path, model, processor, n_scenes: int) -> dict:
    """World metrics for `model`, computed once per run directory."""
    if path.exists():
        return json.loads(path.read_text())
    metrics = evaluate_world(model, processor, n_scenes=n_scenes)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=1))
    return metrics


def _method_summary(result: dict) -> dict:
    """The last round's metrics, with every round's metrics and statistics under `rounds`."""
    rounds = result["rounds"]
    return {**{k: rounds[-1]["metrics"][k] for k in SUMMARY_KEYS},
            "rounds": [{"round": r["round"], "pairs": r["pairs"], "mean_score": r["mean_score"],
                        **{k: r["metrics"][k] for k in SUMMARY_KEYS}} for r in rounds],
            "seconds": result["seconds"]}


def run_demo(out: Path, quick: bool = False, config: DemoConfig | None = None) -> dict:
    start = time.time()
    config = config or (QUICK if quick else FULL)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    policy, processor = load(config.policy, dtype="float32")
    log("evaluating the base")
    base = cached_eval(out / "eval" / "base.json", policy, processor, config.eval_scenes)
    summary: dict = {"base": {k: base[k] for k in SUMMARY_KEYS}}
    for name, method in (("rlaif_v", replace(config.rlaif_v, policy=config.policy, labeler=config.labeler)),
                         ("rlaif_v_self", replace(config.rlaif_v_self, policy=config.policy))):
        log(f"{name}: labeler {method.labeler}")
        summary[name] = _method_summary(run_rlaif_v(out / name, method))
    summary.update(eval_scenes=config.eval_scenes, quick=quick, seconds=round(time.time() - start, 1))
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
