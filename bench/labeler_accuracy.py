"""How well does a labeler judge a policy's claims? Claim-level accuracy against the world's scene graph.

    python bench/labeler_accuracy.py --policy world:base --labeler world:labeler --prompts 200

Samples answers from the policy on held-out scenes, splits them into claims (RLAIF-V's divide step),
scores every claim with the labeler's P(yes), and compares with the truth. RLAIF-V's feedback is only as
good as this number, so it is the first thing to check when alignment does not lower hallucination. The
same figures, with their intervals, as `vlalign eval world-labeler` (`vlalign.world.feedback_eval`).
"""

from __future__ import annotations

import argparse

from vlalign.console import figure
from vlalign.evaluate.benchmarks import EvalInputs
from vlalign.evaluate.feedback import Feedback
from vlalign.models.load import load
from vlalign.world.feedback_eval import labeler_records, labeler_result
from vlalign.world.scene import EVAL_SPLITS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", default="world:base")
    ap.add_argument("--labeler", default="world:labeler")
    ap.add_argument("--prompts", type=int, default=200)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--split", choices=EVAL_SPLITS, default="test", help="test (report) or dev (tune)")
    args = ap.parse_args()
    feedback = Feedback(labeler=load(args.labeler, dtype="fp32"), labeler_name=args.labeler, splitter="world",
                        policy=args.policy)
    m = labeler_result(labeler_records(feedback, EvalInputs(limit=args.prompts, split=args.split), args.samples)).metrics
    print(f"claims {m['claims']}  true {figure(m, 'true_share')}  labeler accuracy {figure(m, 'accuracy')}  "
          f"AUC {figure(m, 'auc')}  mean P(yes) true {figure(m, 'mean_p_yes_true')} false "
          f"{figure(m, 'mean_p_yes_false')}")


if __name__ == "__main__":
    main()
