"""The demo on the embedded world: every registered method from its shipped recipe, and one summary.

Each method runs exactly its shipped world recipe (`vlalign recipes`; the quick demo adds the overrides
below, to make it small), in its own folder of the demo directory, through the same runner as `vlalign run`; a stopped demo
continues where it stopped. The base is evaluated once. mDPO and MPO train on RLAIF-V's round-1 pairs
(`pairs_from`), so each compares with RLAIF-V's first round, which is DPO on the same pairs. Feedback
comes from models (a labeler, the policy itself, a judge), never from the scene graph; the scene graph
only grades, and serves as POVID's ground-truth answers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vlalign import ranks
from vlalign.config import load_config
from vlalign.console import console, models_table
from vlalign.plugins import METHODS
from vlalign.progress import log, scope, warn
from vlalign.recipes import get as recipe_named

if TYPE_CHECKING:
    from PIL import Image

KEYS = ("chair_s", "chair_i", "chair_i_unique", "object_recall", "grounded_recall", "partner_recall", "lone_recall",
        "mean_words", "pope_f1", "pope_accuracy", "pope_yes_ratio", "pope_adversarial_f1", "color_accuracy",
        "count_accuracy", "refusal_rate", "over_refusal")
SCENES, QUICK_SCENES = 1000, 150
BEST_OF = 8
BEST_OF_QUICK = 4


@dataclass(frozen=True)
class Recipe:
    """One row group of the demo: a shipped recipe (which names its method) and what the quick demo changes."""

    label: str
    recipe: str
    quick: tuple[str, ...] = ()
    pairs_of: str | None = None  # train on this recipe's round-1 pairs instead of making pairs
    start_from: str | None = None  # align this recipe's final policy instead of the demo's policy

    @property
    def method(self) -> str:
        return recipe_named(self.recipe).method

    def overrides(self, out: Path, quick: bool, policy: str, labeler: str, split: str) -> list[str]:
        config = load_config(METHODS.get(self.method).config, recipe_named(self.recipe).path)
        scenes = QUICK_SCENES if quick else SCENES
        extra = [f"policy={policy}", "eval_base=false", "report=false",  # one report of every method at the end
                 f"eval=[{{name: world, limit: {scenes}, split: {split}}}]"]
        if getattr(config, "labeler", "self") not in ("self", None):
            extra.append(f"labeler={labeler}")
        if self.pairs_of:
            extra.append(f"pairs_from={out / self.pairs_of / 'round1' / 'pairs'}")
        return [*extra, *(self.quick if quick else ())]


RECIPES: tuple[Recipe, ...] = (
    Recipe("rlaif_v", "rlaif_v_world", ("rounds=1", "prompts.per_round=120", "samples=6")),
    Recipe("rlaif_v_self", "rlaif_v_self_world", ("prompts.per_round=120", "samples=6")),
    Recipe("silkie", "silkie_world", ("prompts.per_round=120", "baseline=false")),
    Recipe("povid", "povid_world", ("prompts.per_round=120",)),
    Recipe("mdpo", "mdpo_world", pairs_of="rlaif_v"),
    Recipe("mpo", "mpo_world", pairs_of="rlaif_v"),
    Recipe("povid_rlaif_v", "povid_rlaif_v_world", ("rounds=1", "prompts.per_round=120", "samples=6"),
           start_from="povid"),
)


def recipes() -> list[Recipe]:
    """The demo's recipes in order (one that starts from another's policy comes after it)."""
    return list(RECIPES)


def not_in_demo() -> list[str]:
    """Registered methods the demo does not run (a plugin's method without a world recipe here)."""
    return [m for m in METHODS.names() if not any(r.method == m for r in RECIPES)]


def pick(metrics: dict) -> dict:
    """The summary's figures, with their intervals and comparison with the base where the metrics carry them."""
    out = {k: metrics[k] for k in KEYS if k in metrics}
    for extra in ("intervals", "vs_base"):
        kept = {k: v for k, v in (metrics.get(extra) or {}).items() if k in out}
        if kept:
            out[extra] = kept
    return out


def _world(record: dict) -> dict:
    return pick((record.get("eval") or {}).get("world", {}))


def cached(path: Path, compute) -> dict:
    """`compute()`'s result, computed once per demo directory (again when its file was damaged). Under a
    launcher every process computes (the evaluation is split across them) and the main one writes."""
    from vlalign.runner import read_json, write_json

    result = ranks.on_main(lambda: read_json(path))
    if result is None:
        result = compute()
        ranks.on_main(lambda: write_json(path, result))
    return result


def best_of_n_chair(policy_dir: str, reference: str, n: int, n_scenes: int, temperature: float, split: str) -> dict:
    """CHAIR of the best of n samples by the implicit reward. The reference is the model alignment started
    from, so after several rounds the reward sums every round's: beta * log(pi_K / pi_0)."""
    from vlalign.models.best_of_n import best_of_n
    from vlalign.models.load import load
    from vlalign.models.settings import Decoding
    from vlalign.world.metrics import DESCRIBE, chair_metrics, held_out_scenes
    from vlalign.world.render import render

    policy, processor = load(policy_dir, dtype="fp32")
    ref, _ = load(reference, dtype="fp32")
    held_out = held_out_scenes(split, n_scenes)
    images = [render(s, processor.image_processor.crop_size["height"]) for s in held_out]
    decoding = Decoding(max_new_tokens=96, temperature=temperature)

    def share(part: list[tuple[int, Image.Image]]) -> list:  # a contiguous share: its first place names its seeds
        return best_of_n(policy, ref, processor, [im for _, im in part], [DESCRIBE] * len(part), n, decoding,
                         first=part[0][0]) if part else []

    ranked = ranks.spread(share, list(enumerate(images)))
    return {"n": n, "scenes": n_scenes, "split": split, "temperature": temperature, **chair_metrics(held_out, [r.text for r in ranked])}


def _rows(label: str, summary: dict) -> dict:
    """The demo summary's rows of one run: its final policy (rounds listed), and its other arms."""
    rounds = summary["rounds"]
    final = rounds[-1]
    if label == "povid":
        out = {"povid_stage1": _world(rounds[0])}
        if len(rounds) > 1:
            out["povid"] = _world(final)
        return out
    row = {**_world(final), "pairs": final["pairs"],
           "rounds": [{"round": r["round"], "pairs": r["pairs"], **_world(r)} for r in rounds]}
    out = {label: row}
    out.update({f"{label}_{arm}": {**_world(rec), "pairs": rec["pairs"]} for arm, rec in final["arms"].items()
                if arm != "policy"})
    return out


def run_demo(out: Path, quick: bool = False, policy: str = "world:base", labeler: str = "world:labeler",
             split: str = "test") -> dict:
    """Every recipe on the world, each evaluated on the held-out scenes of `split` (test for the numbers
    to report, dev for choosing recipes), and the summary of all of them."""
    from vlalign.models.best_of_n import TEMPERATURE
    from vlalign.models.load import load
    from vlalign.report import try_report
    from vlalign.runner import read_json, run, write_json
    from vlalign.world.metrics import evaluate_world

    start = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    skipped = not_in_demo()
    if skipped:
        warn(f"the demo runs the methods with a world recipe; not {', '.join(skipped)} (add a Recipe to "
             f"vlalign.world.demo.RECIPES to run one)")
    scenes = QUICK_SCENES if quick else SCENES
    with scope("demo"):
        log(f"evaluating the base on {scenes} {split} scenes")
        base = cached(out / "eval" / f"base-{split}.json",
                      lambda: evaluate_world(*load(policy, dtype="fp32"), n_scenes=scenes, split=split))
        summary: dict = {"base": pick(base), "method_seconds": {}}
        finals: dict[str, str] = {}
        for recipe in recipes():
            began = time.time()
            method = METHODS.get(recipe.method)
            aligned = finals[recipe.start_from] if recipe.start_from else policy
            config = load_config(method.config, recipe_named(recipe.recipe).path,
                                 recipe.overrides(out, quick, aligned, labeler, split))
            log(f"{recipe.label}: {method.summary}" + (f", from {recipe.start_from}'s policy" if recipe.start_from else ""))
            result = run(method, config, out / recipe.label)
            finals[recipe.label] = result["final"]
            summary.update(_rows(recipe.label, result))
            if recipe.label == "rlaif_v":
                n = BEST_OF_QUICK if quick else BEST_OF
                log(f"best-of-{n} with the implicit reward")
                summary["rlaif_v_best_of_n"] = cached(
                    out / "eval" / f"best_of_n-{split}.json",
                    lambda r=result, n=n: best_of_n_chair(r["final"], policy, n, 100 if quick else scenes, TEMPERATURE,
                                                          split))
                if len(result["rounds"]) > 1:  # the round mDPO and MPO train on, when it is not the final one
                    summary["rlaif_v_round1"] = _world(result["rounds"][0])
            summary["method_seconds"][recipe.label] = round(time.time() - began, 1)
    earlier = ranks.on_main(lambda: read_json(out / "summary.json")) or {}
    for label, seconds in earlier.get("method_seconds", {}).items():  # a resumed demo adds its own time
        summary["method_seconds"][label] = round(summary["method_seconds"].get(label, 0.0) + seconds, 1)
    summary.update(eval_scenes=scenes, split=split, quick=quick, seconds=round(earlier.get("seconds", 0.0) + time.time() - start, 1))
    ranks.on_main(lambda: (write_json(out / "summary.json", summary), try_report(out)))
    return summary


def print_demo(summary: dict) -> None:
    columns = {k: v for k, v in summary.items() if isinstance(v, dict) and "chair_i" in v}
    console.print(models_table(f"demo summary (world, {summary['eval_scenes']} held-out {summary['split']} scenes)",
                               columns))
    console.print(f"{summary['seconds']:.0f} s")
