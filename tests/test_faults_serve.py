"""`vlalign serve` under load: concurrent clients are answered in batches, and work that nobody waits for any
more (a client that hung up, or one whose timeout passed while its request queued) is never generated."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from vlalign.feedback.judge import ChatReply, ChatRequest, Choice
from vlalign.feedback.judge_api import OpenAIJudge
from vlalign.serve import make_server


class SlowJudge:
    """Answers every request with its prompt reversed after `seconds` per batch, keeping each batch it got."""

    name = "slow"

    def __init__(self, seconds: float):
        self.seconds, self.batches = seconds, []

    def complete(self, requests):
        self.batches.append([r.prompt for r in requests])
        time.sleep(self.seconds)
        return [ChatReply(r.prompt[::-1]) for r in requests]

    @property
    def seen(self) -> list[str]:
        return [p for batch in self.batches for p in batch]


@pytest.fixture
def slow_server():
    running = []

    def start(seconds: float, **kw):
        judge = SlowJudge(seconds)
        server = make_server(judge, port=0, model_name="slow", **kw)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        running.append(server)
        return server, judge

    yield start
    for server in running:
        server.shutdown()
        server.server_close()


def _client(server, **kw) -> OpenAIJudge:
    return OpenAIJudge("slow", f"http://127.0.0.1:{server.server_port}/v1", max_retries=0, **kw)


def test_concurrent_requests_are_answered_in_batches(slow_server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    server, judge = slow_server(0.3)
    prompts = [f"prompt {i}" for i in range(12)]
    replies = _client(server, concurrency=12).complete([ChatRequest(p, id=p) for p in prompts])
    assert [r.text for r in replies] == [p[::-1] for p in prompts]  # each client got its own answer
    assert sorted(judge.seen) == sorted(prompts)  # each generated once
    # one at a time would be 12 batches of one; the requests that queue while the model works go together
    assert len(judge.batches) <= 4 and max(len(b) for b in judge.batches) >= 4
    assert server.batcher.batches == [len(b) for b in judge.batches]


def _send_and_hang_up(port: int, prompt: str) -> None:
    body = json.dumps({"model": "slow", "messages": [{"role": "user", "content": prompt}]}).encode()
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        time.sleep(0.05)  # the server has read the request; then the client leaves


def test_abandoned_requests_are_not_generated(slow_server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    server, judge = slow_server(0.6)
    threads_before = threading.active_count()
    busy = threading.Thread(target=lambda: _client(server).complete([ChatRequest("busy", id="busy")]))
    busy.start()
    time.sleep(0.2)  # the model is now generating "busy" for 0.6 s
    impatient = _client(server, timeout=0.2).complete([ChatRequest("impatient", id="impatient")])[0]
    _send_and_hang_up(server.server_port, "gone")
    busy.join()
    patient = _client(server).complete([ChatRequest("patient", id="patient")])[0]
    # the client gave up (or, at the same instant, the server told it it had waited too long)
    assert impatient.text is None
    assert "APITimeoutError" in impatient.error or "waited longer than its timeout" in impatient.error
    assert patient.text == "tneitap"
    assert judge.seen == ["busy", "patient"]  # neither the timed-out nor the vanished client was generated for
    assert server.batcher.dropped == 2
    time.sleep(0.3)
    assert threading.active_count() <= threads_before + 1  # no handler thread is left waiting


def test_a_model_that_raises_fails_its_batch_not_the_server(slow_server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    server, judge = slow_server(0.0)
    judge.complete = lambda requests: 1 / 0
    reply = _client(server).complete([ChatRequest("x", id="r1")])[0]
    assert reply.text is None and "HTTP 500" in reply.error and "ZeroDivisionError" in reply.error
    judge.complete = SlowJudge.complete.__get__(judge)
    assert _client(server).complete([ChatRequest("ab", id="r2")])[0].text == "ba"


def test_many_concurrent_clients_leave_no_threads_behind(slow_server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    server, _ = slow_server(0.05, idle_timeout=0.5)
    threads_before = threading.active_count()
    replies = _client(server, concurrency=8).complete([ChatRequest(f"q{i}", id=str(i)) for i in range(32)])
    assert all(r.ok for r in replies)
    time.sleep(0.8)
    assert threading.active_count() <= threads_before + 1


class CountingJudge:
    """Answers answer i of a request with "prompt#seed+i" after `seconds` per answer generated, keeping the
    prompts of every call."""

    name = "counting"

    def __init__(self, seconds: float):
        self.seconds, self.calls = seconds, []

    def complete(self, requests):
        self.calls.append([(r.prompt, r.n) for r in requests])
        time.sleep(self.seconds * sum(r.n for r in requests))
        return [ChatReply(f"{r.prompt}#{r.seed}", prompt_tokens=4, completion_tokens=r.n,
                          choices=[Choice(f"{r.prompt}#{r.seed + i}") for i in range(r.n)]) for r in requests]


def test_a_large_n_is_sliced_so_other_clients_are_answered_in_between(monkeypatch):
    """One worker, 8 answers a step: a request for 96 answers takes 12 steps, and a request that arrives
    during them is answered within a step or two, with the big one's answers still drawn with seed + i."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    judge = CountingJudge(0.02)
    server = make_server(judge, port=0, model_name="counting", max_batch=8)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        client = OpenAIJudge("counting", f"http://127.0.0.1:{server.server_port}/v1", max_retries=0)
        done: dict[str, float] = {}
        big: list = []

        def ask_big():
            big.extend(client.complete([ChatRequest("big", n=96, seed=1000, temperature=1.0, id="big")]))
            done["big"] = time.monotonic()

        thread = threading.Thread(target=ask_big)
        thread.start()
        time.sleep(0.3)  # the big request is a few steps in
        [small] = client.complete([ChatRequest("small", seed=7, temperature=1.0, id="small")])
        done["small"] = time.monotonic()
        thread.join()
    finally:
        server.shutdown()
        server.server_close()
    assert small.text == "small#7"
    assert [c.text for c in big[0].answers()] == [f"big#{1000 + i}" for i in range(96)]  # as one unsliced request
    assert big[0].prompt_tokens == 4 and big[0].completion_tokens == 96  # the prompt counted once
    step = next(i for i, call in enumerate(judge.calls) if ("small", 1) in call)
    assert step < len(judge.calls) - 2, "the small request did not wait for the big one to end"
    assert all(sum(n for _, n in call) <= 8 for call in judge.calls)
    assert done["small"] < done["big"]
