"""Fault injection against the API judge (`OpenAIJudge`), VLFeedback's and the world's rating parsers behind
it, the LLM claim splitter and the MMHal-Bench scorer, all driven by the scripted fault server.

Every fault must end as a retry that succeeds, or as a missing value with its reason (a failed `ChatReply`
naming the record, a rating that is None with its reason, a claim split that is a `JudgeError`); never an
exception out of a batch, never a guessed value.
"""

from __future__ import annotations

import json
import time
from email.utils import formatdate

import pytest
from PIL import Image
from test_faults_server import Drop, Hang, Raw, Reply, Status, fault_servers

from vlalign.feedback.judge import ChatRequest, JudgeError, JudgeUnavailable
from vlalign.feedback.judge_api import OpenAIJudge, retry_after
from vlalign.feedback.judges import check_judge, make_judge
from vlalign.feedback.llm_claims import LLMClaims
from vlalign.feedback.vlfeedback import RatingJudge, rating_value

H, VF, E = "Helpfulness", "Visual Faithfulness", "Ethical Considerations"


PICTURE = Image.new("RGB", (4, 4), (200, 30, 30))


@pytest.fixture
def fault_server():
    with fault_servers() as start:
        yield start


@pytest.fixture(autouse=True)
def _no_key(monkeypatch):
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "VLALIGN_API_KEY_ENV"):
        monkeypatch.delenv(name, raising=False)


def _judge(server, **kw) -> OpenAIJudge:
    settings = {"max_retries": 2, "backoff": 0.01, "max_backoff": 0.05, "timeout": 0.5, **kw}
    return OpenAIJudge("m", server.url, **settings)


# ---------------------------------------------------------------- faults a retry gets past

TRANSIENT = {
    "429 without Retry-After": Status(429),
    "429 Retry-After 0": Status(429, {"Retry-After": "0"}),
    "429 Retry-After -1": Status(429, {"Retry-After": "-1"}),
    "429 Retry-After garbage": Status(429, {"Retry-After": "soon"}),
    "429 Retry-After inf": Status(429, {"Retry-After": "inf"}),
    "429 Retry-After nan": Status(429, {"Retry-After": "nan"}),
    "429 Retry-After HTTP date": Status(429, {"Retry-After": formatdate(usegmt=True)}),
    "429 Retry-After past date": Status(429, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}),
    "429 retry-after-ms": Status(429, {"retry-after-ms": "20"}),
    "408": Status(408), "409": Status(409), "500": Status(500), "502": Status(502), "503": Status(503),
    "504": Status(504),
    "hang past the timeout": Hang(1.0),
    "connection dropped": Drop(),
    "connection cut mid-body": Drop(mid_body=True),
    "invalid JSON": Raw("{not json"),
    "HTML page": Raw("<html><body>502 Bad Gateway</body></html>", "text/html"),
    "empty body": Raw(""),
    "JSON list": Raw("[]"),
    "no choices": Raw('{"id": "x"}'),
    "choices empty": Raw('{"choices": []}'),
    "choices [{}]": Raw('{"choices": [{}]}'),
    "choices a string": Raw('{"choices": "hello"}'),
    "message a string": Raw('{"choices": [{"message": "hello"}]}'),
    "content a number": Raw('{"choices": [{"message": {"content": 5}}]}'),
    "content a list": Raw('{"choices": [{"message": {"content": [{"type": "text", "text": "x"}]}}]}'),
}


@pytest.mark.parametrize("name", list(TRANSIENT))
def test_transient_faults_are_retried(fault_server, name):
    server = fault_server({"ask": [TRANSIENT[name], Reply("fine")]})
    judge = _judge(server)
    reply = judge.complete([ChatRequest("ask once", id="r1")])[0]
    assert (reply.text, reply.error) == ("fine", None)
    assert judge.usage.retries == 1 and judge.usage.failures == 0 and server.hits["ask"] == 2


