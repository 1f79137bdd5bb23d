"""`vlalign serve` against bad input, as a real server must take it: every invalid parameter is a 4xx in
OpenAI's error shape naming the parameter, an unknown model is a 404 (vLLM's answer), a body is refused from
its Content-Length before it is read (413) and a wrong Content-Length gets an answer instead of a dropped
connection, a decompression-bomb image is refused from its header, the API key is checked on every route,
adapters load from the folders the operator allowed only, and one line per request goes to the log with no
secret in it. The model behind the server is a fake that answers at once (its answers name their seeds)."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
import zlib

import pytest

from vlalign.feedback.judge import ChatReply, ChatRequest, Choice
from vlalign.feedback.judge_api import OpenAIJudge, image_data_url
from vlalign.serve import Limits, make_server

KEY = "sk-serve-0123456789abcdef"


class Echo:
    """Answers request r's i-th answer with "prompt#seed+i" (or "#-" unseeded), 3 prompt tokens, 2 per answer."""

    name = "echo"

    def __init__(self, seconds: float = 0.0):
        self.seconds, self.requests = seconds, []

    def complete(self, requests):
        self.requests.extend(requests)
        time.sleep(self.seconds * sum(max(r.n, 1) for r in requests))
        out = []
        for r in requests:
            texts = [f"{r.prompt}#{'-' if r.seed is None else r.seed + i}" for i in range(max(r.n, 1))]
            out.append(ChatReply(texts[0], prompt_tokens=3, completion_tokens=2 * len(texts),
                                 choices=[Choice(t) for t in texts]))
        return out


@pytest.fixture
def server():
    running = []

    def start(judge=None, **kw):
        s = make_server(judge or Echo(), port=0, model_name="echo", **kw)
        threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        running.append(s)
        return s

    yield start
    for s in running:
        s.shutdown()
        s.server_close()


