"""What did a finished Silkie run's judge see in its pool? Its ratings of the description answers against
the ratings the scene graph implies, per pool model, and what the pairs prefer.

    python bench/silkie_pool.py runs/demo/silkie

Per model: how many description answers, the judge's mean faithfulness and helpfulness next to the scene
graph's, how often each matches exactly, and the answers' true object recall and hallucinated objects.
Then, over the description pairs: the chosen and rejected answers' recall, hallucinations and words, which
shows whether the pairs teach "name fewer objects".
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np

from vlalign.data.records import FeedbackRecord, PairRecord, PromptRecord, ResponseRecord
from vlalign.data.store import Stage
from vlalign.world.judging import rate
from vlalign.world.metrics import mentioned_shapes
from vlalign.world.scene import Scene
from vlalign.world.text import Task

F, H = "Visual Faithfulness", "Helpfulness"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a Silkie run directory (vlalign silkie --out, or DEMO/silkie)")
    run = ap.parse_args().run
    prompts = {p.id: p for p in map(PromptRecord.from_row, Stage(f"{run}/round1/prompts").rows())
               if p.source.endswith("/describe")}
    responses = {r.id: r for r in map(ResponseRecord.from_row, Stage(f"{run}/round1/responses").rows())
                 if r.prompt_id in prompts}

    truth: dict[str, tuple[dict, float, int]] = {}  # response id -> (graph's ratings, recall, false objects)
    for r in responses.values():
        prompt = prompts[r.prompt_id]
        scene = Scene.from_dict(prompt.meta["scene"])
        named = set(mentioned_shapes(r.response))
        ratings = rate(scene, Task("describe", prompt.instruction, ""), r.response).ratings
        truth[r.id] = ratings, len(named & scene.shapes) / len(scene.shapes), len(named - scene.shapes)

    by_model = defaultdict(list)
    for f in map(FeedbackRecord.from_row, Stage(f"{run}/round1/feedback").rows()):
        judged = f.details.get("ratings") or {}
        if f.response_id in truth and judged.get(F) is not None and judged.get(H) is not None:
            true, recall, false = truth[f.response_id]
            by_model[responses[f.response_id].model].append((judged[F], true[F], judged[H], true[H], recall, false))
    print(f"{'model':22s} {'n':>4s}  faithfulness judge/true exact   helpfulness judge/true exact   recall  false objects")
    for model, rows in sorted(by_model.items()):
        a = np.array(rows, dtype=float)
        print(f"{model:22s} {len(a):4d}  {a[:, 0].mean():.2f} / {a[:, 1].mean():.2f}  {np.mean(a[:, 0] == a[:, 1]):.2f}"
              f"            {a[:, 2].mean():.2f} / {a[:, 3].mean():.2f}  {np.mean(a[:, 2] == a[:, 3]):.2f}"
              f"          {a[:, 4].mean():.3f}  {a[:, 5].mean():.2f}")
    pairs = []
    for p in map(PairRecord.from_row, Stage(f"{run}/round1/pairs").rows()):
        if p.prompt_id in prompts:
            (_, rc, fc), (_, rr, fr) = truth[p.meta["chosen_id"]], truth[p.meta["rejected_id"]]
            pairs.append((rc, rr, fc, fr, len(p.chosen.split()), len(p.rejected.split())))
    if pairs:
        m = np.array(pairs, dtype=float).mean(axis=0)
        print(f"{len(pairs)} description pairs: recall chosen {m[0]:.3f} rejected {m[1]:.3f}; false objects chosen "
              f"{m[2]:.2f} rejected {m[3]:.2f}; words chosen {m[4]:.1f} rejected {m[5]:.1f}")


if __name__ == "__main__":
    main()
