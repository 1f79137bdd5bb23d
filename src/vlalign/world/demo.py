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
from vlalign.console import console
from vlalign.plugins import METHODS
from vlalign.progress import log, scope, warn
from vlalign.recipes import get as recipe_named

if TYPE_CHECKING:
    from PIL import Image

KEYS = ("chair_s", "chair_i", "chair_i_unique", "object_recall", "grounded_recall", "partner_recall", "lone_recall",
        "mean_words", "pope_f1", "pope_accuracy", "pope_yes_ratio", "pope_adversarial_f1", "color_accuracy",
        "count_accuracy", "refusal_rate", "over_refusal")


@dataclass(frozen=True)
class Size:
    """How large the demo is: the held-out scenes every model is evaluated on, and best-of-N's n and scenes."""

    name: str
    scenes: int
    best_of: int
    best_of_scenes: int
    about: str


QUICK = Size("quick", 150, 4, 100, "every path on small data, for tests: too small to judge the methods by")
STANDARD = Size("standard", 500, 4, 200, "every DPO-family method at a size that shows its effect beyond the 95% "
                                         "intervals")
FULL = Size("full", 1000, 8, 1000, "every recipe as it ships: the README's Results")
SIZES = {s.name: s for s in (QUICK, STANDARD, FULL)}


@dataclass(frozen=True)
class Recipe:
    """One row group of the demo: a shipped recipe (which names its method) and what the smaller demos change."""

    label: str
    recipe: str
    quick: tuple[str, ...] = ()
    standard: tuple[str, ...] = ()  # the default demo's overrides (the full demo runs the recipe as it ships)
    pairs_of: str | None = None  # train on this recipe's round-1 pairs instead of making pairs
    start_from: str | None = None  # align this recipe's final policy instead of the demo's policy
    start_round: int | None = None  # ... its policy after this round instead of its final one
    sizes: tuple[Size, ...] = (QUICK, STANDARD, FULL)  # the demos it is part of

    @property
    def method(self) -> str:
        return recipe_named(self.recipe).method

    def overrides(self, out: Path, size: Size, policy: str, labeler: str, split: str) -> list[str]:
        config = load_config(METHODS.get(self.method).config, recipe_named(self.recipe).path)
        extra = [f"policy={policy}", "eval_base=false", "report=false",  # one report of every method at the end
                 f"eval=[{{name: world, limit: {size.scenes}, split: {split}}}]"]
        if getattr(config, "labeler", "self") not in ("self", None):
            extra.append(f"labeler={labeler}")
        if self.pairs_of:
            extra.append(f"pairs_from={out / self.pairs_of / 'round1' / 'pairs'}")
        return [*extra, *{QUICK: self.quick, STANDARD: self.standard}.get(size, ())]


# The default demo's sizes: fewer prompts than the recipes, batches of 256 (a world model's sampling step costs
# about the same for 256 rows as for 64); POVID's small rounds train at RLAIF-V's learning rate.
FAST = ("batch_size=256",)
# GRPO's small sizes: a few short rollouts. The default demo's was chosen on 500 dev scenes, a minute and a half on
# 2 cores (the README gives its dev figures); the variants that start from the policy or from RLAIF-V run in the
# quick demo (every path) and the full one.
GRPO_QUICK = ("rounds=3", "prompts.per_round=32", "samples=6", "eval_every=3")
GRPO_STANDARD = (*FAST, "rounds=4", "prompts.per_round=48", "samples=6", "eval_every=4")
RECIPES: tuple[Recipe, ...] = (
    Recipe("rlaif_v", "rlaif_v_world", ("rounds=1", "prompts.per_round=120", "samples=6"),
           (*FAST, "rounds=1", "prompts.per_round=240", "samples=6")),
    Recipe("rlaif_v_self", "rlaif_v_self_world", ("prompts.per_round=120", "samples=6"),
           (*FAST, "prompts.per_round=160", "samples=6", "eval_every=2")),
    Recipe("silkie", "silkie_world", ("prompts.per_round=120", "baseline=false"),
           (*FAST, "prompts.per_round=240", "baseline=false")),
    Recipe("povid", "povid_world", ("prompts.per_round=120",),
           (*FAST, "prompts.per_round=320", "train.optim.lr=1.0e-4", "stage2.optim.lr=1.0e-4")),
    Recipe("mdpo", "mdpo_world", pairs_of="rlaif_v"),
    Recipe("mpo", "mpo_world", pairs_of="rlaif_v"),
    Recipe("povid_rlaif_v", "povid_rlaif_v_world", ("rounds=1", "prompts.per_round=120", "samples=6"),
           (*FAST, "rounds=1", "prompts.per_round=200", "samples=6"), start_from="povid"),
    Recipe("grpo", "grpo_world", GRPO_QUICK, GRPO_STANDARD),
    Recipe("grpo_self", "grpo_self_world", GRPO_QUICK, sizes=(QUICK, FULL)),
    Recipe("grpo_rlaif_v", "grpo_rlaif_v_world", GRPO_QUICK, start_from="rlaif_v", start_round=1, sizes=(QUICK, FULL)),
)


