"""The `api:` labeler and the judge behind it against a scripted server: a reply whose log-probs are not
log-probabilities (NaN, infinite, positive, not a number) is a failed request, retried, then logged as a
missing label, never a P(yes); RLAIF-V's labeling stage counts the labeler's and the LLM splitter's requests,
retries and failures in its manifest; an endpoint that refuses requests with the same 401, 403 or 404 stops
the run after a few requests with the fix, instead of every record being sent and failed."""

from __future__ import annotations

import json
import math

import pytest
from PIL import Image
from test_faults_judge import _judge, _no_key  # noqa: F401 - the client of the fault suites; no key in the environment
from test_faults_server import Raw, Reply, Status, fault_servers

from vlalign.data.records import FeedbackRecord, ResponseRecord
from vlalign.data.store import RunStore
from vlalign.feedback.claims import SentenceClaims
from vlalign.feedback.judge import ChatRequest, JudgeUnavailable
from vlalign.feedback.llm_claims import LLMClaims
from vlalign.feedback.server_backends import ApiLabeler
from vlalign.stages.label import Labeler, label_stage

PICTURE = Image.new("RGB", (8, 8), (200, 30, 30))


@pytest.fixture
def fault_server():
    with fault_servers() as start:
        yield start


def scored(yes, no, token=None) -> Reply:
    """A one-token reply whose first step's top log-probs give "Yes" `yes` and "No" `no` (any JSON value,
    NaN and infinities written as Python's json writes them)."""
    top = [{"token": "Yes", "logprob": yes, "bytes": []}, {"token": "No", "logprob": no, "bytes": []}]
    body = {"choices": [{"index": 0, "finish_reason": "length", "message": {"role": "assistant", "content": "Yes"},
                         "logprobs": {"content": [{"token": "Yes", "logprob": yes if token is None else token,
                                                   "bytes": [], "top_logprobs": top}]}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1}}
    return Raw(json.dumps(body))


BROKEN = {  # a reply -> why it is not a P(yes)
    "yes NaN": scored(float("nan"), -1.0),
    "yes +inf": scored(float("inf"), -1.0),
    "no -inf": scored(-0.1, float("-inf")),
    "positive log-probs (P(yes) 0.73 before)": scored(1.0, 0.0),
    "the token's own log-prob NaN": scored(-0.1, -2.5, token=float("nan")),
    "a log-prob that is a string": scored("-0.1", -2.5),
    "a log-prob that is null": scored(None, -2.5),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_a_broken_log_prob_is_a_failed_request_never_a_value(fault_server, name):
    server = fault_server({"bad claim": [BROKEN[name]], "good claim": [scored(math.log(0.8), math.log(0.2))]})
    judge = _judge(server)
    labeler = ApiLabeler(judge, judge.name)
    good, bad = labeler.yes_probability([PICTURE, PICTURE], ["a good claim?", "a bad claim?"], ["r1/claim0", "r2/claim0"])
    assert good == pytest.approx(0.8)
    assert isinstance(bad, Exception) and str(bad).startswith("record r2/claim0: api:m failed after 3 attempts: ")
    assert "log-probs are broken" in str(bad) or "malformed" in str(bad)
    assert server.hits["bad claim"] == 3  # asked again twice, as any broken reply is
    assert judge.usage.to_dict() | {"prompt_tokens": 0, "completion_tokens": 0} == {
        "requests": 2, "failures": 1, "retries": 2, "prompt_tokens": 0, "completion_tokens": 0}


def test_a_broken_reply_then_a_good_one_is_a_retry_that_succeeds(fault_server):
    server = fault_server({"claim": [scored(float("nan"), -1.0), scored(-0.05, -3.0)]})
    judge = _judge(server)
    [p] = ApiLabeler(judge, judge.name).yes_probability([PICTURE], ["a claim?"], ["r1/claim0"])
    assert p == pytest.approx(math.exp(-0.05) / (math.exp(-0.05) + math.exp(-3.0)))
    assert judge.usage.retries == 1 and judge.usage.failures == 0


def test_rounding_just_above_zero_is_a_certain_token(fault_server):
    server = fault_server({"claim": [scored(3e-7, -20.0)]})
    judge = _judge(server)
    [p] = ApiLabeler(judge, judge.name).yes_probability([PICTURE], ["a claim?"], ["r1/claim0"])
    assert p == pytest.approx(1.0) and judge.usage.failures == 0


# ---------------------------------------------------------------- RLAIF-V's labeling stage

ANSWERS = {"r0": "A red circle.", "r1": "A flaky square.", "r2": "A blue star. A green dot."}


def _responses(store: RunStore):
    image = store.images.put(PICTURE)
    stage = store.stage("responses")
    stage.write_shard([ResponseRecord(id=k, prompt_id="p", image=image, instruction="describe.", response=a,
                                      model="m").to_row() for k, a in ANSWERS.items()])
    return stage


def test_labeling_logs_broken_labels_as_missing_and_counts_them(fault_server, tmp_path):
    down = fault_server({"flaky": [scored(float("nan"), -1.0)]}, default=[scored(-0.1, -2.5)])
    store = RunStore(tmp_path / "run")
    responses = _responses(store)
    judge = _judge(down)
    out = label_stage(store, responses, store.stage("feedback"), Labeler(ApiLabeler(judge, judge.name), None, judge.name),
                      SentenceClaims(), batch_size=8)
    rows = {f.id: f for f in out.records(FeedbackRecord)}
    assert sorted(rows) == ["r0", "r2"], "the response with a broken label is not written"
    assert all(not math.isnan(c["p_yes"]) for f in rows.values() for c in f.details["claims"])
    [error] = out.errors()
    assert error["id"] == "r1" and "record r1/claim0" in error["error"] and "log-probs are broken" in error["error"]
    assert out.manifest["errors"] == 1
    assert out.manifest["labeler_usage"] == {"requests": 4, "failures": 1, "retries": 2, "prompt_tokens": 15,
                                             "completion_tokens": 3}
    up = fault_server({}, default=[scored(-0.1, -2.5)])  # fixed: a resume asks the failed one again
    judge = _judge(up)
    out = label_stage(store, responses, store.stage("feedback"), Labeler(ApiLabeler(judge, judge.name), None, judge.name),
                      SentenceClaims(), batch_size=8)
    assert sorted(f.id for f in out.records(FeedbackRecord)) == ["r0", "r1", "r2"] and out.manifest["errors"] == 0
    assert up.hits[""] == 1
    assert out.manifest["labeler_usage"] == {"requests": 5, "failures": 1, "retries": 2, "prompt_tokens": 20,
                                             "completion_tokens": 4}


def test_labeling_counts_the_llm_splitters_requests_apart(fault_server, tmp_path):
    server = fault_server({"Answer: A red circle.": [Status(503), Reply("1. There is a red circle.")],
                           "Answer: A flaky square.": [Status(500)],
                           "Answer: A blue star.": [Reply("none")],
                           "Turn every statement": [Reply("1. Is there a red circle?")]},
                          default=[scored(-0.1, -2.5)])
    store = RunStore(tmp_path / "run")
    labeler, splitter = _judge(server), _judge(server, max_retries=1)
    out = label_stage(store, _responses(store), store.stage("feedback"), Labeler(ApiLabeler(labeler, labeler.name), None, labeler.name),
                      LLMClaims(splitter), batch_size=8)
    assert sorted(f.id for f in out.records(FeedbackRecord)) == ["r0", "r2"]
    # three answers split (one retried into a success, one failing after its retry), one list of questions
    assert out.manifest["splitter_usage"] == {"requests": 4, "failures": 1, "retries": 2, "prompt_tokens": 9,
                                              "completion_tokens": 6}
    assert out.manifest["labeler_usage"]["requests"] == 1 and out.manifest["labeler_usage"]["failures"] == 0


# ---------------------------------------------------------------- a refused key stops the run


@pytest.mark.parametrize("status, fix", [(401, "set OPENAI_API_KEY to a valid key"),
                                         (403, "set OPENAI_API_KEY to a valid key"),
                                         (404, "check the model name 'm'")])
def test_the_same_refusal_stops_after_a_few_requests_with_the_fix(fault_server, tmp_path, status, fix):
    server = fault_server({}, default=[Status(status, message="refused")])
    store = RunStore(tmp_path / "run")
    image = store.images.put(PICTURE)
    responses = store.stage("responses")
    responses.write_shard([ResponseRecord(id=f"r{i}", prompt_id=f"p{i}", image=image, instruction="describe.",
                                          response="A red circle. A blue square.", model="m").to_row()
                           for i in range(12)])  # 24 claims, one request each
    judge = _judge(server, concurrency=4)
    with pytest.raises(JudgeUnavailable) as stopped:
        label_stage(store, responses, store.stage("feedback"), Labeler(ApiLabeler(judge, judge.name), None, judge.name),
                      SentenceClaims(), batch_size=4)
    message = str(stopped.value)
    assert f"refused 3 requests in a row (HTTP {status}: 'refused'" in message and fix in message
    assert "run the same command again" in message
    # 4 at once: after the third refusal nothing more is sent (at most 2 more were sent while the first ones
    # were still answered), of the 24 requests the stage would make
    assert 3 <= server.hits[""] <= 4 + 2, server.hits
    assert store.stage("feedback").errors() == [], "no record is logged as failed for what is the setup's fault"
    with pytest.raises(JudgeUnavailable):
        judge.complete([])  # and nothing more is sent by this judge


def test_refusals_that_are_not_in_a_row_do_not_stop(fault_server):
    server = fault_server({"missing": [Status(404)]}, default=[Reply("fine")])
    judge = _judge(server, concurrency=1)
    replies = judge.complete([ChatRequest("missing" if i % 2 else "here", id=f"r{i}") for i in range(12)])
    assert [r.ok for r in replies] == [i % 2 == 0 for i in range(12)]
    assert server.hits["missing"] == 6
