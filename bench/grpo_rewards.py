"""What did a GRPO run's reward pay for? Its description answers' rewards against the scene graph (which
no reward reads; here it only grades).

    python bench/grpo_rewards.py runs/grpo [--round 1]

Among the answers that name no false object, the mean reward (and answers, words) by how many of the scene's
objects they leave out: a reward that pays for completeness falls as more are left out; and the answers that
name a false object, which a reward against hallucination pays less. Then the claims the labeler rejected in complete, faithful answers, by claim kind (an
object's existence, or a count): each is a verdict against a true claim. Last, the existence claims of every
description answer that name a shape the scene lacks (what CHAIR counts): the share the labeler lets through is
what a reward from it cannot see.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from vlalign.data.records import PromptRecord
from vlalign.data.store import Stage
from vlalign.world.metrics import chair_counts, mentioned_shapes
from vlalign.world.scene import Scene


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--round", type=int, default=1)
    args = ap.parse_args()
    folder = args.run / f"round{args.round}"
    scenes = {}
    for row in Stage(folder / "prompts").rows():
        p = PromptRecord.from_row(row)
        if p.source == "world/describe":
            scenes[p.id] = Scene.from_dict(p.meta["scene"])
    by_missing: dict[int, list[tuple[float, int]]] = defaultdict(list)
    false_named: list[tuple[float, int]] = []
    rejected_true: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # kind -> [rejected, all]
    absent_shapes = [0, 0]  # existence claims of a shape the scene lacks: [rejected, all]
    for group in Stage(folder / "groups").rows():
        if group["prompt_id"] not in scenes:
            continue
        scene = scenes[group["prompt_id"]]
        details = json.loads(group["details"]) if isinstance(group["details"], str) else group["details"]
        for answer, reward, detail in zip(group["answers"], group["rewards"], details, strict=True):
            for claim, rejected in detail["claims"]:
                shapes = mentioned_shapes(claim) if claim.startswith("there is a ") else []
                if shapes and shapes[0] not in scene.shapes:
                    absent_shapes[0] += bool(rejected)
                    absent_shapes[1] += 1
            counts = chair_counts(scene, answer)
            if counts["hallucinated"]:
                false_named.append((reward, counts["words"]))
                continue
            missing = counts["truth"] - counts["right"]
            by_missing[missing].append((reward, counts["words"]))
            if missing == 0:
                for claim, rejected in detail["claims"]:
                    kind = "count" if " objects." in claim or "one object." in claim else "existence"
                    rejected_true[kind][0] += bool(rejected)
                    rejected_true[kind][1] += 1
    print(f"{folder}: description answers naming no false object, by objects left out")
    for missing in sorted(by_missing):
        rows = np.array(by_missing[missing])
        print(f"  {missing} left out: {len(rows):4d} answers, mean reward {rows[:, 0].mean():+.2f}, "
              f"{rows[:, 1].mean():.1f} words")
    if false_named:
        rows = np.array(false_named)
        print(f"  naming a false object: {len(rows):4d} answers, mean reward {rows[:, 0].mean():+.2f}, "
              f"{rows[:, 1].mean():.1f} words")
    print("claims of complete, faithful answers the labeler rejected:")
    for kind, (bad, total) in sorted(rejected_true.items()):
        print(f"  {kind}: {bad} of {total} ({bad / max(total, 1):.0%})")
    bad, total = absent_shapes
    print(f"existence claims of a shape the scene lacks the labeler rejected: {bad} of {total} "
          f"({bad / max(total, 1):.0%})")
    print(json.dumps({"run": str(folder), "answers": {k: len(v) for k, v in sorted(by_missing.items())}}))


if __name__ == "__main__":
    main()
