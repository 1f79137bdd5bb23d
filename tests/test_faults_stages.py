"""Faults inside the stages that ask a judge: Silkie's rating stage and response pool, RLAIF-V's labeling
with the LLM splitter. A failed request fails only its record and is asked again on resume; a rating the
reply did not give is kept as missing, counted and logged with its reason; token use adds up over resumes."""

from __future__ import annotations

import re

import pytest
from _models import GivenModels
from PIL import Image

from vlalign.data.records import FeedbackRecord, PromptRecord, ResponseRecord
from vlalign.data.store import RunStore
from vlalign.feedback.judge import ChatReply
from vlalign.feedback.judge_api import Usage
from vlalign.feedback.llm_claims import LLMClaims
from vlalign.feedback.vlfeedback import RatingJudge
from vlalign.methods.silkie import SilkieConfig
from vlalign.stages.label import Labeler, label_stage
from vlalign.stages.pool import PoolMember, pool_stage
from vlalign.stages.ratings import ClaimCounting, rating_stage
from vlalign.stages.round import Round

ANSWERS = {"p0": ["a red circle.", "a red circle and a star.", "a blue square."],
           "p1": ["two circles.", "one circle.", "a star."],
           "p2": ["flaky answer one.", "flaky answer two.", "flaky three."],
           "p3": ["a green triangle.", "a garbled reply.", "a triangle."]}


class Scripted:
    """An API-like judge: VLFeedback rubric replies (leaving out the Helpfulness rating of answers that say
    'star'), claim lists for the LLM splitter (an unreadable one for 'garbled'), and pool answers; requests
    about 'flaky' fail while `down`. Counts its use in `usage` like `OpenAIJudge`."""

    name = "api:scripted"

    def __init__(self, down: bool = True):
        self.down, self.usage, self.prompts = down, Usage(), []

    def complete(self, requests):
        out = []
        for r in requests:
            self.prompts.append(r.prompt)
            if self.down and "flaky" in r.prompt:
                self.usage.add(requests=1, failures=1)
                out.append(ChatReply(None, f"record {r.id}: {self.name} failed after 3 attempts: timed out"))
                continue
            self.usage.add(requests=1, prompt_tokens=10, completion_tokens=5)
            out.append(ChatReply(self._reply(r.prompt), prompt_tokens=10, completion_tokens=5))
        return out

    def _reply(self, prompt: str) -> str:
        if prompt.startswith("You are rating"):
            answers = re.findall(r"<answer \d+> (.*)", prompt)
            blocks = []
            for aspect in ("Helpfulness", "Ethical Considerations", "Visual Faithfulness"):
                blocks.append(f"#### {aspect}")
                blocks += [f"##### Answer {k}\nRating: {1 + len(a.split()) % 5}\nRationale: ok."
                           for k, a in enumerate(answers, start=1) if not ("star" in a and aspect == "Helpfulness")]
            return "\n".join(blocks)
        if prompt.startswith("Break the answer"):
            answer = prompt.rsplit("Answer: ", 1)[1]
            return "I would rather not." if "garbled" in answer else f"1. The image shows {answer}"
        if prompt.startswith("Turn every statement"):
            return "\n".join(f"{n}. Is it true that {line[3:]}?" for n, line in
                             enumerate(re.findall(r"^\d+\. .*$", prompt, re.MULTILINE), start=1))
        return f"an answer of {len(prompt)} characters"


def _responses(store: RunStore):
    image = store.images.put(Image.new("RGB", (8, 8), (10, 200, 30)))
    stage = store.stage("responses")
    stage.write_shard([ResponseRecord(id=f"{p}/m{k}", prompt_id=p, image=image, instruction=f"describe {p}.",
                                      response=a, model=f"m{k}").to_row()
                       for p, answers in ANSWERS.items() for k, a in enumerate(answers)])
    return stage


def _rate(store, judge, counted=None):
    return rating_stage(store.stage("responses"), store.stage("feedback"), RatingJudge(judge), counted)


def test_rating_failed_requests_retry_on_resume_missing_ratings_are_counted_and_usage_adds_up(tmp_path, capsys):
    store = RunStore(tmp_path / "run")
    _responses(store)
    out = _rate(store, Scripted(down=True))
    rows = {f.id: f for f in out.records(FeedbackRecord)}
    assert not any(i.startswith("p2/") for i in rows), "a prompt whose request failed is not written as done"
    assert len(rows) == 9
    assert [e["id"] for e in out.errors() if isinstance(e["id"], list)] == [["p2/m0", "p2/m1", "p2/m2"]]
    assert out.manifest["errors"] == 1
    stars = sorted(f"{p}/m{k}" for p, answers in ANSWERS.items() for k, a in enumerate(answers) if "star" in a)
    for i in stars:
        assert rows[i].score is None and rows[i].details["ratings"]["Helpfulness"] is None
        assert rows[i].details["ratings"]["Ethical Considerations"] is not None  # the rest of the reply is kept
    missing = out.manifest["missing_ratings"]
    assert missing["answers"] == len(stars) == 2 and missing["by_aspect"] == {"Helpfulness": 2}
    logged = {e["id"]: e["error"] for e in out.errors() if isinstance(e["id"], str)}
    assert sorted(logged) == stars and all("MissingRating" in v and "Helpfulness" in v for v in logged.values())
    assert "2 answer(s) have no usable rating" in capsys.readouterr().err
    assert out.manifest["judge_usage"] == {"requests": 4, "failures": 1, "retries": 0, "prompt_tokens": 30,
                                           "completion_tokens": 15}

    again = Scripted(down=False)  # the endpoint is back; a new process has a fresh usage counter
    out = _rate(store, again)
    assert len(again.prompts) == 1 and "flaky" in again.prompts[0], "only the failed prompt is asked again"
    assert sorted(f.id for f in out.records(FeedbackRecord)) == sorted(f"{p}/m{k}" for p in ANSWERS for k in range(3))
    assert out.manifest["errors"] == 0
    assert out.manifest["judge_usage"] == {"requests": 5, "failures": 1, "retries": 0, "prompt_tokens": 40,
                                           "completion_tokens": 20}
    assert len([e for e in out.errors() if isinstance(e["id"], str)]) == 2, "each missing rating is logged once"

    idle = Scripted(down=False)
    _rate(store, idle)
    assert idle.prompts == [] and out.manifest["judge_usage"]["requests"] == 5