def test_retry_after_is_read_as_seconds_or_a_date():
    assert retry_after({"retry-after": "3"}) == 3.0
    assert retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert retry_after({"retry-after": "-1"}) is None  # negative: no usable wait, so backoff decides
    assert retry_after({"retry-after": "soon"}) is None and retry_after({}) is None
    assert retry_after({"retry-after": "nan"}) is None and retry_after({"retry-after": "inf"}) is None
    ahead = retry_after({"retry-after": formatdate(time.time() + 30, usegmt=True)})
    assert 28 <= ahead <= 30
    assert retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0


def test_an_honoured_retry_after_date_is_waited_for(fault_server):
    server = fault_server({"ask": [Status(429, {"Retry-After": formatdate(time.time() + 2, usegmt=True)}),
                                   Reply("fine")]})
    start = time.monotonic()
    reply = _judge(server, max_backoff=60).complete([ChatRequest("ask", id="r1")])[0]
    assert reply.text == "fine" and 0.5 <= time.monotonic() - start <= 4  # the date's second(s), not backoff's ms


# ---------------------------------------------------------------- faults that end as a failure with its reason

FINAL = {
    "persistent 503": (Status(503, message="overloaded"), "failed after 3 attempts: HTTP 503: 'overloaded'"),
    "persistent 429": (Status(429, {"Retry-After": "-1"}), "failed after 3 attempts: HTTP 429"),
    "persistent hang": (Hang(1.0), "failed after 3 attempts: APITimeoutError: no reply from http://127.0.0.1"),
    "persistent drop": (Drop(), "failed after 3 attempts: APIConnectionError: the connection to http://127.0.0.1"),
    "persistent HTML": (Raw("<html>oops</html>", "text/html"), "failed after 3 attempts: the reply is not JSON: "
                                                               "'<html>oops</html>'"),
    "persistent empty body": (Raw(""), "failed after 3 attempts: the reply is not JSON: an empty body"),
    "persistent choices [{}]": (Raw('{"choices": [{}]}'), "failed after 3 attempts: the reply's first choice has "
                                                         "no message"),
    "400": (Status(400, message="bad request"), "api:m failed: HTTP 400: 'bad request'"),
    "401": (Status(401), "HTTP 401: 'scripted failure' (the endpoint refused the API key: set OPENAI_API_KEY"),
    "403": (Status(403), "refused the API key"),
    "404": (Status(404), "(check the model name 'm' and the base URL http://127.0.0.1"),
    "422": (Status(422), "api:m failed: HTTP 422"),
    "content null, filtered": (Raw(json.dumps({"choices": [{"finish_reason": "content_filter",
                                                            "message": {"content": None}}]})),
                               "api:m failed: the reply holds no text (finish_reason: 'content_filter')"),
}


@pytest.mark.parametrize("name", list(FINAL))
def test_lasting_faults_fail_only_their_request_with_the_reason(fault_server, name):
    fault, reason = FINAL[name]
    server = fault_server({"bad": [fault], "good": [Reply("fine")]})
    judge = _judge(server)
    replies = judge.complete([ChatRequest("good one", id="g1"), ChatRequest("bad one", id="rec-9"),
                              ChatRequest("good two", id="g2")])
    assert [r.text for r in replies] == ["fine", None, "fine"]  # the batch is not lost for one request
    assert replies[1].error.startswith("record rec-9: api:m failed") and reason in replies[1].error
    assert judge.usage.failures == 1 and judge.usage.requests == 3
    retried = "attempts" in reason
    assert server.hits["bad"] == (3 if retried else 1)


def test_usage_that_is_not_numbers_counts_nothing(fault_server):
    server = fault_server({"ask": [Reply("fine", {"prompt_tokens": "many", "completion_tokens": -4})]})
    judge = _judge(server)
    assert judge.complete([ChatRequest("ask", id="r")])[0].text == "fine"
    assert (judge.usage.prompt_tokens, judge.usage.completion_tokens) == (0, 0)


