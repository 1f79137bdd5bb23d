"""GRPO runs on the world: the config's checks, the rollout's stages (rewards from models only: a round scores
its answers the same when every prompt carries another scene's graph, and no reward reads one), the
optimizer carried from rollout to rollout, kill-anywhere, and one process against two."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from vlalign.config import ConfigError, load_config
from vlalign.data.store import RunStore, Stage, stage_dirs
from vlalign.plugins import METHODS

GRPO = METHODS.get("grpo")
REWARDS = ("rewards=[{kind: rejected_claims, model: world:labeler, options: {splitter: world-implied}}, "
           "{kind: accepted_claims, weight: 0.5, model: world:labeler, options: {splitter: world-implied}}, "
           "{kind: length, weight: 0.01}]")
SMALL = ["policy=world:base", "runtime.dtype=fp32", "prompts.source=world", "prompts.per_round=6", "samples=3",
         "decoding.max_new_tokens=24", REWARDS, "batch_size=6", "report=false"]
TRAIN = ["train.batch_size=2", "train.epochs=2", "train.optim.lr=1e-3", "train.optim.log_every=1",
         "objective.kl=0.05"]


def test_config_checks_name_every_problem():
    with pytest.raises(ConfigError) as e:
        load_config(GRPO.config, None, ["rewards=[{kind: claims}, {kind: length, model: world:base}, "
                                        "{kind: judge, model: api:x, options: {prompt: rate it}}]",
                                        "objective.aggregate=tokens", "decoding.temperature=0"])
    text = str(e.value)
    for expected in ("unknown reward kind 'claims'", "the length reward reads the answer's words",
                     "{instruction} and {answer}", "aggregate must be one of", "temperature above 0"):
        assert expected in text, expected
    config = load_config(GRPO.config, None, ["policy=world:base", "prompts.source=world"])
    assert any(p.startswith("rewards: empty") for p in config.problems())
    twice = "rewards=[{kind: length}, {kind: length, weight: -1}]"
    with pytest.raises(ConfigError, match="appear more than once"):
        load_config(GRPO.config, None, [twice])
    named = load_config(GRPO.config, None, ["rewards=[{kind: length}, {kind: length, weight: -1, name: short}]"])
    assert [t.label for t in named.rewards] == ["length", "short"]


def _round(tmp_path: Path, overrides: list[str]):
    """Round 1 of a GRPO run made up to its arm (sampling, rewards, groups), and the pieces to make it again."""
    from vlalign.models.load import load
    from vlalign.runner import ScopedModels, round_prompts
    from vlalign.stages.round import Round

    config = load_config(GRPO.config, None, overrides)
    policy, processor = load("world:base", config.runtime)
    store = RunStore(tmp_path)
    round_prompts(store, GRPO, config, 1, processor)

    def make(store: RunStore):
        return GRPO.pairs(Round(1, config, store, store.stage("round1/prompts"), policy, processor,
                                ScopedModels(config.runtime)))

    return make, store


def test_rewards_never_read_the_scene_graph(tmp_path, monkeypatch):
    """The world's prompts carry their scene graph (the grader) and the exact answer; a round whose prompts
    carry another scene's instead makes the same rewards and groups, and nothing reads a graph back."""
    from vlalign.world.scene import Scene

    make, store = _round(tmp_path / "a", [*SMALL, "prompts.per_round=4", "decoding.max_new_tokens=20"])
    arm = make(store)[0]
    groups = Stage(tmp_path / "a" / "round1" / "groups").rows()
    assert groups and any(len(set(g["rewards"])) > 1 for g in groups), "the rewards must tell answers apart"
    assert len(arm.pairs) == len(groups)

    shutil.copytree(tmp_path / "a", tmp_path / "b")
    prompts = Stage(tmp_path / "b" / "round1" / "prompts")
    rows = prompts.rows()
    swapped = [{**row, "reference": rows[i - 1]["reference"], "meta": rows[i - 1]["meta"]} for i, row in enumerate(rows)]
    for shard in prompts.shards():
        shard.unlink()
    prompts.write_shard(swapped, 0)
    for d in stage_dirs(tmp_path / "b"):
        if d.name != "prompts":
            shutil.rmtree(d)
    monkeypatch.setattr(Scene, "from_dict", classmethod(lambda cls, d: pytest.fail("a reward read a scene graph")))
    make(RunStore(tmp_path / "b"))
    for name in ("responses", "rewards/rejected_claims", "groups"):
        before, after = (Stage(run / "round1" / name).rows() for run in (tmp_path / "a", tmp_path / "b"))
        assert before == after, name


