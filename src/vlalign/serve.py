"""`vlalign serve`: an OpenAI-compatible chat endpoint in front of a local model.

`POST /v1/chat/completions` (text and `image_url` parts with data URLs) and `GET /v1/models`, enough for the
`openai` SDK and for every judge-backed step here, so a world model can stand in for GPT-4o and the API
path is tested against a real HTTP server.

Clients are served concurrently (one thread per connection), and one worker thread owns the model: the
requests that arrive together (up to `max_batch`) go to it as one batch, which the model generates in
batches. A request whose client has gone (disconnected, or waited longer than its timeout: the
`x-stainless-read-timeout` header the `openai` SDK sends, else `max_wait`) is dropped before generation,
so abandoned work costs nothing and no thread waits for it. `fail_every` makes every k-th request fail with
503 (or 429 when `fail_status` says so), to test clients' retries.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import queue
import select
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image

from vlalign.feedback.judge import ChatReply, ChatRequest

MAX_BODY = 64 * 2 ** 20  # bytes: room for several large images as data URLs


def _decode_image(url: str) -> Image.Image:
    if not url.startswith("data:"):
        raise ValueError("only data: URLs are accepted for images (this server reaches no network)")
    try:
        return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")
    except (IndexError, binascii.Error, OSError) as e:
        raise ValueError(f"an image_url is not a readable base64 image ({e})") from None


def _text_of(content) -> str:
    return content if isinstance(content, str) else " ".join(p.get("text", "") for p in content or [])


def parse_chat(body: dict) -> ChatRequest:
    """The ChatRequest an OpenAI chat body asks for; a malformed body raises ValueError with the reason."""
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise ValueError("'messages' must be a non-empty list of message objects")
    system, texts, images = None, [], []
    for m in messages:
        content = m.get("content")
        if m.get("role") == "system":
            system = _text_of(content)
            continue
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else (content or [])
        for part in parts:
            if part.get("type") == "text":
                texts.append(part["text"])
            elif part.get("type") == "image_url":
                images.append(_decode_image(part["image_url"]["url"]))
    return ChatRequest(prompt="\n".join(texts), images=tuple(images), system=system,
                       max_tokens=int(body.get("max_tokens") or body.get("max_completion_tokens") or 256),
                       temperature=float(body.get("temperature") or 0.0))


def _peer_closed(connection: socket.socket) -> bool:
    """Whether the client hung up: its socket reads as end-of-file (or fails) without blocking."""
    try:
        readable, _, _ = select.select([connection], [], [], 0)
        return bool(readable) and connection.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


@dataclass
class _Job:
    """One request waiting for the model, with the time its client stops waiting for the answer."""

    request: ChatRequest
    connection: socket.socket
    deadline: float
    done: threading.Event = field(default_factory=threading.Event)
    reply: ChatReply | None = None
    cancelled: bool = False

    def abandoned(self) -> bool:
        return self.cancelled or time.monotonic() > self.deadline or _peer_closed(self.connection)

    def finish(self, reply: ChatReply | None) -> None:
        self.reply = reply
        self.done.set()


class Batcher:
    """The model's one worker: takes the jobs that are waiting (up to `max_batch`, after `gather` seconds for
    stragglers), drops the abandoned ones and answers the rest with one `complete` call."""

    def __init__(self, judge, max_batch: int = 16, gather: float = 0.005):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.judge, self.max_batch, self.gather = judge, max_batch, gather
        self.jobs: queue.Queue[_Job] = queue.Queue()
        self.batches: list[int] = []  # sizes of the batches generated, for tests and logs
        self.dropped = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vlalign-serve-model", daemon=True)
        self._thread.start()

    def submit(self, job: _Job) -> None:
        self.jobs.put(job)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _take(self) -> list[_Job]:
        try:
            jobs = [self.jobs.get(timeout=0.1)]
        except queue.Empty:
            return []
        until = time.monotonic() + self.gather
        while len(jobs) < self.max_batch:
            try:
                jobs.append(self.jobs.get(timeout=max(0.0, until - time.monotonic())))
            except queue.Empty:
                break
        return jobs

    def _run(self) -> None:
        while not self._stop.is_set():
            live = []
            for job in self._take():
                if job.abandoned():
                    self.dropped += 1
                    job.finish(None)
                else:
                    live.append(job)
            if live:
                self.batches.append(len(live))
                for job, reply in zip(live, self._complete([j.request for j in live]), strict=True):
                    job.finish(reply)

    def _complete(self, requests: Sequence[ChatRequest]) -> list[ChatReply]:
        """The model's replies; a model that raises fails this batch's requests, not the server."""
        try:
            replies = self.judge.complete(list(requests))
            if len(replies) == len(requests):
                return replies
            error = f"the model answered {len(replies)} of {len(requests)} requests"
        except Exception as e:
            error = f"the model failed: {type(e).__name__}: {e}"
        return [ChatReply(None, error) for _ in requests]


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, judge, model_name: str, fail_every: int, fail_status: int,
                 max_batch: int, max_wait: float, idle_timeout: float):
        super().__init__(address, _Handler)
        self.judge, self.model_name, self.idle_timeout = judge, model_name, idle_timeout
        self.fail_every, self.fail_status, self.max_wait = fail_every, fail_status, max_wait
        self.lock, self.count = threading.Lock(), 0
        self.batcher = Batcher(judge, max_batch)

    def server_close(self) -> None:
        super().server_close()
        self.batcher.stop()


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def setup(self) -> None:
        self.timeout = self.server.idle_timeout  # a client that sends nothing does not hold a thread for ever
        super().setup()

    def log_message(self, format: str, *args) -> None:  # quiet: one line per request is noise in a pipeline
        pass

    def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client left; nobody to tell

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": self.server.model_name, "object": "model"}]})
        else:
            self._send(404, {"error": {"message": f"no route {self.path}"}})

    def _deadline(self) -> float:
        """When the client stops waiting: its own read timeout when it says, at most the server's max_wait."""
        try:
            wait = min(float(self.headers.get("x-stainless-read-timeout", "inf")), self.server.max_wait)
        except ValueError:
            wait = self.server.max_wait
        return time.monotonic() + max(0.0, wait)

    def _read_request(self) -> ChatRequest | None:
        """The request in the body, or None after answering 400 / 413 with the reason."""
        try:
            length = int(self.headers.get("Content-Length", 0))
            if length > MAX_BODY:
                self._send(413, {"error": {"message": f"body of {length} bytes exceeds {MAX_BODY}"}})
                return None
            return parse_chat(json.loads(self.rfile.read(length)))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            self._send(400, {"error": {"message": f"bad request: {e}"}})
            return None

    def do_POST(self) -> None:
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._send(404, {"error": {"message": f"no route {self.path}"}})
            return
        s = self.server
        with s.lock:
            s.count += 1
            number = s.count
            fail = s.fail_every > 0 and number % s.fail_every == 0
        if fail:
            self._send(s.fail_status, {"error": {"message": "failing on purpose (--fail-every)"}},
                       {"Retry-After": "0"})
            return
        deadline = self._deadline()
        request = self._read_request()
        if request is None:
            return
        job = _Job(request, self.connection, deadline)
        s.batcher.submit(job)
        if not job.done.wait(timeout=max(0.0, deadline - time.monotonic())):
            job.cancelled = True
        self._answer(job, number)

    def _answer(self, job: _Job, number: int) -> None:
        reply = job.reply
        if reply is None:
            self._send(503, {"error": {"message": "the request waited longer than its timeout; retry"}},
                       {"Retry-After": "1"})
            return
        if not reply.ok:
            self._send(500, {"error": {"message": reply.error}})
            return
        prompt_tokens = len(job.request.prompt.split())
        completion_tokens = len(reply.text.split())
        self._send(200, {
            "id": f"chatcmpl-{number}", "object": "chat.completion", "created": int(time.time()),
            "model": self.server.model_name,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": reply.text}}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        })


def make_server(judge, host: str = "127.0.0.1", port: int = 8000, model_name: str = "vlalign",
                fail_every: int = 0, fail_status: int = 503, *, max_batch: int = 16, max_wait: float = 600.0,
                idle_timeout: float = 60.0) -> _Server:
    """A server (not yet serving) answering with `judge`; `port=0` picks a free port (`server.server_port`).
    `max_batch` requests at most go to the model at once; a request is dropped once it has waited
    `max_wait` seconds (or its client's own timeout); a connection idle for `idle_timeout` seconds is closed."""
    return _Server((host, port), judge, model_name, fail_every, fail_status, max_batch, max_wait, idle_timeout)