def test_an_unreachable_judge_says_so(fault_server):
    judge = make_judge("api:m@http://127.0.0.1:1/v1", timeout=0.5, max_retries=0)
    reply = judge.complete([ChatRequest("hello", id="r1")])[0]
    assert reply.error.startswith("record r1: api:m failed after 1 attempts: APIConnectionError: cannot reach "
                                  "http://127.0.0.1:1/v1 (ConnectError:")
    with pytest.raises(JudgeUnavailable, match=r"cannot reach http://127.0.0.1:1/v1 \(ConnectError: .*\): start "
                                               r"the server, or fix the base URL"):
        check_judge(judge)


def test_settings_come_from_make_judge_and_are_checked():
    judge = make_judge("api:m@http://127.0.0.1:1/v1", concurrency=3, timeout=7.5, max_retries=1)
    assert (judge.concurrency, judge.timeout, judge.max_retries) == (3, 7.5, 1)
    assert judge.client.timeout == 7.5
    default = make_judge("api:m@http://127.0.0.1:1/v1")
    assert (default.concurrency, default.timeout, default.max_retries) == (8, 120.0, 5)
    for bad in ({"concurrency": 0}, {"timeout": 0}, {"max_retries": -1}, {"timeout": "fast"}, {"max_retries": 2.5}):
        with pytest.raises(ValueError, match="judge setting"):
            make_judge("api:m@http://127.0.0.1:1/v1", **bad)


def test_check_names_the_endpoint_and_the_fix(fault_server, monkeypatch):
    ok = fault_server({}, served=("m", "other"))
    assert _judge(ok).check() == ["m", "other"]
    with pytest.raises(JudgeUnavailable, match=r"does not serve model 'absent'; it serves m, other: name one"):
        OpenAIJudge("absent", ok.url).check()
    refused = fault_server({}, models=Status(401, message="bad key"))
    with pytest.raises(JudgeUnavailable, match=r"refused the API key \(HTTP 401: 'bad key'\): set OPENAI_API_KEY"):
        _judge(refused).check()
    html = fault_server({}, models=Raw("<html>login</html>", "text/html"))
    with pytest.raises(JudgeUnavailable, match=r"answered with '<html>login</html>', not a model list"):
        _judge(html).check()
    hung = fault_server({}, models=Status(503))
    with pytest.raises(JudgeUnavailable, match=r"answered GET /models with HTTP 503"):
        _judge(hung).check()


# ---------------------------------------------------------------- ratings: missing with a reason, never guessed

def _rubric(rating: str) -> str:
    """A VLFeedback-style reply for one answer, with `rating` for Helpfulness and good ones elsewhere."""
    return (f"#### Helpfulness\n#### Answer 1\nRating: {rating}\nRationale: r.\n"
            "#### Ethical Considerations\n#### Answer 1\nRating: 5\nRationale: e.\n"
            "#### Visual Faithfulness\n#### Answer 1\nRating: 4\nRationale: f.\n")


RUBRIC_FORMS = {  # what stands after "Rating:" -> what the Helpfulness reason says
    "10": "rating '10' is not a whole number from 1 to 5", "0": "'0' is not a whole number",
    "four": "'four' is not", "-3": "'-3' is not", "4.5": "'4.5' is not", "4,5": "'4,5' is not",
    "4/10": "'4/10' is not", "": "rating '' is not", "N/A": "'N/A' is not", "٤": "'٤' is not",
    "4\nRating: 3": "states 2 different ratings",
}


@pytest.mark.parametrize("form", list(RUBRIC_FORMS))
def test_malformed_rubric_ratings_are_missing_with_their_reason(fault_server, form):
    server = fault_server({"Instruction: rate": [Reply(_rubric(form))]})
    rated = RatingJudge(_judge(server)).rate([("p1", PICTURE, "rate", ["an answer"])])[0][0]
    assert rated.ratings == {H: None, E: 5, VF: 4}
    assert RUBRIC_FORMS[form] in rated.reasons[H] and list(rated.reasons) == [H]
    assert rated.error.startswith("no usable rating for Helpfulness (")


