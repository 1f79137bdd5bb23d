"""An online run's report, on a GRPO run written by hand (`report_runs`' layout): the group viewer's data holds
each prompt's answers best first with their rewards, components, advantages, claims and the world's
highlights; the training page plots the rollouts per round; the nav links the viewer; no pairs warning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import report_runs
from report_runs import BAD, GOOD, _stage, _write, claimed, prompts, summary

from vlalign.data.store import RunStore
from vlalign.report import write_report
from vlalign.report.gather import read_run
from vlalign.report.groups import rollout_points


def grpo_run(root: Path) -> Path:
    """Two rounds of a GRPO run on two world scenes, each prompt's group holding a good and a bad answer."""
    store = claimed(RunStore(root), "grpo")
    rounds = []
    for k in (1, 2):
        records = prompts(store, f"round{k}/prompts")
        rows = []
        for i, p in enumerate(records):
            texts = [BAD[i], GOOD[i]]  # the worse answer first, as sampled
            rewards = [-2.0, 1.0]
            details = [{"values": {"rejected_claims": -2.0 + 3 * j, "length": len(t.split())},
                        "claims": [["there is a red heart.", j == 0], ["there is a blue triangle.", False]]}
                       for j, t in enumerate(texts)]
            rows.append({"id": p.id, "prompt_id": p.id, "image": p.image, "instruction": p.instruction,
                         "responses": [f"{p.id}/s0", f"{p.id}/s1"], "answers": texts, "rewards": rewards,
                         "advantages": [-0.7, 0.7], "details": json.dumps(details)})
        _stage(store, f"round{k}/groups", rows)
        record = {"arm": "policy", "pairs": 2, "checkpoint": str(root / f"round{k}" / "policy"), "final_loss": 0.1,
                  "rollout": {"prompts": 2, "groups": 2, "reward": -0.5 + k, "words": 10.0 + k,
                              "components": {"rejected_claims": -1.0 + k / 2, "length": 10.0 + k}}}
        history = [{"step": s, "lr": 1e-5, "loss": 0.1, "kl": 0.01 * k, "clip_fraction": 0.1 * s} for s in (1, 2)]
        _write(root / f"round{k}" / "training" / "train_history.json", {"history": history})
        _write(root / f"round{k}" / "arm.json", record)
        rounds.append({"round": k, "arms": {"policy": record}, **record})
    summary(store, "grpo", rounds, {"rewards": [{"kind": "rejected_claims", "model": "world:labeler"}]})
    return root


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    return write_report(grpo_run(tmp_path_factory.mktemp("grpo") / "run")).parent


def _data(report: Path, slug: str) -> list[dict]:
    text = (report / "data" / f"{slug}.js").read_text()
    return json.loads(text[text.index("] = ") + 4:].rstrip().rstrip(";"))


def test_group_viewer_holds_each_prompt_s_answers_best_first(report):
    assert 'href="groups.html"' in (report / "index.html").read_text()
    page = (report / "groups.html").read_text()
    assert "round 1: round1/groups (2)" in page and "round 2: round2/groups (2)" in page
    assert (report / "groups.js").exists() and (report / "data" / "group-sets.js").exists()
    groups = _data(report, "groups0")
    assert [g["id"] for g in groups] == ["world-prompts-0", "world-prompts-1"]
    first = groups[0]
    assert [a["text"] for a in first["answers"]] == [GOOD[0], BAD[0]], "best reward first"
    assert [a["reward"] for a in first["answers"]] == [1.0, -2.0] and first["spread"] == 3.0
    assert first["answers"][0]["advantage"] == 0.7 and first["answers"][0]["values"]["rejected_claims"] == 1.0
    assert first["answers"][1]["claims"][0] == ["there is a red heart.", True]
    assert (report / first["image"]).is_file(), "the images are copied into the report"
    marked = first["answers"][1]["marks"]  # the world's marker finds the red heart (it is yellow) and the star
    assert {m[2] for m in marked} == {"attribute", "hallucinated"}
    assert first["answers"][0]["marks"] == []


def test_training_page_plots_the_rollouts_per_round(report):
    page = (report / "training.html").read_text()
    assert 'id="rollouts"' in page and (report / "plots" / "rollouts.svg").exists()
    points = rollout_points(read_run(report.parent).arms)
    assert [p["round"] for p in points] == [1.0, 2.0]
    assert points[1]["reward"] == 1.5 and points[1]["reward: rejected_claims"] == 0.0
    assert points[0]["kl"] == pytest.approx(0.01) and points[0]["clip_fraction"] == pytest.approx(0.15)
    assert points[1]["words"] == 12.0 and points[1]["groups"] == 2.0


def test_a_run_without_groups_has_no_group_viewer(tmp_path):
    report = write_report(report_runs.rlaif_v_run(tmp_path / "rlaif_v")).parent
    assert not (report / "groups.html").exists()
    assert 'href="groups.html"' not in (report / "index.html").read_text()
    assert rollout_points(read_run(tmp_path / "rlaif_v").arms) == []


def test_only_a_run_without_pairs_or_groups_warns_of_no_pairs(tmp_path, monkeypatch):
    import vlalign.report

    warned: list[str] = []
    monkeypatch.setattr(vlalign.report, "warn", warned.append)
    write_report(grpo_run(tmp_path / "g"))
    assert warned == []
    for groups in (tmp_path / "g").glob("round*/groups"):
        for shard in groups.glob("*.parquet"):
            shard.unlink()
    write_report(tmp_path / "g")
    assert len(warned) == 1 and "pairs" in warned[0]
