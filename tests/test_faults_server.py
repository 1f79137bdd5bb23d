"""A scripted OpenAI-compatible fault server on localhost, shared by the fault-injection suites, and checks
that it serves each fault as scripted (so a passing client test means the client met the fault).

Each chat request is matched to a script by a substring of its prompt; a script is a list of faults served
in order to that prompt's successive requests, its last one repeated. A fault is a `Reply` (a completion
with that text), a `Status` (an error status with headers and a body, which may echo the request's
headers), a `Raw` 200 body, an `EchoReply` (the request's headers sent back in a 200), a `Hang` (no answer for a while), or a `Drop` (the connection closed unanswered,
or mid-body).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


@dataclass(frozen=True)
class Reply:
    text: str | None
    usage: dict | None = None


@dataclass(frozen=True)
class Status:
    code: int
    headers: dict = field(default_factory=dict)
    message: str = "scripted failure"
    echo_headers: bool = False


@dataclass(frozen=True)
class Raw:
    body: str
    content_type: str = "application/json"


@dataclass(frozen=True)
class EchoReply:
    """A 200 completion whose text is the request's headers, or (`raw`) a non-JSON body holding them."""

    raw: bool = False


@dataclass(frozen=True)
class Hang:
    seconds: float


@dataclass(frozen=True)
class Drop:
    mid_body: bool = False


def completion(text: str | None, usage: dict | None = None) -> str:
    return json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                       "choices": [{"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": text}}],
                       "usage": usage or {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}})


def _prompt(body: dict) -> str:
    parts = []
    for message in body.get("messages", []):
        content = message.get("content")
        parts += [content] if isinstance(content, str) else [p.get("text", "") for p in content or []]
    return "\n".join(parts)


class _Handler(BaseHTTPRequestHandler):
    server: FaultServer

    def log_message(self, format: str, *args) -> None:
        pass

    def _send(self, status: int, body: str, content_type: str = "application/json",
              headers: dict | None = None, cut: bool = False) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data[:len(data) // 2] if cut else data)
        if cut:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)

    def do_GET(self) -> None:
        self.server.hits["GET " + self.path] += 1
        fault = self.server.models
        if isinstance(fault, Status):
            self._status(fault)
        elif isinstance(fault, Raw):
            self._send(200, fault.body, fault.content_type)
        else:
            self._send(200, json.dumps({"object": "list", "data": [{"id": m, "object": "model"}
                                                                   for m in self.server.served]}))

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        self.server.bodies.append(body)
        self.server.headers.append(dict(self.headers.items()))
        fault = self.server.next_fault(_prompt(body))
        if isinstance(fault, Reply):
            self._send(200, completion(fault.text, fault.usage))
        elif isinstance(fault, Status):
            self._status(fault)
        elif isinstance(fault, Raw):
            self._send(200, fault.body, fault.content_type)
        elif isinstance(fault, EchoReply):
            headers = json.dumps(dict(self.headers.items()))
            self._send(200, f"<pre>{headers}</pre>" if fault.raw else completion(headers),
                       "text/html" if fault.raw else "application/json")
        elif isinstance(fault, Hang):
            time.sleep(fault.seconds)
            self._send(200, completion("too late"))
        elif fault.mid_body:
            self._send(200, completion("cut short"), cut=True)
        else:
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True

    def _status(self, fault: Status) -> None:
        message = fault.message
        if fault.echo_headers:
            message += " " + json.dumps(dict(self.headers.items()))
        self._send(fault.code, json.dumps({"error": {"message": message, "type": "scripted"}}), headers=fault.headers)


class FaultServer(ThreadingHTTPServer):
    """The scripted server: `scripts` maps a prompt substring to the faults its requests get in turn."""

    daemon_threads = True

    def __init__(self, scripts: dict[str, list], default: list | None = None, served: tuple[str, ...] = ("m",),
                 models: Status | Raw | None = None):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.scripts, self.default = scripts, default or [Reply("ok")]
        self.served, self.models = served, models
        self.hits: Counter[str] = Counter()
        self.bodies: list[dict] = []
        self.headers: list[dict] = []  # of each chat request, as received
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}/v1"

    def next_fault(self, prompt: str):
        key = next((k for k in self.scripts if k in prompt), None)
        script = self.scripts.get(key, self.default) if key is not None else self.default
        with self._lock:
            n = self.hits[key or ""]
            self.hits[key or ""] += 1
        return script[min(n, len(script) - 1)]


@contextlib.contextmanager
def fault_servers() -> Iterator[Callable[..., FaultServer]]:
    """`start(scripts, ...)` runs a `FaultServer` in a thread; all are shut down on leaving. Each suite
    wraps it in its own `fault_server` fixture."""
    running = []

    def start(scripts: dict[str, list], **kw) -> FaultServer:
        server = FaultServer(scripts, **kw)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        running.append(server)
        return server

    try:
        yield start
    finally:
        for server in running:
            server.shutdown()
            server.server_close()


@pytest.fixture
def fault_server() -> Iterator[Callable[..., FaultServer]]:
    with fault_servers() as start:
        yield start


def _post(url: str, prompt: str, timeout: float = 5) -> tuple[int, str]:
    data = json.dumps({"model": "m", "messages": [{"role": "user", "content": prompt}]}).encode()
    request = urllib.request.Request(url + "/chat/completions", data, {"Content-Type": "application/json",
                                                                       "Authorization": "Bearer sk-echo"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_the_fault_server_serves_each_script_in_order(fault_server):
    server = fault_server({"first": [Status(429, {"Retry-After": "-1"}), Reply("fine")],
                           "echo": [Status(500, echo_headers=True)], "raw": [Raw("<html>oops</html>", "text/html")]})
    assert _post(server.url, "first question")[0] == 429
    status, body = _post(server.url, "first question")
    assert status == 200 and json.loads(body)["choices"][0]["message"]["content"] == "fine"
    assert _post(server.url, "first question")[0] == 200  # the last fault repeats
    status, body = _post(server.url, "echo this")
    assert status == 500 and "sk-echo" in body  # the server really echoes the key back
    assert _post(server.url, "raw please") == (200, "<html>oops</html>")
    assert _post(server.url, "anything else")[0] == 200
    assert server.hits == {"first": 3, "echo": 1, "raw": 1, "": 1}


def test_the_fault_server_hangs_and_drops(fault_server):
    server = fault_server({"hang": [Hang(2)], "drop": [Drop()], "cut": [Drop(mid_body=True)]})
    with pytest.raises(TimeoutError):
        _post(server.url, "hang on", timeout=0.3)
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        _post(server.url, "drop it")
    with pytest.raises(http.client.IncompleteRead):
        _post(server.url, "cut it")
