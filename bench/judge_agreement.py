"""How well does the world judge rate answers? Its ratings against the ratings the scene graph implies.

    python bench/judge_agreement.py --judge world:judge --items 300

Draws held-out scenes with candidate answers of every quality (exact, hallucinating, incomplete, wrong,
refusals, compliance with harmful requests), asks the judge for its three ratings exactly as Silkie does,
and reports per aspect the exact agreement and mean absolute error, how often a rating is missing, and
the pairwise agreement that matters for VLFeedback's pairs: over two answers to the same scene whose true
mean ratings differ, how often the judge orders them the same way. The same figures, with their intervals,
as `vlalign eval world-judge` (`vlalign.world.feedback_eval`).
"""

from __future__ import annotations

import argparse

from vlalign.console import figure
from vlalign.evaluate.benchmarks import EvalInputs
from vlalign.evaluate.feedback import Feedback
from vlalign.feedback.judge_local import ModelJudge
from vlalign.models.load import load
from vlalign.world.feedback_eval import SHORT, judge_records, judge_result
from vlalign.world.scene import EVAL_SPLITS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--judge", default="world:judge")
    ap.add_argument("--items", type=int, default=300, help="scenes; each gets --answers candidate answers")
    ap.add_argument("--answers", type=int, default=3)
    ap.add_argument("--split", choices=EVAL_SPLITS, default="test", help="test (report) or dev (tune)")
    args = ap.parse_args()
    judge = ModelJudge(*load(args.judge, dtype="fp32"), name=args.judge)
    feedback = Feedback(judge, style="world")  # as the world recipes run it
    records = judge_records(feedback, EvalInputs(limit=args.items, split=args.split), args.answers)
    m = judge_result(records).metrics
    print(f"judge {args.judge}: {m['answers']} answers to {len(records)} instructions")
    for aspect, short in SHORT.items():
        print(f"  {aspect:24s} exact {figure(m, f'{short}_exact')}  MAE {figure(m, f'{short}_mae')}  "
              f"missing {figure(m, f'{short}_missing')}")
    print(f"  pairwise order agreement {figure(m, 'pairwise_agreement')} over {m['pairs']} pairs of different quality")


if __name__ == "__main__":
    main()
