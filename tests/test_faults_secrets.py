"""Secrets: the API judge runs with a key in the environment and another in its base URL against a server
that echoes the request's headers in error bodies and replies; no error string, reply, usage object, repr
or check() message the client gives back may contain either key (plain, in Basic form, or cut short)."""

from __future__ import annotations

import base64
import json

import pytest
from test_faults_server import EchoReply, Raw, Reply, Status, fault_servers

from vlalign.feedback.judge import ChatRequest, JudgeUnavailable
from vlalign.feedback.judge_api import OpenAIJudge, redact_secrets, safe_url
from vlalign.feedback.judges import make_judge

ENV_KEY = "sk-envsecret-0123456789abcdef"
URL_KEY = "urlsecret-9876543210"
SECRETS = (ENV_KEY, URL_KEY, base64.b64encode(f"alice:{URL_KEY}".encode()).decode(), ENV_KEY[:12], URL_KEY[:12])


@pytest.fixture
def fault_server():
    with fault_servers() as start:
        yield start


def _leaks(*texts: object) -> list[str]:
    return [s for s in SECRETS for t in texts if s in str(t)]


ECHOES = {
    "401 echoing headers": [Status(401, echo_headers=True)],
    "400 echoing headers": [Status(400, echo_headers=True)],
    "500 echoing headers, retried": [Status(500, echo_headers=True)],
    "long echo cut in an excerpt": [Status(503, message="x" * 120, echo_headers=True)],
    "HTML echo": [EchoReply(raw=True)],
    "reply echoing headers": [EchoReply()],
    "fine": [Reply("fine")],
}


@pytest.mark.parametrize("userinfo", [f"alice:{URL_KEY}@", ""], ids=["key in the URL too", "key in the environment"])
@pytest.mark.parametrize("name", list(ECHOES))
def test_no_key_comes_back_from_the_judge(fault_server, monkeypatch, name, userinfo):
    monkeypatch.setenv("MY_JUDGE_KEY", ENV_KEY)
    monkeypatch.setenv("VLALIGN_API_KEY_ENV", "MY_JUDGE_KEY")
    server = fault_server({"ask": ECHOES[name]})
    url = server.url.replace("http://", f"http://{userinfo}")  # with userinfo, the client sends Basic auth
    judge = make_judge(f"api:m@{url}", max_retries=1, timeout=2)
    judge.backoff = 0.01
    [reply] = judge.complete([ChatRequest("ask away", id="r1")])
    assert _leaks(server.headers), "the key did reach the server, so an echo would carry it back"
    assert not _leaks(reply.text, reply.error, reply.meta, judge.usage.to_dict(), repr(judge), judge.name)
    if name == "fine":
        assert reply.text == "fine"
    if name == "reply echoing headers":
        assert "***" in reply.text and json.loads(reply.text)  # still the reply, with the key masked


