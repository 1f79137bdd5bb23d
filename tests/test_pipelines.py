"""The method pipelines end to end on a tiny random-weight world model: RLAIF-V rounds (and resuming them),
Silkie through a judge behind a real localhost OpenAI-compatible server, and POVID's two stages. These
check the wiring, the run store and resumption; the quality bars are measured by `vlalign demo`."""

from __future__ import annotations

import json
import re
import threading

import pytest

from vlalign.data.records import FeedbackRecord, PairRecord, ResponseRecord
from vlalign.feedback.judge import ChatReply
from vlalign.pipelines.povid import POVIDConfig, run_povid
from vlalign.pipelines.rlaif_v import RLAIFVConfig, run_rlaif_v
from vlalign.pipelines.silkie import PoolMember, SilkieConfig, run_silkie
from vlalign.serve import make_server
from vlalign.train.dpo import DPOConfig
from vlalign.train.loop import OptimConfig
from vlalign.train.povid import NoiseConfig

SMALL_DPO = DPOConfig(beta=0.1, batch_size=4, epochs=1, optim=OptimConfig(lr=1e-3, log_every=1))


def _rlaif_v(**kw) -> RLAIFVConfig:
    """The shipped base (a random model names no objects, so its answers hold no claims to label)."""
    from vlalign.models.generate import Decoding

    return RLAIFVConfig(**{"policy": "world:base", "labeler": "self", "rounds": 2, "prompts_per_round": 6,
                           "samples": 3, "decoding": Decoding(max_new_tokens=48, temperature=1.0),
                           "dpo": SMALL_DPO, "eval_scenes": 0, "batch_size": 8, **kw})


def _shard_times(stage_dir):
    return {p.name: p.stat().st_mtime_ns for p in stage_dir.glob("shard-*.parquet")}