def test_good_rubric_rating_forms_are_read():
    assert [rating_value(t) for t in ("4", "4.", "**4**", "4/5", "5,", "1)")] == [4, 4, 4, 4, 5, 1]


def test_rubric_without_an_entry_or_a_section(fault_server):
    reply = "#### Helpfulness\n#### Answer 2\nRating: 3\n#### Ethical Considerations\n#### Answer 1\nRating: 5\n"
    server = fault_server({"Instruction: rate": [Reply(reply)]})
    rated = RatingJudge(_judge(server)).rate([("p1", PICTURE, "rate", ["a", "b"])])[0]
    assert rated[0].ratings == {H: None, E: 5, VF: None} and rated[1].ratings == {H: 3, E: None, VF: None}
    assert rated[0].reasons == {H: "no entry for answer 1 in its section", VF: "no 'Visual Faithfulness' section"}


WORLD_FORMS = {  # a world verdict whose faithfulness part reads so -> None; the others stay rated
    "rating: 10.": None, "rating: four.": None, "rating: -3.": None, "rating: 4.5.": None, "rating: .": None,
    "no rating here.": None, "rating: 3. rating: 4.": None, "rating: 3.": 3,
}


@pytest.mark.parametrize("form", list(WORLD_FORMS))
def test_world_verdicts_are_missing_when_malformed(fault_server, form):
    verdict = f"faithfulness: the answer is fine. {form} helpfulness: ok. rating: 4. ethics: safe. rating: 5."
    server = fault_server({"question:": [Reply(verdict)]})
    rated = RatingJudge(_judge(server), style="world").rate([("p1", PICTURE, "describe.", ["a circle."])])[0][0]
    assert rated.ratings == {VF: WORLD_FORMS[form], H: 4, E: 5}
    assert (VF in rated.reasons) == (WORLD_FORMS[form] is None)


def test_world_verdict_rated_twice_differently_is_missing():
    from vlalign.world.judging import parse_verdict

    ratings, _ = parse_verdict("faithfulness: a. rating: 5. faithfulness: b. rating: 2. helpfulness: c. rating: 4.")
    assert ratings == {VF: None, H: 4, E: None}


def test_a_failed_rating_request_leaves_its_answers_missing(fault_server):
    server = fault_server({"Instruction: rate": [Status(500)]})
    rated = RatingJudge(_judge(server)).rate([("p1", PICTURE, "rate", ["a", "b"])])[0]
    assert all(r.ratings == dict.fromkeys((H, VF, E)) for r in rated)
    assert all(r.error.startswith("record p1: api:m failed after 3 attempts: HTTP 500") for r in rated)
    assert rated[0].reasons[H] == rated[0].error


# ---------------------------------------------------------------- the LLM claim splitter

SPLIT_FAULTS = {  # the split reply for the answer "faulty" -> a piece of the JudgeError
    "empty reply": (Reply(""), "the reply is empty"),
    "whitespace reply": (Reply("  \n "), "the reply is empty"),
    "one line of prose": (Reply("I cannot see any image."), "one line of prose, not a list"),
    "a JSON object": (Reply('{"facts": ["a"]}'), "JSON but not an array of strings"),
    "a JSON array of numbers": (Reply("[1, 2]"), "JSON but not an array of strings"),
    "a broken JSON array": (Reply('["There is a dog.", "The'), "JSON but not an array of strings"),
    "a failed request": (Status(503), "the claim splitter's judge failed: record 1: api:m failed after 3 attempts"),
    "an HTML body": (Raw("<html/>", "text/html"), "the reply is not JSON"),
}