def test_no_key_comes_back_from_check(fault_server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", ENV_KEY)
    url_of = lambda server: server.url.replace("http://", f"http://alice:{URL_KEY}@")  # noqa: E731
    for models in (Status(401, echo_headers=True), Raw(f"<html>{ENV_KEY}</html>", "text/html"),
                   Status(500, echo_headers=True)):
        server = fault_server({}, models=models)
        with pytest.raises(JudgeUnavailable) as caught:
            OpenAIJudge("m", url_of(server)).check()
        assert str(caught.value).startswith("judge api:m: ") and not _leaks(caught.value)
        assert f"http://***@127.0.0.1:{server.server_port}" not in str(caught.value)  # shown without userinfo
    unreachable = OpenAIJudge("m", f"http://alice:{URL_KEY}@127.0.0.1:1/v1", timeout=0.5)
    with pytest.raises(JudgeUnavailable, match=r"cannot reach http://127.0.0.1:1/v1") as caught:
        unreachable.check()
    assert not _leaks(caught.value)


def test_a_spec_without_a_model_does_not_show_its_url_key():
    with pytest.raises(ValueError) as caught:
        make_judge(f"api:@http://alice:{URL_KEY}@127.0.0.1:1/v1")
    assert not _leaks(caught.value)


def test_redact_secrets_and_safe_url():
    text = (f'Authorization: Bearer {ENV_KEY}\n{{"authorization": "Basic YWxpY2U6c2VjcmV0"}} api_key={ENV_KEY}&x=1 '
            f'x-api-key: abcdef123456 see http://alice:{URL_KEY}@host/v1 and token="t0k3n-value"')
    clean = redact_secrets(text)
    assert ENV_KEY not in clean and URL_KEY not in clean and "YWxpY2U6c2VjcmV0" not in clean
    assert "abcdef123456" not in clean and "t0k3n-value" not in clean
    assert "http://***@host/v1" in clean and "Authorization: ***" in clean and "x=1" in clean
    assert redact_secrets(f"the key {ENV_KEY[:20]} leaked", [ENV_KEY[:20]]) == "the key *** leaked"
    assert redact_secrets("prompt_tokens: 12, max_tokens=5") == "prompt_tokens: 12, max_tokens=5"  # not secrets
    assert safe_url(f"http://alice:{URL_KEY}@host:8000/v1?api-version=2&api_key=zzz") == \
        "http://host:8000/v1?api-version=2&api_key=%2A%2A%2A"


# ---------------------------------------------------------------- everything a run writes

PASSWORD, QUERY_KEY = "pa55-w0rd-in-the-url", "query-k3y-in-the-url"


def test_redact_masks_urls_inside_any_recorded_value():
    from vlalign.redaction import redact

    spec = f"api:m@http://alice:{PASSWORD}@host:8000/v1?key={QUERY_KEY}&api-version=2"
    clean = redact({"labeler": spec, "pool": [{"model": spec}], "api_key": "sk-x", "rounds": 2, "note": None})
    assert PASSWORD not in str(clean) and QUERY_KEY not in str(clean)
    assert clean["labeler"] == "api:m@http://***@host:8000/v1?key=***&api-version=2"
    assert clean["api_key"] == "***" and clean["rounds"] == 2 and clean["note"] is None
    assert redact_secrets(f"see https://h/v1?sig={QUERY_KEY}, then ?page=2") == "see https://h/v1?sig=***, then ?page=2"


@pytest.mark.slow
def test_a_run_with_credentials_in_its_specs_writes_them_nowhere(fault_server, tmp_path, monkeypatch, capsys):
    """An RLAIF-V run whose labeler URL carries a password and a key: summary.json, every manifest, the
    error logs (one reply breaks), the report and every progress or warning line show them masked."""
    from test_faults_labeler import scored

    from vlalign import runner
    from vlalign.config import load_config
    from vlalign.plugins import METHODS

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    server = fault_server({"heart": [scored(float("nan"), -1.0)], "square": [scored(-2.5, -0.1)]},
                          default=[scored(-0.1, -2.5)])
    url = server.url.replace("http://", f"http://alice:{PASSWORD}@") + f"?key={QUERY_KEY}"
    config = load_config(METHODS.get("rlaif-v").config, None, [
        "policy=world:base", "runtime.dtype=fp32", f"labeler=api:m@{url}", "rounds=1", "prompts.source=world",
        "prompts.per_round=6", "samples=3", "decoding.max_new_tokens=24", "decoding.temperature=1.0",
        "splitter=world", "batch_size=12", "train.batch_size=4", "train.optim.lr=1e-3", "eval=[]",
        "eval_base=false", "api.max_retries=0", "report=true"])
    runner.run(METHODS.get("rlaif-v"), config, tmp_path / "run")
    printed = capsys.readouterr()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["config"]["labeler"] == f"api:m@http://***@127.0.0.1:{server.server_port}/v1?key=***"
    written = [p for p in (tmp_path / "run").rglob("*") if p.is_file() and p.suffix in (".json", ".jsonl", ".html")]
    assert {"summary.json", "index.html", "errors.html", ".errors.jsonl", ".manifest.json"} <= {p.name for p in written}
    assert any(p.name == ".errors.jsonl" and p.read_text() for p in written), "a reply broke, and was logged"
    leaked = [str(p) for p in written for s in (PASSWORD, QUERY_KEY) if s in p.read_text(errors="replace")]
    leaked += [s for s in (PASSWORD, QUERY_KEY) if s in printed.out + printed.err]
    assert not leaked, leaked