@pytest.mark.slow
def test_two_rollouts_carry_the_optimizer_and_evaluate_the_last(tmp_path):
    from vlalign.runner import run

    config = load_config(GRPO.config, None, [*SMALL, *TRAIN, "rounds=2", "eval_every=5",
                                             "eval=[{name: world, limit: 4}]", "eval_base=false"])
    summary = run(GRPO, config, tmp_path)
    first, second = summary["rounds"]
    assert "eval" not in first and "world" in second["eval"], "evaluated after the last rollout only"
    for k in (1, 2):
        for name in ("responses", "rewards/rejected_claims", "groups", "logps"):
            assert Stage(tmp_path / f"round{k}" / name).is_complete, (k, name)
    assert not (tmp_path / "round1" / "rewards" / "accepted_claims").exists(), "one labeling pass for both claim kinds"
    logps = Stage(tmp_path / "round1" / "logps").rows()
    assert logps and all(len(r["ref"]) == len(r["old"]) > 0 for r in logps)
    rollout = first["rollout"]
    assert first["arms"]["policy"]["unit"] == "groups", "the run's messages count groups, not pairs"
    assert rollout["groups"] == first["pairs"] and set(rollout["components"]) == {"rejected_claims",
                                                                                   "accepted_claims", "length"}
    history = json.loads((tmp_path / "round1" / "training" / "train_history.json").read_text())["history"]
    assert all({"kl", "clip_fraction", "ratio", "answer_tokens"} <= set(h) for h in history)
    assert history[0]["ratio"] == pytest.approx(1.0, abs=1e-4), "step 1 is on-policy: old = current"
    steps = [len(json.loads((tmp_path / f"round{k}" / "training" / "train_history.json").read_text())["history"])
             for k in (1, 2)]
    state = torch.load(tmp_path / "round2" / "training" / "optimizer.pt", weights_only=True)["state"]
    assert {int(s["step"]) for s in state.values()} == {sum(steps)}, "Adam's moments go on from round 1's"


@pytest.mark.slow
def test_the_packaged_world_recipe_runs_by_name(tmp_path):
    """`vlalign run grpo --config grpo_world` (the recipe shipped as package data, shrunk by overrides) makes a
    rollout scored by the recipe's rewards and evaluates it against the base."""
    import yaml
    from typer.testing import CliRunner

    from vlalign.cli import app
    from vlalign.recipes import get

    recipe = yaml.safe_load(get("grpo_world").path.read_text())
    out = tmp_path / "run"
    shrink = ["rounds=1", "prompts.per_round=4", "samples=3", "decoding.max_new_tokens=16", "batch_size=6",
              "train.batch_size=2", "eval=[{name: world, limit: 4}]", "report=false"]
    result = CliRunner().invoke(app, ["run", "grpo", "--config", "grpo_world", "--out", str(out), *shrink])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    [rollout] = summary["rounds"]
    kinds = {r["kind"] for r in recipe["rewards"]}
    assert set(rollout["rollout"]["components"]) == kinds and rollout["pairs"] > 0
    assert "world" in summary["base"] and "chair_i" in rollout["eval"]["world"]["vs_base"], "paired with the base"
    sampled = json.loads((out / "round1" / "responses" / ".manifest.json").read_text())["config"]["decoding"]
    assert sampled["temperature"] == recipe["decoding"]["temperature"], "sampled as the recipe says"