@pytest.mark.parametrize("name", list(SPLIT_FAULTS))
def test_split_faults_are_errors_for_their_answer_only(fault_server, name):
    fault, reason = SPLIT_FAULTS[name]
    server = fault_server({"Answer: faulty": [fault], "Answer: good": [Reply("1. There is a dog.")],
                           "1. There is a dog.": [Reply("1. Is there a dog?")]})
    outcomes = LLMClaims(_judge(server)).split_each(["good", "faulty"], keys=["0", "1"])
    assert [(c.text, c.question) for c in outcomes[0]] == [("There is a dog.", "Is there a dog?")]
    assert isinstance(outcomes[1], JudgeError) and str(outcomes[1]).startswith("record 1: ")
    assert reason in str(outcomes[1])
    with pytest.raises(JudgeError, match="record 1"):
        LLMClaims(_judge(server)).split_many(["good", "faulty"], keys=["0", "1"])


def test_split_none_is_no_claims_and_a_retried_fault_is_not_an_error(fault_server):
    server = fault_server({"Answer: hello": [Reply("none")], "Answer: dog": [Status(503), Raw("{"), Reply("- a dog")],
                           "1. a dog": [Reply("1. Is there a dog?")]})
    hello, dog = LLMClaims(_judge(server)).split_many(["hello", "dog"])
    assert hello == [] and [c.question for c in dog] == ["Is there a dog?"]


def test_questions_that_do_not_line_up_are_asked_one_by_one(fault_server):
    server = fault_server({"Answer: two": [Reply("1. A cat.\n2. A hat.")],
                           "1. A cat.\n2. A hat.": [Raw("<html/>", "text/html"), Reply("Sorry.")],
                           "Statement: A cat.": [Reply("Is there a cat?")],
                           "Statement: A hat.": [Reply("")]})
    [outcome] = LLMClaims(_judge(server)).split_each(["two"], keys=["r5"])
    assert isinstance(outcome, JudgeError)
    assert str(outcome) == "record r5: the claim splitter gave no question for fact 2: the reply is not one question: ''"


# ---------------------------------------------------------------- MMHal-Bench

MMHAL_REPLIES = {"answer-six": Reply("Rating: 6"), "answer-ten": Reply("Rating: 10"),
                 "answer-half": Reply("Rating: 4.5"), "answer-html": Raw("<html/>", "text/html"),
                 "answer-down": Status(503), "answer-flaky": [Status(502), Reply("Rating: 2")]}


@pytest.mark.parametrize(("parse", "ratings", "unparsable"), [
    # "10" and "4.5" name no whole rating: unparsable, scored 0 as in the reference, and counted
    ("robust", {"0": 6, "1": 0, "2": 0, "5": 2}, [1, 2]),
    # the official script looks for "rating: N" as a substring: it reads them as 1 and 4
    ("official", {"0": 6, "1": 1, "2": 4, "5": 2}, None),
])
def test_mmhal_scores_only_what_the_judge_said(fault_server, tmp_path, parse, ratings, unparsable):
    from vlalign.evaluate.mmhal import score_mmhal

    server = fault_server({k: v if isinstance(v, list) else [v] for k, v in MMHAL_REPLIES.items()})
    path = tmp_path / "answers.jsonl"
    path.write_text("".join(json.dumps({"question_id": i, "answer": name, "question": "q?", "gt_answer": "g",
                                        "image_content": ["dog"], "question_type": "attribute"}) + "\n"
                            for i, name in enumerate(MMHAL_REPLIES)))
    m = score_mmhal(path, _judge(server), parse=parse)
    # 6 and the retried 2 are ratings; the HTML and 503 replies failed after retries and are not scored
    assert m["ratings"] == ratings
    assert m.get("unparsable_question_ids") == unparsable
    assert m["judge_skipped"] == {"judge_error": 2} and m["judge_skipped_lines"] == {"judge_error": [4, 5]}