def recipes(size: Size | None = None) -> list[Recipe]:
    """The demo's recipes in order (one that starts from another's policy comes after it): all of them, or those
    of the demo of `size`."""
    return [r for r in RECIPES if size is None or size in r.sizes]


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


def evaluate_base(policy: str, n_scenes: int, split: str, folder: Path) -> dict:
    """The base's world metrics on `n_scenes` scenes of `split`; its per-scene outcomes go to `folder`
    (`world.outcomes.json`, and its descriptions' CHAIR alone in `world-chair.outcomes.json`) so that every
    method's evaluation, and best-of-N's, is compared with it scene by scene."""
    from vlalign.evaluate.intervals import write_outcomes
    from vlalign.models.load import load
    from vlalign.world.metrics import chair_outcomes, world_result

    result, held_out, answers = world_result(*load(policy, dtype="fp32"), n_scenes=n_scenes, split=split)

    def keep() -> None:
        write_outcomes(folder / "world.outcomes.json", result.outcomes)
        write_outcomes(folder / "world-chair.outcomes.json", chair_outcomes(held_out, answers))

    ranks.on_main(keep)
    return dict(result.metrics)


def with_base(run_dir: Path, folder: Path) -> None:
    """Give a method's run directory the outcomes of the demo's base (evaluated once for all) as its own
    base's, so every round's evaluation is compared with it scene by scene (`vs_base`). Its metrics stay in
    the demo's summary, which the report reads for each run."""
    import shutil

    def put() -> None:
        (run_dir / "base").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder / "world.outcomes.json", run_dir / "base" / "world.outcomes.json")

    ranks.on_main(put)


def best_of_n_chair(policy_dir: str, reference: str, n: int, n_scenes: int, temperature: float, split: str,
                    base: Path | None = None) -> dict:
    """CHAIR of the best of n samples by the implicit reward, with intervals, and (given the base's CHAIR
    outcomes `base`) compared with the base's greedy descriptions scene by scene. The reference is the model
    alignment started from, so after several rounds the reward sums every round's: beta * log(pi_K / pi_0)."""
    from vlalign.evaluate.intervals import compare, read_outcomes, summarize
    from vlalign.models.best_of_n import best_of_n
    from vlalign.models.load import load
    from vlalign.models.settings import Decoding
    from vlalign.world.metrics import DESCRIBE, chair_outcomes, held_out_scenes
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
    outcomes = chair_outcomes(held_out, [r.text for r in ranked])
    out = {"n": n, "scenes": n_scenes, "split": split, "temperature": temperature, **summarize(outcomes)}
    if base is not None and base.is_file():
        out["vs_base"] = {k: d.to_json() for k, d in compare(read_outcomes(base), outcomes).items()}
    return out


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


