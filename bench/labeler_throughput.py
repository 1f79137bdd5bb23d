"""Labeling claims/s: vlalign's labeler (every claim question about one image continues one prompt of it)
against RLAIF-V's way (one `generate` call per claim question at batch 1, reading the yes / no token) and
against one full forward per question (batched rows, the image encoded again for each).

    python bench/labeler_throughput.py --shape llava7b
    python bench/labeler_throughput.py --shape world
    python bench/labeler_throughput.py --shape llava7b --real-size --device cuda

Each prompt gets `--samples` answers (RLAIF-V's deconfounded samples), split into claims by the world's
splitter; all of them are labeled by vlalign's `label_responses`, the baselines label the first `--subset`
questions (they are slow) and must reach the same decisions there (P(yes) to 1e-4). The limit is the token
count: a question alone forwards its whole prompt, shared it forwards its own tokens and a share of the prefix.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import plain_rows  # noqa: E402
import shapes  # noqa: E402


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shapes.add_arguments(ap)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--samples", type=int, default=10, help="answers per prompt")
    ap.add_argument("--subset", type=int, default=24, help="questions the baselines label")
    return ap.parse_args()


def answers(shape, prompts: int, samples: int):
    """Per prompt: its image and `samples` descriptions of its scene, some objects imagined (hallucinations)."""
    from vlalign.world.render import render
    from vlalign.world.scene import sample_scene
    from vlalign.world.text import describe

    rng = np.random.default_rng(0)
    images, texts = [], []
    for i in range(prompts):
        scene = sample_scene(i, "prompts")
        image = render(scene, shape.image_size)
        for _ in range(samples):
            images.append(image)
            texts.append(describe(scene, rng, hallucination=0.3))
    return images, texts


def limit(processor, images, questions) -> float:
    """Prompt tokens of one forward per question over those of the shared rows."""
    from vlalign.models import prefix

    alone = sum(shapes.token_counts(processor, [im], [q], [""])[0] for im, q in zip(images, questions, strict=True))
    shared = 0
    for members in prefix.group_by(prefix.images_keys(images)):
        for g in prefix.questions_groups(processor, images[members[0]], [questions[m] for m in members], members):
            shared += len(g.prompt["input_ids"]) + sum(len(c) for c in g.continuations)
    return alone / shared


def main() -> None:
    args = _args()
    shapes.setup(args)
    shape = shapes.build(args)
    from vlalign.feedback.labeler import label_responses
    from vlalign.world.claims import WorldClaims

    model, processor = shape.model, shape.processor
    images, texts = answers(shape, args.prompts, args.samples)
    clock = shapes.Clock(args.device, args.repeats)
    with torch.no_grad():
        label_responses(model, processor, images[:2], texts[:2], WorldClaims())  # warm-up
        feedback, ours = clock(label_responses, model, processor, images, texts, WorldClaims())
    flat = [(im, c) for im, f in zip(images, feedback, strict=True) for c in f.claims]
    n = len(flat)
    sub = flat[:args.subset]
    sub_images, sub_questions = [im for im, _ in sub], [c.question for _, c in sub]
    rlaif, rlaif_s = clock(plain_rows.rlaif_v_yes_probability, model, processor, sub_images, sub_questions)
    full, full_s = clock(plain_rows.yes_probability, model, processor, sub_images, sub_questions)
    mine = [c.p_yes for _, c in sub]
    decisions = [c.rejected for _, c in sub]
    same = all(abs(a - b) <= 1e-4 and abs(a - c) <= 1e-4 for a, b, c in zip(mine, rlaif, full, strict=True))
    for other in (rlaif, full):
        decided = [(p < 0.5) if c.holds_if_yes else (p > 0.5) for p, (_, c) in zip(other, sub, strict=True)]
        same = same and decided == decisions
    rates = {"vlalign": n / ours, "RLAIF-V generate": len(sub) / rlaif_s, "full forward": len(sub) / full_s}
    bound = limit(processor, [im for im, _ in flat], [c.question for _, c in flat])
    print(f"{shape.name}, {args.device}, {shapes.dtype_of(args)}: {args.prompts} images x {args.samples} answers, "
          f"{n} claim questions ({n / args.prompts:.0f} per image); baselines on {len(sub)}")
    for name, rate in rates.items():
        print(f"  {name:17} {rate:8.2f} claims/s")
    print(f"same P(yes) (1e-4) and decisions on the {len(sub)} questions: {same}; token limit {bound:.1f}x")
    print(f"ratios: {rates['vlalign'] / rates['RLAIF-V generate']:.1f}x RLAIF-V's generate, "
          f"{rates['vlalign'] / rates['full forward']:.1f}x one forward per question (token limit {bound:.1f}x), "
          f"same decisions {same}")


if __name__ == "__main__":
    main()
