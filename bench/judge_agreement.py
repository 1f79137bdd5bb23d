"""How well does the world judge rate answers? Its ratings against the ratings the scene graph implies.

    python bench/judge_agreement.py --judge world:judge --items 300

Draws held-out scenes with candidate answers of every quality (exact, hallucinating, incomplete, wrong,
refusals, compliance with harmful requests), asks the judge for its three ratings exactly as Silkie does,
and reports per aspect the exact agreement and mean absolute error, how often a rating is missing, and
the pairwise agreement that matters for VLFeedback's pairs: over two answers to the same scene whose true
mean ratings differ, how often the judge orders them the same way.
"""

from __future__ import annotations

import argparse
from itertools import combinations

import numpy as np

from vlalign.feedback.ratings import ASPECTS, mean_rating
from vlalign.feedback.vlfeedback import RatingJudge
from vlalign.models.settings import Runtime
from vlalign.runner import ScopedModels
from vlalign.world.judging import candidate_answer, candidate_task, rate
from vlalign.world.metrics import held_out_scenes
from vlalign.world.render import render
from vlalign.world.scene import EVAL_SPLITS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--judge", default="world:judge")
    ap.add_argument("--items", type=int, default=300, help="scenes; each gets --answers candidate answers")
    ap.add_argument("--answers", type=int, default=3)
    ap.add_argument("--split", choices=EVAL_SPLITS, default="test", help="test (report) or dev (tune)")
    args = ap.parse_args()
    truth, items = [], []
    for scene in held_out_scenes(args.split, args.items):
        rng = np.random.default_rng([scene.seed, 5])
        task = candidate_task(scene, rng)  # several answers to one instruction, as in Silkie's pool
        answers = [candidate_answer(scene, task, rng) for _ in range(args.answers)]
        truth.append([rate(scene, task, *answer).ratings for answer in answers])
        items.append((scene.id, render(scene, 48), task.instruction, [a for a, _, _ in answers]))
    with ScopedModels(Runtime(dtype="fp32")).chat(args.judge) as chat:  # as the world recipes run it
        rated = RatingJudge(chat, style="world").rate(items)
    exact = {a: [] for a in ASPECTS}
    error = {a: [] for a in ASPECTS}
    missing = {a: 0 for a in ASPECTS}
    pairs_agree = pairs = 0
    for true_group, judged_group in zip(truth, rated, strict=True):
        for t, j in zip(true_group, judged_group, strict=True):
            for a in ASPECTS:
                if j.ratings[a] is None:
                    missing[a] += 1
                    continue
                exact[a].append(j.ratings[a] == t[a])
                error[a].append(abs(j.ratings[a] - t[a]))
        for (t1, j1), (t2, j2) in combinations(zip(true_group, judged_group, strict=True), 2):
            m1, m2 = mean_rating(t1), mean_rating(t2)
            if m1 == m2:
                continue
            pairs += 1
            jm1, jm2 = mean_rating(j1.ratings), mean_rating(j2.ratings)
            pairs_agree += jm1 is not None and jm2 is not None and (jm1 - jm2) * (m1 - m2) > 0
    n = sum(len(g) for g in truth)
    print(f"judge {args.judge}: {n} answers to {len(truth)} instructions")
    for a in ASPECTS:
        print(f"  {a:24s} exact {np.mean(exact[a]):.3f}  MAE {np.mean(error[a]):.3f}  missing {missing[a] / n:.3f}")
    print(f"  pairwise order agreement {pairs_agree / max(pairs, 1):.3f} over {pairs} pairs of different quality")


if __name__ == "__main__":
    main()
