"""How well does a labeler judge a policy's claims? Claim-level accuracy against the world's scene graph.

    python bench/labeler_accuracy.py --policy world:base --labeler world:labeler --prompts 200

Samples answers from the policy on held-out scenes, splits them into claims (RLAIF-V's divide step),
scores every claim with the labeler's P(yes), and compares with the truth. RLAIF-V's feedback is only as
good as this number, so it is the first thing to check when alignment does not lower hallucination.
"""

from __future__ import annotations

import argparse

import numpy as np

from vlalign.feedback.labeler import label_responses
from vlalign.models.generate import generate, sample_seed
from vlalign.models.load import load
from vlalign.models.settings import Decoding
from vlalign.world.claims import WorldClaims
from vlalign.world.metrics import held_out_scenes
from vlalign.world.render import render
from vlalign.world.scene import COLORS, EVAL_SPLITS, SHAPES
from vlalign.world.text import DESCRIBE_INSTRUCTIONS


def claim_is_true(scene, question: str) -> bool:
    words = question.replace("?", " ").split()
    shape = next(w for w in words if w in SHAPES)
    color = next((w for w in words if w in COLORS), None)
    return scene.count(shape, color) > 0


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    pos, neg = scores[labels], scores[~labels]
    if not len(pos) or not len(neg):
        return float("nan")
    return float((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", default="world:base")
    ap.add_argument("--labeler", default="world:labeler")
    ap.add_argument("--prompts", type=int, default=200)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--split", choices=EVAL_SPLITS, default="test", help="test (report) or dev (tune)")
    args = ap.parse_args()
    policy, processor = load(args.policy, dtype="fp32")
    labeler, labeler_processor = load(args.labeler, dtype="fp32")
    held_out = [s for s in held_out_scenes(args.split, args.prompts) for _ in range(args.samples)]
    images = [render(s, processor.image_processor.crop_size["height"]) for s in held_out]
    seeds = [sample_seed(0, s.id, k % args.samples) for k, s in enumerate(held_out)]
    answers = generate(policy, processor, images, [DESCRIBE_INSTRUCTIONS[0]] * len(images),
                       Decoding(max_new_tokens=96, temperature=0.7), seeds=seeds)
    feedback = label_responses(labeler, labeler_processor, images, answers, WorldClaims())
    p_yes, truth = [], []
    for scene, fb in zip(held_out, feedback, strict=True):
        for c in fb.claims:
            p_yes.append(c.p_yes)
            truth.append(claim_is_true(scene, c.question))
    p, t = np.asarray(p_yes), np.asarray(truth)
    print(f"claims {len(p)}  true {t.mean():.3f}  labeler accuracy {((p >= 0.5) == t).mean():.3f}  "
          f"AUC {auc(p, t):.3f}  mean P(yes) true {p[t].mean():.3f} false {p[~t].mean():.3f}")


if __name__ == "__main__":
    main()