@pytest.mark.slow
def test_a_grpo_run_killed_anywhere_ends_as_if_never_killed(tmp_path, monkeypatch):
    import test_kill_anywhere as kill

    overrides = [*SMALL, *TRAIN, "rounds=2", "train.checkpoint_every=1"]
    overrides[overrides.index(REWARDS)] = ("rewards=[{kind: rejected_claims, model: world:labeler, options: "
                                           "{splitter: world}}, {kind: length, weight: 0.01}]")
    monkeypatch.setitem(kill.CONFIGS, "grpo", overrides)
    kill.test_a_run_killed_anywhere_ends_as_if_never_killed(tmp_path, "grpo")


# Round 2's sampling policy is round 1's trained one, whose weights two processes make within float noise of
# one process's (see test_parallel): its per-token log-probs agree to this much. The reference's are the
# same model's on the same answers, batched otherwise across ranks: they agree to fp32 noise.
LOGP_TOLERANCE = {"old": 1e-3, "ref": 1e-5}


def _logps_apart(a: Path, b: Path) -> dict[str, float]:
    """The largest difference between two log-prob stages' values, per column."""
    rows = [{r["id"]: r for r in Stage(d).rows()} for d in (a, b)]
    assert rows[0].keys() == rows[1].keys()
    return {col: max(abs(x - y) for i in rows[0] for x, y in zip(rows[0][i][col], rows[1][i][col], strict=True))
            for col in LOGP_TOLERANCE}


PARALLEL = [*SMALL, *TRAIN, "prompts.per_round=8", "rounds=2", "train.optim.warmup_ratio=0",
            "eval=[{name: world, limit: 4}]", "eval_every=2"]


@pytest.mark.slow
def test_grpo_on_two_processes_matches_one_process(tmp_path):
    """Two rollouts launched on two processes (groups split across ranks) make the same records and, within
    float tolerance, the same weights as one process."""
    from safetensors.torch import load_file
    from test_parallel import WEIGHT_TOLERANCE, distance, ids_on_disk, launch, record_set

    from vlalign.models.load import resolve
    from vlalign.runner import run

    one, two = tmp_path / "one", tmp_path / "two"
    alone = run(GRPO, load_config(GRPO.config, None, PARALLEL), one)
    job = launch(2, "-m", "vlalign", "run", "grpo", "--out", str(two), *PARALLEL, timeout=900)
    assert job.returncode == 0, job.stderr[-4000:]
    stages = [d.relative_to(one) for d in stage_dirs(one)]
    assert stages == [d.relative_to(two) for d in stage_dirs(two)] and len(stages) == 10
    for rel in stages:
        ids = ids_on_disk(two / rel)
        assert len(ids) == len(set(ids)), f"{rel}: a record written twice"
        if rel.name == "logps" and rel.parent.name != "round1":  # read under round 1's policy, trained apart
            apart = _logps_apart(one / rel, two / rel)
            assert all(apart[col] < tol for col, tol in LOGP_TOLERANCE.items()), (rel, apart)
        else:
            assert record_set(two / rel) == record_set(one / rel), f"{rel}: other records than one process's"
    base = load_file(Path(resolve("world:base")) / "model.safetensors")
    trained = [load_file(d / "round2" / "policy" / "model.safetensors") for d in (one, two)]
    moved, apart = distance(trained[0], base), distance(trained[1], trained[0])
    assert moved > 1e-2, "training must change the weights for the comparison to mean anything"
    assert apart <= WEIGHT_TOLERANCE * moved, f"weights are {apart:.2e} apart; training moved them {moved:.2e}"
    together = json.loads((two / "summary.json").read_text())
    evals = [s["rounds"][1]["eval"]["world"] for s in (together, alone)]
    figures = [{k: v for k, v in e.items() if isinstance(v, float)} for e in evals]  # not intervals, vs_base
    assert "chair_i" in figures[0] and figures[0] == pytest.approx(figures[1], abs=0.02)