def _raw(port: int, head: str, body: bytes = b"", read_timeout: float = 5.0) -> tuple[int, dict, bytes]:
    """Send `head` (request line and headers) and `body` as they are; (status, headers, body) of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as s:
        s.sendall(head.encode() + b"\r\n" + body)
        data = _until_closed(s)
    head_part, _, payload = data.partition(b"\r\n\r\n")
    lines = head_part.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, payload


def _until_closed(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _post(port: int, body, path: str = "/v1/chat/completions", headers: dict | None = None) -> tuple[int, dict, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    status, head, payload = _raw(port, f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                       f"Content-Length: {len(data)}\r\n{extra}", data)
    return status, head, json.loads(payload) if payload.startswith(b"{") else {"text": payload.decode()}


def _chat(**fields) -> dict:
    return {"model": "echo", "messages": [{"role": "user", "content": "hello"}], **fields}


def _shaped(reply: dict, param: str | None = "any") -> dict:
    """The error of an OpenAI-shaped error body (message, type, param, code), checked."""
    error = reply["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"] and error["type"]
    if param != "any":
        assert error["param"] == param, error
    return error


# ---------------------------------------------------------------- parameters

INVALID = {  # name: (body fields, status, param)
    "max_tokens 0": ({"max_tokens": 0}, 400, "max_tokens"),
    "max_tokens -5": ({"max_tokens": -5}, 400, "max_tokens"),
    "max_tokens 1e9": ({"max_tokens": 1e9}, 400, "max_tokens"),
    "max_tokens over the server's maximum": ({"max_tokens": 4097}, 400, "max_tokens"),
    "max_tokens 2.5": ({"max_tokens": 2.5}, 400, "max_tokens"),
    "max_tokens a string": ({"max_tokens": "12"}, 400, "max_tokens"),
    "max_completion_tokens 0": ({"max_completion_tokens": 0}, 400, "max_completion_tokens"),
    "seed 2^80": ({"seed": 2 ** 80}, 400, "seed"),
    "seed -1": ({"seed": -1}, 400, "seed"),
    "seed 1.5": ({"seed": 1.5}, 400, "seed"),
    "seed at the top of 64 bits with n 2": ({"seed": 2 ** 63 - 1, "n": 2}, 400, "seed"),
    "temperature NaN": ({"temperature": float("nan")}, 400, "temperature"),
    "temperature inf": ({"temperature": float("inf")}, 400, "temperature"),
    "temperature -inf": ({"temperature": float("-inf")}, 400, "temperature"),
    "temperature -1": ({"temperature": -1}, 400, "temperature"),
    "temperature 3": ({"temperature": 3}, 400, "temperature"),
    "temperature a string": ({"temperature": "hot"}, 400, "temperature"),
    "temperature true": ({"temperature": True}, 400, "temperature"),
    "top_p 0": ({"top_p": 0}, 400, "top_p"),
    "top_p NaN": ({"top_p": float("nan")}, 400, "top_p"),
    "n 0": ({"n": 0}, 400, "n"),
    "n 2.7": ({"n": 2.7}, 400, "n"),
    "n over the bound": ({"n": 129}, 400, "n"),
    "n true": ({"n": True}, 400, "n"),
    "n a string": ({"n": "3"}, 400, "n"),
    "model an integer": ({"model": 5}, 400, "model"),
    "model a list": ({"model": ["echo"]}, 400, "model"),
    "model unknown": ({"model": "gpt-4o"}, 404, "model"),
    "logprobs a string": ({"logprobs": "yes"}, 400, "logprobs"),
    "top_logprobs without logprobs": ({"top_logprobs": 3}, 400, "top_logprobs"),
    "top_logprobs 21": ({"logprobs": True, "top_logprobs": 21}, 400, "top_logprobs"),
    "stream": ({"stream": True}, 400, "stream"),
    "messages empty": ({"messages": []}, 400, "messages"),
    "messages a string": ({"messages": "hello"}, 400, "messages"),
    "role unknown": ({"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages[0].role"),
    "content a number": ({"messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content"),
    "content part of an unknown type": ({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}, 400,
                                        "messages[0].content[0]"),
    "text part without text": ({"messages": [{"role": "user", "content": [{"type": "text", "text": 3}]}]}, 400,
                               "messages[0].content[0]"),
    "image from the network": ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://example.com/a.png"}}]}]}, 400, "messages[0].content[0]"),
    "image not base64": ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}]}]}, 400, "messages[0].content[0]"),
    "image not an image": ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}}]}]}, 400, "messages[0].content[0]"),
}


@pytest.mark.parametrize("name", list(INVALID))
def test_every_invalid_parameter_is_a_4xx_naming_it(server, name):
    fields, status, param = INVALID[name]
    judge = Echo()
    s = server(judge)
    got, _, reply = _post(s.server_port, _chat(**fields))
    assert got == status, reply
    error = _shaped(reply, param)
    assert error["type"] == "invalid_request_error"
    assert judge.requests == [], "nothing invalid reaches the model"


def test_the_body_itself_when_it_is_not_a_chat(server):
    s = server()
    for body in (b"[1, 2]", b"{not json", b"[" * 100_000 + b"]" * 100_000, "é".encode("latin-1")):
        status, _, reply = _post(s.server_port, body)
        assert status == 400 and _shaped(reply)["code"] in ("invalid_body", "invalid_json"), body[:20]
    assert _post(s.server_port, _chat())[0] == 200  # the server is still up


def test_defaults_and_bounds_that_are_allowed(server):
    judge = Echo()
    s = server(judge, limits=Limits(max_tokens=64, default_max_tokens=16, max_n=4))
    assert _post(s.server_port, _chat())[0] == 200
    assert _post(s.server_port, _chat(max_tokens=64.0, n=4, seed=2 ** 63 - 4, temperature=2, top_p=1))[0] == 200
    assert _post(s.server_port, _chat(model=None, max_completion_tokens=1))[0] == 200
    assert [(r.max_tokens, r.n, r.seed, r.temperature) for r in judge.requests] == [
        (16, 1, None, 0.0), (64, 4, 2 ** 63 - 4, 2.0), (1, 1, None, 0.0)]
    assert _post(s.server_port, _chat(max_tokens=65))[0] == 400
    assert _post(s.server_port, _chat(n=5))[0] == 400


# ---------------------------------------------------------------- images


def _png_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of width x height black pixels: a few hundred KB that decode to width*height pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row * 1000) for _ in range(height // 1000)) + packer.compress(
        row * (height % 1000)) + packer.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


@pytest.mark.parametrize("size", [(30_000, 30_000), (9_000, 9_000)], ids=["past PIL's own limit", "under PIL's limit"])
def test_a_decompression_bomb_is_refused_from_its_header(server, size):
    import base64

    bomb = _png_bomb(*size)
    assert len(bomb) < 2 ** 20  # small on the wire
    judge = Echo()
    s = server(judge)
    url = "data:image/png;base64," + base64.b64encode(bomb).decode()
    started = time.monotonic()
    status, _, reply = _post(s.server_port, _chat(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "describe"}]}]))
    assert status == 400 and "pixels" in _shaped(reply, "messages[0].content[0]")["message"]
    assert time.monotonic() - started < 2.0 and judge.requests == []  # never decoded


def test_images_within_the_limits_reach_the_model_and_too_many_do_not(server):
    from PIL import Image

    judge = Echo()
    s = server(judge, limits=Limits(max_images=2, max_image_pixels=64 * 64))
    part = {"type": "image_url", "image_url": {"url": image_data_url(Image.new("RGB", (64, 64), (9, 9, 9)))}}
    assert _post(s.server_port, _chat(messages=[{"role": "user", "content": [part, part]}]))[0] == 200
    assert judge.requests[0].images[0].size == (64, 64)
    status, _, reply = _post(s.server_port, _chat(messages=[{"role": "user", "content": [part] * 3}]))
    assert status == 400 and "more than 2 images" in _shaped(reply)["message"]
    big = {"type": "image_url", "image_url": {"url": image_data_url(Image.new("RGB", (65, 64)))}}
    assert _post(s.server_port, _chat(messages=[{"role": "user", "content": [big]}]))[0] == 400


# ---------------------------------------------------------------- the body and its length

HEAD = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


def test_a_body_over_the_limit_is_refused_before_it_is_read(server):
    s = server(limits=Limits(max_body=2 ** 20))
    with socket.create_connection(("127.0.0.1", s.server_port), timeout=5) as sock:
        # 50 MB announced, 64 KB sent: the answer comes without the server waiting for (or keeping) the rest
        sock.sendall(f"{HEAD}Content-Length: {50 * 2 ** 20}\r\n\r\n".encode() + b"x" * 65536)
        answer = _until_closed(sock)
    assert answer.startswith(b"HTTP/1.0 413") and b'"request_too_large"' in answer
    # a client that sends its whole oversized body still reads the answer (the rest is drained, not kept)
    status, headers, payload = _raw(s.server_port, f"{HEAD}Content-Length: {8 * 2 ** 20}\r\n", b"x" * 8 * 2 ** 20)
    assert status == 413 and headers.get("connection") == "close" and b"exceeds this server's limit" in payload


@pytest.mark.parametrize("length, status, code", [
    ("abc", 400, "invalid_content_length"), ("-5", 400, "invalid_content_length"),
    ("12, 13", 400, "invalid_content_length"), (None, 411, "length_required")])
def test_a_wrong_content_length_gets_an_answer(server, length, status, code):
    s = server()
    body = json.dumps(_chat()).encode()
    head = HEAD + (f"Content-Length: {length}\r\n" if length else "")
    got, _, payload = _raw(s.server_port, head, body)
    assert got == status and _shaped(json.loads(payload))["code"] == code


def test_a_body_shorter_than_its_content_length_gets_an_answer(server):
    s = server(limits=Limits(body_timeout=0.3))
    body = json.dumps(_chat()).encode()
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", s.server_port), timeout=5) as sock:
        sock.sendall(f"{HEAD}Content-Length: {len(body) + 100}\r\n\r\n".encode() + body)  # then the client waits
        answer = _until_closed(sock)
    assert answer.startswith(b"HTTP/1.0 400") and b"the body ended after" in answer
    assert time.monotonic() - started < 3
    got, _, payload = _raw(s.server_port, HEAD + "Transfer-Encoding: chunked\r\n", b"0\r\n\r\n")
    assert got == 411


# ---------------------------------------------------------------- the API key


def test_the_api_key_is_checked_on_every_route(server, monkeypatch):
    s = server(api_key=KEY)
    port = s.server_port
    for path, body in (("/v1/chat/completions", _chat()), ("/v1/load_lora_adapter", {"lora_name": "a", "lora_path": "/"}),
                       ("/v1/unload_lora_adapter", {"lora_name": "a"}), ("/v1/nowhere", {})):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}, {"Authorization": f"Basic {KEY}"}):
            status, _, reply = _post(port, body, path, headers)
            assert status == 401 and _shaped(reply)["code"] == "invalid_api_key", (path, headers)
            assert KEY not in json.dumps(reply)
    status, _, _ = _raw(port, "GET /v1/models HTTP/1.1\r\nHost: x\r\n")
    assert status == 401
    status, _, _ = _raw(port, f"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n")
    assert status == 200
    assert _post(port, _chat(), headers={"Authorization": f"Bearer {KEY}"})[0] == 200
    # the openai client sends its key so; a wrong one is a failure with the fix, not retried
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    client = OpenAIJudge("echo", f"http://127.0.0.1:{port}/v1", max_retries=2, backoff=0.01)
    assert client.complete([ChatRequest("hi", id="r1")])[0].text == "hi#-"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong-key-000")
    client = OpenAIJudge("echo", f"http://127.0.0.1:{port}/v1", max_retries=2, backoff=0.01)
    [reply] = client.complete([ChatRequest("hi", id="r2")])
    assert "HTTP 401" in reply.error and "set OPENAI_API_KEY to a valid key" in reply.error
    assert client.usage.retries == 0


# ---------------------------------------------------------------- adapters


def test_adapters_load_only_from_the_folders_allowed_at_start(server, tmp_path):
    allowed, outside = tmp_path / "adapters", tmp_path / "elsewhere"
    for folder in (allowed / "round1", outside):
        folder.mkdir(parents=True)
    (allowed / "link").symlink_to(outside)
    closed = server()
    status, _, reply = _post(closed.server_port, {"lora_name": "a", "lora_path": str(allowed / "round1")},
                             "/v1/load_lora_adapter")
    assert status == 403 and "--lora-dir" in _shaped(reply, "lora_path")["message"]
    s = server(lora_dirs=[allowed])
    for path in (outside, allowed / "link", allowed / ".." / "elsewhere", "/etc"):
        status, _, reply = _post(s.server_port, {"lora_name": "a", "lora_path": str(path)}, "/v1/load_lora_adapter")
        assert status == 403 and _shaped(reply)["code"] == "lora_path_not_allowed", path
    # inside the allowed folder the load is tried (this fake model takes no adapter: a 400 that says so)
    status, _, reply = _post(s.server_port, {"lora_name": "a", "lora_path": str(allowed / "round1")},
                             "/v1/load_lora_adapter")
    assert status == 400 and "not a local model" in _shaped(reply, "lora_path")["message"]
    status, _, reply = _post(s.server_port, {"lora_name": "a", "lora_path": 7}, "/v1/load_lora_adapter")
    assert status == 400 and _shaped(reply, "lora_path")


# ---------------------------------------------------------------- queueing and the log


def test_a_full_queue_is_a_429_with_retry_after(server):
    judge = Echo(seconds=0.3)
    s = server(judge, limits=Limits(max_queue=2), max_batch=1)
    results = []

    def ask(i):
        results.append(_post(s.server_port, _chat(messages=[{"role": "user", "content": f"q{i}"}])))

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
        time.sleep(0.05)
    for t in threads:
        t.join()
    refused = [(h, r) for status, h, r in results if status == 429]
    assert sorted(status for status, _, _ in results) == [200, 200, 429, 429]
    assert all(int(h["retry-after"]) >= 1 and _shaped(r)["code"] == "rate_limit_exceeded" for h, r in refused)
    assert _post(s.server_port, _chat())[0] == 200  # places free up again


def test_one_log_line_per_request_with_no_secret(server):
    lines = []
    s = server(api_key=KEY, log=lines.append)
    auth = {"Authorization": f"Bearer {KEY}"}
    _post(s.server_port, _chat(n=3), "/v1/chat/completions?key=querysecret", auth)
    _post(s.server_port, _chat(max_tokens=0), headers=auth)
    _post(s.server_port, _chat())
    _raw(s.server_port, "GET /v1/\x1b[2Jterminal HTTP/1.1\r\nHost: x\r\n")  # no escape reaches the log
    _raw(s.server_port, "DELETE /v1/models HTTP/1.1\r\nHost: x\r\n")
    time.sleep(0.1)
    assert len(lines) == 5 and all(line.isprintable() for line in lines), lines
    assert " GET /v1/?[2Jterminal 401 " in lines[3]
    assert " POST /v1/chat/completions 200 3+6 tokens " in lines[0]
    assert " POST /v1/chat/completions 400 - tokens " in lines[1]
    assert " POST /v1/chat/completions 401 " in lines[2]
    assert lines[4].split()[1:4] == ["DELETE", "/v1/models", "501"]  # no such method here
    assert all(line.endswith("s") and float(line.rsplit(" ", 1)[1][:-1]) >= 0 for line in lines)
    assert not any(secret in line for line in lines for secret in (KEY, "querysecret", "Bearer"))
