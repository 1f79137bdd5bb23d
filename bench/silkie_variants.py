"""Which part of a Silkie run's pairs costs object recall? Retrains the run's DPO on subsets of its pairs,
and with other loss settings, and scores each model's greedy descriptions of held-out scenes.

    python bench/silkie_variants.py runs/demo/silkie [--scenes 300] [--variants as-run,no-anchor,...]

Every variant starts from the run's policy and uses the run's DPO recipe unless it says otherwise, so the
rows differ from each other in one thing. Recall is also shown grounded (named with the right colour) and
for shapes whose co-occurrence partner is present or not (`chair_metrics`). About a minute per variant on
2 CPU cores for the demo's run.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from vlalign.config import from_dict
from vlalign.data.records import PairRecord, PromptRecord
from vlalign.data.store import Stage
from vlalign.methods.silkie import SilkieConfig
from vlalign.models.load import load
from vlalign.stages.pairs import preference_examples
from vlalign.train.fit import fit
from vlalign.train.settings import TrainConfig
from vlalign.world.claims import WorldClaims
from vlalign.world.metrics import chair_metrics, describe_held_out
from vlalign.world.scene import EVAL_SPLITS

POLICY = ("world:base", "world:base@t1.0")  # the pool members that are the policy itself
_claims = WorldClaims()


def _describe(p: PairRecord, source: dict[str, str]) -> bool:
    return source[p.prompt_id].endswith("/describe")


def _claim_balanced(p: PairRecord, source: dict[str, str]) -> bool:
    return not _describe(p, source) or len(_claims(p.chosen)) >= len(_claims(p.rejected))


def _same(t: TrainConfig) -> TrainConfig:
    return t


def _without(term: str) -> Callable[[TrainConfig], TrainConfig]:
    return lambda t: replace(t, loss={k: w for k, w in t.loss.items() if k != term})


# name -> (which pairs to keep, how the training recipe changes)
VARIANTS: dict[str, tuple[Callable[[PairRecord, dict], bool], Callable[[TrainConfig], TrainConfig]]] = {
    "as-run": (lambda p, s: True, _same),
    "no-anchor": (lambda p, s: True, _without("anchor")),
    "describe-only": (_describe, _same),
    "claim-balanced-descriptions": (_claim_balanced, _same),
    "without-small": (lambda p, s: "world:small" not in (p.meta["chosen_model"], p.meta["rejected_model"]), _same),
    "policy-vs-policy": (lambda p, s: p.meta["chosen_model"] in POLICY and p.meta["rejected_model"] in POLICY, _same),
    "nll-3": (lambda p, s: True, lambda t: replace(t, loss={**t.loss, "nll": 3.0})),
    "lr-2e-5": (lambda p, s: True, lambda t: replace(t, optim=replace(t.optim, lr=2e-5))),
}


def _row(m: dict) -> str:
    return (f"{m['chair_i']:.3f}    {m['chair_s']:.3f}    {m['object_recall']:.3f}   {m['grounded_recall']:.3f}     "
            f"{m['partner_recall']:.3f}    {m['lone_recall']:.3f}  {m['mean_words']:5.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a finished Silkie run directory (vlalign run silkie --out, or DEMO/silkie)")
    ap.add_argument("--scenes", type=int, default=300, help="held-out scenes to describe")
    ap.add_argument("--split", choices=EVAL_SPLITS, default="test", help="test (report) or dev (tune)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    args = ap.parse_args()
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    config = from_dict(SilkieConfig, json.loads((Path(args.run) / "summary.json").read_text())["config"])
    source = {p.id: p.source for p in map(PromptRecord.from_row, Stage(f"{args.run}/round1/prompts").rows())}
    records = [PairRecord.from_row(r) for r in Stage(f"{args.run}/round1/pairs").rows()]
    examples = preference_examples(Stage(f"{args.run}/round1/pairs"))

    policy, processor = load(config.policy, config.runtime)
    held_out, _, answers = describe_held_out(policy, processor, args.scenes, split=args.split)
    base = chair_metrics(held_out, answers)
    print(f"{'variant':30s} {'pairs':>5s}  CHAIR_i  CHAIR_s  recall  grounded  partner  lone   words  seconds")
    print(f"{'policy (no training)':30s} {0:5d}  {_row(base)}")
    for name in names:
        keep, change = VARIANTS[name]
        start = time.time()
        chosen = [e for e, p in zip(examples, records, strict=True) if keep(p, source)]
        model, _ = fit(load(config.policy, config.runtime)[0], processor, chosen, change(config.train))
        m = chair_metrics(held_out, describe_held_out(model, processor, args.scenes, split=args.split)[2])
        print(f"{name:30s} {len(chosen):5d}  {_row(m)}  {time.time() - start:5.0f}", flush=True)


if __name__ == "__main__":
    main()
