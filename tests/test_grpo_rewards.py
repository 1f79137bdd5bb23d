"""Reward components and groups: a chat judge behind the scripted fault server (a transient fault retried, a
reply without a number or out of range logged and its answer left out, never guessed), the implicit reward
against the log-probs it is made of, the claim kinds from one labeling, and the group rules (advantages,
equal groups, too few answers)."""

from __future__ import annotations

import json

import pytest
from test_faults_server import Reply, Status, fault_servers

from vlalign.data.records import ResponseRecord
from vlalign.data.store import RunStore
from vlalign.feedback.groups import GroupRules
from vlalign.feedback.judge_api import OpenAIJudge
from vlalign.feedback.rewards import RewardTerm, claim_values
from vlalign.stages.rewards import group_stage, judge_stage
from vlalign.train.settings import PolicyGradientConfig
from vlalign.world.render import render
from vlalign.world.scene import sample_scene

PROMPT = "Rate the answer from 0 to 10. Question: {instruction} Answer: {answer} Reply with the score."


def _responses(store: RunStore, answers: dict[str, list[str]]):
    rows = []
    for k, (pid, texts) in enumerate(answers.items()):
        image = store.images.put(render(sample_scene(k, "prompts"), 48))
        rows += [ResponseRecord(f"{pid}/s{i}", pid, image, "describe the image.", t, model="policy",
                                seed=i).to_row() for i, t in enumerate(texts)]
    stage = store.stage("round1/responses")
    stage.write_shard(rows)
    stage.mark_complete()
    return stage


def test_a_chat_judge_scores_answers_and_a_failure_costs_only_its_answer(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    store = RunStore(tmp_path)
    responses = _responses(store, {"p0": ["a red circle.", "flaky", "no number", "too high"]})
    term = RewardTerm("judge", model="api:m", options={"prompt": PROMPT, "pattern": r"score:\s*(\d+)", "low": 0,
                                                        "high": 10})
    scripts = {"a red circle.": [Reply("score: 7")], "flaky": [Status(503), Reply("Score: 3 and score: 4")],
               "no number": [Reply("I cannot rate this.")], "too high": [Reply("score: 11")]}
    with fault_servers() as start:
        server = start(scripts)
        judge = OpenAIJudge("m", server.url, max_retries=2, backoff=0.01, max_backoff=0.05, timeout=2)
        out = judge_stage(responses, store.stage("round1/rewards/judge"), judge, term)
    values = {f["response_id"]: f["score"] for f in out.rows()}
    assert values == {"p0/s0": 7.0, "p0/s1": 4.0}, "the 503 was retried; the pattern's group is read"
    errors = {e["id"]: e["error"] for e in out.errors()}
    assert set(errors) == {"p0/s2", "p0/s3"}
    assert "no score matching" in errors["p0/s2"] and "outside [0, 10]" in errors["p0/s3"]
    assert out.manifest["judge_usage"], "the judge's token use is counted"


def test_claim_kinds_read_one_labeling():
    claims = [{"claim": "a", "rejected": False}, {"claim": "b", "rejected": True}, {"claim": "c", "rejected": False}]
    assert claim_values(claims) == {"rejected_claims": -1.0, "accepted_claims": 2.0, "claim_precision": 2 / 3}
    assert claim_values([])["claim_precision"] == 0.0
    a = RewardTerm("rejected_claims", model="world:labeler", options={"splitter": "world"})
    b = RewardTerm("claim_precision", weight=2, model="world:labeler", options={"splitter": "world"})
    c = RewardTerm("accepted_claims", model="world:labeler", options={"splitter": "world-implied"})
    assert a.scorer() == b.scorer() != c.scorer()


def test_the_implicit_reward_is_beta_times_the_log_ratio(tmp_path):
    from vlalign.models.load import load
    from vlalign.models.scoring import score_responses
    from vlalign.stages.rewards import implicit_stage

    store = RunStore(tmp_path)
    responses = _responses(store, {"p0": ["there is a red circle.", "there is a star."]})
    model, processor = load("world:base", dtype="fp32")
    reference, _ = load("world:small", dtype="fp32")
    out = implicit_stage(responses, store.stage("round1/rewards/implicit"), model, reference, processor, 0.5, False,
                         8, ("world:base", "world:small"))
    rows = [ResponseRecord.from_row(r) for r in responses.rows()]
    args = ([responses.images.get(r.image) for r in rows], [r.instruction for r in rows], [r.response for r in rows])
    mine, theirs = score_responses(model, processor, *args), score_responses(reference, processor, *args)
    expected = [0.5 * (a.sum_logp - b.sum_logp) for a, b in zip(mine, theirs, strict=True)]
    assert [f["score"] for f in out.rows()] == pytest.approx(expected, abs=1e-4)


def test_groups_keep_the_answers_every_component_scored(tmp_path):
    store = RunStore(tmp_path)
    responses = _responses(store, {"p0": ["a", "b", "c"], "p1": ["d", "e", "f"], "p2": ["g", "h", "i"],
                                   "p3": ["j", "k", "l"]})
    terms = [RewardTerm("rejected_claims", model="world:labeler", options={"splitter": "world"}),
             RewardTerm("length", weight=0.5)]
    values = {"p0/s0": {"rejected_claims": -1.0, "length": 2.0}, "p0/s1": {"rejected_claims": 0.0, "length": 2.0},
              "p0/s2": {"rejected_claims": -2.0, "length": 4.0},
              "p1/s0": {"rejected_claims": 0.0, "length": 2.0}, "p1/s1": {"rejected_claims": 0.0, "length": 2.0},
              "p2/s0": {"rejected_claims": -1.0, "length": 2.0},  # p2's other answers failed: too few
              "p3/s0": {"rejected_claims": 0.0, "length": 0.0}, "p3/s2": {"rejected_claims": -1.0, "length": 0.0}}
    out = group_stage(responses, values, terms, store.stage("round1/groups"), PolicyGradientConfig(), GroupRules())
    rows = {r["id"]: r for r in out.rows()}
    assert set(rows) == {"p0", "p3"}, "p1's answers earned the same reward; p2 has one scored answer"
    assert rows["p0"]["rewards"] == [0.0, 1.0, 0.0] and rows["p3"]["responses"] == ["p3/s0", "p3/s2"]
    std = (1 / 3) ** 0.5  # of [0, 1, 0], unbiased
    assert rows["p0"]["advantages"] == pytest.approx([x / (std + 1e-4) for x in (-1 / 3, 2 / 3, -1 / 3)])
    assert json.loads(rows["p0"]["details"])[2]["values"] == {"rejected_claims": -2.0, "length": 4.0}
    selection = out.manifest["selection"]
    assert (selection["groups"], selection["equal"], selection["too_few"], selection["unscored"]) == (2, 1, 1, 4)
    kept = group_stage(responses, {k: v for k, v in values.items() if k.startswith("p1")}, terms,
                       store.stage("round1/groups-equal"), PolicyGradientConfig(), GroupRules())
    assert [r["advantages"] for r in kept.rows()] == [[0.0, 0.0]], "a rollout without signal trains at advantage 0"