def test_claim_counting_with_the_llm_splitter_fails_only_the_prompt_it_could_not_count(tmp_path):
    store = RunStore(tmp_path / "run")
    _responses(store)
    judge = Scripted(down=False)
    counted = ClaimCounting("llm", ["world/describe"], set(ANSWERS), LLMClaims(judge))
    out = _rate(store, judge, counted)
    rows = {f.id: f for f in out.records(FeedbackRecord)}
    assert sorted({i.split("/")[0] for i in rows}) == ["p0", "p1", "p2"]
    assert rows["p0/m0"].details["claims"] == ["The image shows a red circle."]
    [error] = [e for e in out.errors() if "p3/m1" in str(e["id"])]
    assert "p3/m1" in error["error"] and "no list of facts" in error["error"]
    assert out.manifest["errors"] == 1


def _round(tmp_path, judge, pool) -> Round:
    store = RunStore(tmp_path / "run")
    image = store.images.put(Image.new("RGB", (8, 8), (10, 200, 30)))
    prompts = store.stage("prompts")
    prompts.write_shard([PromptRecord(id=p, image=image, instruction=f"describe {p}{' flaky' if p == 'p2' else ''}.",
                                      source="file").to_row() for p in ANSWERS])
    config = SilkieConfig(pool=pool, answers_per_prompt=2, judge="api:scripted")
    return Round(1, config, store, prompts, None, None, GivenModels(lambda spec: judge))


def test_a_failed_pool_reply_fails_only_its_record(tmp_path):
    pool = [PoolMember("api:a", max_new_tokens=7), PoolMember("api:b", max_new_tokens=9)]
    judge = Scripted(down=True)
    r = _round(tmp_path, judge, pool)
    out = pool_stage(r, r.stage("responses"), pool, 2)
    ids = sorted(row["id"] for row in out.rows())
    assert ids == sorted(f"{p}/api:{m}" for p in ANSWERS for m in "ab" if p != "p2")
    assert sorted(e["id"] for e in out.errors()) == ["p2/api:a", "p2/api:b"]
    assert all("timed out" in e["error"] for e in out.errors())
    asked = len(judge.prompts)
    assert asked == 8, "each answer was asked once: the good ones were not asked again"
    judge.down = False
    pool_stage(r, r.stage("responses"), pool, 2)
    assert len(judge.prompts) == asked + 2 and len(out.rows()) == 8 and out.manifest["errors"] == 0


def test_labeling_with_the_llm_splitter_fails_only_the_answer_it_could_not_split(tmp_path, tiny_world_model_dir):
    from vlalign.models.load import load

    store = RunStore(tmp_path / "run")
    responses = _responses(store)
    judge = Scripted(down=False)
    model, processor = load(tiny_world_model_dir, dtype="fp32")
    out = label_stage(store, responses, store.stage("feedback"), Labeler(model, processor, "tiny"), LLMClaims(judge),
                      batch_size=6)
    assert len(out.rows()) == 11 and "p3/m1" not in {row["id"] for row in out.rows()}
    assert [e["id"] for e in out.errors()] == ["p3/m1"] and out.manifest["errors"] == 1
    splits = [p for p in judge.prompts if p.startswith("Break the answer")]
    assert len(splits) == 12, "every answer was split once: one bad answer did not send its batch again"


class Killed(Scripted):
    """`Scripted`, killed (KeyboardInterrupt) at its request number `at`."""

    def __init__(self, at: int):
        super().__init__(down=False)
        self.at = at

    def complete(self, requests):
        if len(self.prompts) + len(requests) >= self.at:
            raise KeyboardInterrupt("killed")
        return super().complete(requests)


def test_a_kill_in_the_response_pool_loses_one_batch_of_the_runs_batch_size(tmp_path):
    """The pool writes its answers every `batch_size` (the run's batch of sampling stages), so a kill loses at
    most that many, not a fixed 64."""
    pool = [PoolMember("api:a", max_new_tokens=7), PoolMember("api:b", max_new_tokens=9)]
    r = _round(tmp_path, Killed(at=7), pool)
    r.config = SilkieConfig(pool=pool, answers_per_prompt=2, judge="api:scripted", batch_size=2)
    with pytest.raises(KeyboardInterrupt):
        pool_stage(r, r.stage("responses"), pool, 2)
    assert len(r.stage("responses").rows()) == 6, "the three batches before the kill are on disk"
    again = Scripted(down=False)
    r.models = GivenModels(lambda spec: again)
    out = pool_stage(r, r.stage("responses"), pool, 2)
    assert len(again.prompts) == 2 and len(out.rows()) == 8