def test_rlaif_v_rounds_then_resume_by_round_and_by_stage(tmp_path, monkeypatch):
    import vlalign.pipelines.rlaif_v as rlaif_v

    config = _rlaif_v()
    calls = {"n": 0}
    real_train = rlaif_v.train_dpo

    def train_then_fail_in_round_two(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("stopped during round 2's training")
        return real_train(*args, **kwargs)

    monkeypatch.setattr(rlaif_v, "train_dpo", train_then_fail_in_round_two)
    with pytest.raises(KeyboardInterrupt):
        run_rlaif_v(tmp_path, config)
    assert (tmp_path / "round1" / "policy" / "round.json").exists()
    assert not (tmp_path / "round2" / "policy").exists()
    round1_responses = _shard_times(tmp_path / "round1" / "responses")
    round2_feedback = _shard_times(tmp_path / "round2" / "feedback")
    assert round1_responses and round2_feedback

    monkeypatch.setattr(rlaif_v, "train_dpo", real_train)
    result = run_rlaif_v(tmp_path, config)
    # round 1 came back from disk, round 2 resumed after its finished stages: nothing sampled or labeled twice
    assert _shard_times(tmp_path / "round1" / "responses") == round1_responses
    assert _shard_times(tmp_path / "round2" / "feedback") == round2_feedback
    assert [r["round"] for r in result["rounds"]] == [1, 2]
    for r in result["rounds"]:
        assert r["responses"] == 6 * 3 and r["pairs"] >= 1
    # round 2 sampled fresh prompts, from the policy of round 1
    prompts = [{row["id"] for row in _rows(tmp_path / f"round{k}" / "prompts")} for k in (1, 2)]
    assert not prompts[0] & prompts[1]
    responses = _rows(tmp_path / "round2" / "responses")
    assert {r["model"] for r in responses} == {"policy@round2"}
    feedback = [FeedbackRecord.from_row(f) for f in _rows(tmp_path / "round2" / "feedback")]
    assert {f.meta["labeler"] for f in feedback} == {"policy@round2"}  # self-alignment
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["config"]["labeler"] == "self" and len(summary["rounds"]) == 2
    _claim_balanced_pairs_of(tmp_path)


def _claim_balanced_pairs_of(run):
    """Round 1's answers paired again with claim balance: the claim counts come from the feedback records."""
    from vlalign.data.records import PairRecord
    from vlalign.data.store import RunStore, Stage
    from vlalign.feedback.pairs import PairRules
    from vlalign.pipelines.stages import pair_stage

    claims = {f.response_id: len(f.details["claims"])
              for f in map(FeedbackRecord.from_row, _rows(run / "round1" / "feedback"))}
    rules = PairRules(min_gap=0, max_per_prompt=None, length_balance=False, claim_balance=True)
    out = pair_stage(Stage(run / "round1" / "responses"), Stage(run / "round1" / "feedback"),
                     RunStore(run).stage("round1/balanced_pairs"), rules)
    pairs = [PairRecord.from_row(p).meta for p in out.rows()]
    assert pairs and all(claims[p["chosen_id"]] >= claims[p["rejected_id"]] for p in pairs)


def _rows(stage_dir):
    from vlalign.data.store import Stage

    return Stage(stage_dir).rows()


def test_rlaif_v_sampling_is_deconfounded_and_reproducible(tmp_path):
    config = _rlaif_v(rounds=1)
    run_rlaif_v(tmp_path / "a", config)
    run_rlaif_v(tmp_path / "b", config)
    a, b = (sorted(_rows(tmp_path / k / "round1" / "responses"), key=lambda r: r["id"]) for k in "ab")
    assert [(r["id"], r["seed"], r["response"]) for r in a] == [(r["id"], r["seed"], r["response"]) for r in b]
    by_prompt: dict[str, list] = {}
    for r in a:
        by_prompt.setdefault(r["prompt_id"], []).append(r)
    for rs in by_prompt.values():
        assert len({r["seed"] for r in rs}) == 3  # one recorded seed per sample
        decodings = {json.dumps(ResponseRecord.from_row(r).meta["decoding"], sort_keys=True) for r in rs}
        assert len(decodings) == 1  # identical decoding


class LengthJudge:
    """A judge for the server: rates each listed answer by its length (longer is more helpful, and faithful
    up to 12 words), in VLFeedback's reply format, leaving one rating out when an answer says 'star'."""

    name = "length-judge"

    def complete(self, requests):
        replies = []
        for r in requests:
            answers = re.findall(r"<answer \d+> (.*)", r.prompt)
            blocks = []
            for aspect in ("Helpfulness", "Ethical Considerations", "Visual Faithfulness"):
                blocks.append(f"#### {aspect}")
                for k, a in enumerate(answers, start=1):
                    n = len(a.split())
                    rating = min(5, 1 + n // 4) if aspect != "Visual Faithfulness" else (5 if n <= 12 else 2)
                    if "star" in a and aspect == "Helpfulness":
                        continue
                    blocks.append(f"##### Answer {k}\nRating: {rating}\nRationale: {n} words.")
            replies.append(ChatReply("\n".join(blocks), prompt_tokens=10, completion_tokens=20))
        return replies


@pytest.fixture
def judge_server():
    server = make_server(LengthJudge(), port=0, model_name="length-judge")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"api:length-judge@http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def test_silkie_pool_judge_pairs_train(tiny_world_model_dir, tmp_path, judge_server):
    model = str(tiny_world_model_dir)
    config = SilkieConfig(policy=model, n_prompts=6, judge=judge_server, judge_style="vlfeedback",
                          pool=[PoolMember(model, max_new_tokens=8), PoolMember(model, temperature=1.0, max_new_tokens=16),
                                PoolMember(model, name="long", temperature=1.0, max_new_tokens=30)],
                          answers_per_prompt=3, dpo=SMALL_DPO, eval_scenes=0)
    summary = run_silkie(tmp_path, config)
    responses = _rows(tmp_path / "responses")
    assert len(responses) == 6 * 3
    by_prompt: dict[str, set] = {}
    for r in responses:
        by_prompt.setdefault(r["prompt_id"], set()).add(r["model"])
    assert all(len(models) == 3 for models in by_prompt.values())  # each answer from a different member
    feedback = {f.response_id: f for f in map(FeedbackRecord.from_row, _rows(tmp_path / "feedback"))}
    texts = {r["id"]: r["response"] for r in responses}
    for rid, f in feedback.items():
        ratings = f.details["ratings"]
        if "star" in texts[rid]:
            assert ratings["Helpfulness"] is None and f.score is None  # missing, never guessed
        else:
            assert f.score == pytest.approx(sum(ratings.values()) / 3)
    sources = {r["id"]: r["source"] for r in _rows(tmp_path / "prompts")}
    assert {"world/describe"} < set(sources.values())
    for f in feedback.values():  # claims are counted for the answers to descriptions, for claim balance
        assert ("claims" in f.details) == (sources[f.prompt_id] == "world/describe")
    claims = {f.response_id: len(f.details.get("claims", [])) for f in feedback.values()}
    for p in map(PairRecord.from_row, _rows(tmp_path / "pairs")):
        assert p.chosen_score > p.rejected_score
        assert claims[p.meta["chosen_id"]] >= claims[p.meta["rejected_id"]]
    assert summary["silkie"]["pairs"] == len(_rows(tmp_path / "pairs")) > 0
    assert summary["silkie_longest"]["pairs"] == len(_rows(tmp_path / "longest" / "pairs")) > 0
    assert summary["judge_usage"]["requests"] == 6 and summary["judge_usage"]["failures"] == 0
    again = run_silkie(tmp_path, config)  # resumes from the finished stages and trained models
    assert again["silkie"] == summary["silkie"]


def test_silkie_counts_claims_only_for_the_configured_sources():
    from vlalign.feedback.claims import WorldClaims
    from vlalign.pipelines.silkie import ClaimCounting

    counting = ClaimCounting("world", ["world/describe"], {"p1"}, WorldClaims())
    answers = [ResponseRecord(id="p1/a", prompt_id="p1", image="", instruction="describe the image.",
                              response="there is a red circle and a blue square. there is no star.", model="a"),
               ResponseRecord(id="p2/a", prompt_id="p2", image="", instruction="is there a star?",
                              response="no.", model="a")]
    assert counting(answers) == [["there is a red circle.", "there is a blue square.", "there is no star."], None]
    assert counting.describe() == {"splitter": "world", "sources": ["world/describe"]}
    assert ClaimCounting.for_run(SilkieConfig(claim_balance=[]), prompts=None) is None


def test_povid_two_stages_from_injected_pairs(tiny_world_model_dir, tmp_path):
    config = POVIDConfig(policy=str(tiny_world_model_dir), n_prompts=8, stage1=SMALL_DPO, stage2=SMALL_DPO,
                         noise=NoiseConfig(step=500), eval_scenes=0, cooccurrence_scenes=200)
    summary = run_povid(tmp_path, config)
    pairs = _rows(tmp_path / "pairs")
    assert summary["pairs"] == len(pairs) == 8
    for p in map(PairRecord.from_row, pairs):
        assert p.chosen != p.rejected and p.meta["edits"]
    history = json.loads((tmp_path / "stage2" / "train_history.json").read_text())["history"]
    assert all("noisy_loss" in h and "injected_loss" in h for h in history)
    assert (tmp_path / "stage1" / "done.json").exists() and (tmp_path / "stage2" / "done.json").exists()