def run_demo(out: Path, size: Size = STANDARD, policy: str = "world:base", labeler: str = "world:labeler",
             split: str = "test") -> dict:
    """Every recipe on the world at `size`, each evaluated on the held-out scenes of `split` (test for the
    numbers to report, dev for choosing recipes) and compared with the base scene by scene, and the summary
    of all of them."""
    from vlalign.models.best_of_n import TEMPERATURE
    from vlalign.report import try_report
    from vlalign.runner import read_json, run, write_json

    start = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    skipped = not_in_demo()
    if skipped:
        warn(f"the demo runs the methods with a world recipe; not {', '.join(skipped)} (add a Recipe to "
             f"vlalign.world.demo.RECIPES to run one)")
    left_out = [r.label for r in RECIPES if size not in r.sizes]
    if left_out:
        log(f"not in the {size.name} demo: {', '.join(left_out)} (`vlalign demo --full` runs them)")
    scenes = size.scenes
    base_folder = out / "eval" / f"base-{split}-{scenes}"
    with scope("demo"):
        log(f"evaluating the base on {scenes} {split} scenes")
        base = cached(base_folder / "world.json", lambda: evaluate_base(policy, scenes, split, base_folder))
        summary: dict = {"base": pick(base), "method_seconds": {}}
        finals: dict[str, str] = {}
        for recipe in recipes(size):
            began = time.time()
            method = METHODS.get(recipe.method)
            aligned = (str(out / recipe.start_from / f"round{recipe.start_round}" / "policy") if recipe.start_round
                       else finals[recipe.start_from] if recipe.start_from else policy)
            config = load_config(method.config, recipe_named(recipe.recipe).path,
                                 recipe.overrides(out, size, aligned, labeler, split))
            after = f" after round {recipe.start_round}" if recipe.start_round else ""
            log(f"{recipe.label}: {method.summary}" + (f", from {recipe.start_from}'s policy{after}" if recipe.start_from else ""))
            with_base(out / recipe.label, base_folder)
            result = run(method, config, out / recipe.label)
            finals[recipe.label] = result["final"]
            summary.update(_rows(recipe.label, result))
            if recipe.label == "rlaif_v":
                log(f"best-of-{size.best_of} with the implicit reward")
                summary["rlaif_v_best_of_n"] = cached(
                    out / "eval" / f"best_of_n-{split}-{size.best_of}x{size.best_of_scenes}.json",
                    lambda r=result: best_of_n_chair(r["final"], policy, size.best_of, size.best_of_scenes,
                                                     TEMPERATURE, split, base_folder / "world-chair.outcomes.json"))
                if len(result["rounds"]) > 1:  # the round mDPO and MPO train on, when it is not the final one
                    summary["rlaif_v_round1"] = _world(result["rounds"][0])
            summary["method_seconds"][recipe.label] = round(time.time() - began, 1)
    earlier = ranks.on_main(lambda: read_json(out / "summary.json")) or {}
    for label, seconds in earlier.get("method_seconds", {}).items():  # a resumed demo adds its own time
        summary["method_seconds"][label] = round(summary["method_seconds"].get(label, 0.0) + seconds, 1)
    summary.update(eval_scenes=scenes, split=split, size=size.name,
                   seconds=round(earlier.get("seconds", 0.0) + time.time() - start, 1))
    ranks.on_main(lambda: (write_json(out / "summary.json", summary), try_report(out)))
    return summary


def print_demo(summary: dict) -> None:
    from rich.columns import Columns

    from vlalign.console import duration, legend, versus_table
    from vlalign.glossary import glossary, table_keys

    names = glossary(["world"])
    rows = {k: v for k, v in summary.items() if isinstance(v, dict) and "chair_i" in v and k != "base"}
    keys = table_keys(summary["base"])
    title = (f"demo ({summary.get('size', '?')}): every method against the base, on {summary['eval_scenes']} "
             f"held-out {summary['split']} scenes")
    console.print(versus_table(title, summary.get("base"), rows, keys, names))
    console.print(legend(keys, names), highlight=False)
    console.print(f"The demo took {duration(summary['seconds'])}; each method's run, best-of-N in RLAIF-V's:",
                  highlight=False)
    console.print(Columns([f"{k} {duration(v)}" for k, v in summary.get("method_seconds", {}).items()], padding=(0, 3)),
                  highlight=False)
