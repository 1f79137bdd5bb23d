"""Online RL in the report: the group viewer's data (every rollout's groups: a prompt's n answers with their
rewards, each component's value, advantages and the labeler's claims) and the rollout curves (per round:
each reward component's mean, the reward, the answers' length, and the KL and clip fraction of training).
"""

from __future__ import annotations

import json
from typing import Any

from vlalign.data.records import PromptRecord
from vlalign.data.store import Stage, stage_dirs
from vlalign.report.gather import ROUND, ArmInfo, RunInfo
from vlalign.report.marks import mark_answer
from vlalign.report.pairs import PairSet

MAX_GROUPS = 400  # per rollout: a larger one is shown evenly thinned
TRAINING_MEANS = ("kl", "clip_fraction", "ratio", "answer_tokens")  # logged by the policy gradient


def group_row(row: dict, prompt: PromptRecord | None) -> dict[str, Any]:
    """One group as the viewer's JSON: its answers best first, each with its reward, advantage, components
    and claims, marked by the plugins' answer markers."""
    details = json.loads(row["details"]) if row.get("details") else [{} for _ in row["answers"]]
    answers = [{"id": i, "text": text, "reward": reward, "advantage": advantage, "values": d.get("values", {}),
                "claims": d.get("claims", []), "marks": mark_answer(text, prompt)}
               for i, text, reward, advantage, d in zip(row["responses"], row["answers"], row["rewards"],
                                                          row["advantages"], details, strict=True)]
    answers.sort(key=lambda a: -a["reward"])
    rewards = [a["reward"] for a in answers]
    return {"id": row["id"], "image": f"images/{row['image']}.png", "instruction": row["instruction"],
            "source": prompt.source if prompt is not None else "", "spread": max(rewards) - min(rewards),
            "answers": answers}


def group_sets(run: RunInfo, limit: int = MAX_GROUPS) -> list[PairSet]:
    """Every rollout's groups (`round<k>/groups`), one set per round that has any; [] for a run without."""
    stages = sorted((d for d in stage_dirs(run.root) if d.name == "groups" and ROUND.match(d.parent.name)),
                    key=lambda d: int(ROUND.match(d.parent.name).group(1)))  # type: ignore[union-attr]
    out = []
    for i, d in enumerate(stages):
        prompts = {p.id: p for p in Stage(d.parent / "prompts", run.root).records(PromptRecord)} \
            if (d.parent / "prompts").exists() else {}
        rows = Stage(d, run.root).rows()
        if not rows:
            continue
        shown = rows if len(rows) <= limit else [rows[k * len(rows) // limit] for k in range(limit)]
        out.append(PairSet(f"groups{i}", f"round {d.parent.name.removeprefix('round')}: {d.relative_to(run.root)}",
                           str(d), len(rows), [group_row(r, prompts.get(r["id"])) for r in shown]))
    return out


def rollout_points(arms: list[ArmInfo]) -> list[dict[str, float]]:
    """Per round of an online run: the rollout's rewards (the mean of each component and of the reward), its
    answers' words, the groups that trained, and the mean of what training logged (KL, clip fraction)."""
    points = []
    for arm in arms:
        rollout = arm.record.get("rollout")
        if arm.name != "policy" or not isinstance(rollout, dict):
            continue
        point = {"round": float(arm.round)}
        for key, value in [("reward", rollout.get("reward")), ("words", rollout.get("words")),
                           ("groups", rollout.get("groups")),
                           *((f"reward: {k}", v) for k, v in (rollout.get("components") or {}).items())]:
            if isinstance(value, (int, float)):
                point[key] = float(value)
        for key in TRAINING_MEANS:
            values = [e[key] for e in arm.history if isinstance(e.get(key), (int, float))]
            if values:
                point[key] = sum(values) / len(values)
        points.append(point)
    return points
