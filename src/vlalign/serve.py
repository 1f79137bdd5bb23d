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

Sampling follows vLLM's chat API, so the path a run takes to vLLM or SGLang is tested here: `n` answers per
request, answer i drawn with seed `seed + i` (vLLM's rule: the same seed gives the same answers however the
requests are batched), `temperature` (0 when not given, unlike vLLM's 1), `top_p`, `max_tokens`, and
`logprobs` with `top_logprobs` (choices[i].logprobs.content[j].top_logprobs, from the model's raw
distribution). `POST /v1/load_lora_adapter {lora_name, lora_path}` puts a PEFT adapter directory onto a copy
of the served model (a full model directory loads as a model of its own); a request whose `model` is that
name uses it, any other name the served model. `POST /v1/unload_lora_adapter {lora_name}` drops it.
"""

from __future__ import annotations

import base64
import binascii
import copy
import io
import json
import queue
import select
import socket
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from PIL import Image

from vlalign.feedback.judge import ChatReply, ChatRequest, Choice

MAX_BODY = 64 * 2 ** 20  # bytes: room for several large images as data URLs
MAX_N = 128  # answers one request may ask for
MAX_TOP_LOGPROBS = 20  # alternatives per token, as OpenAI and vLLM's default allow


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
                       **_sampling(body))


def _sampling(body: dict) -> dict:
    """The sampling fields of a chat body (n, seed, temperature, top_p, logprobs, model), checked."""
    n = int(body.get("n") or 1)
    temperature = float(body.get("temperature") or 0.0)
    top_p = float(body["top_p"]) if body.get("top_p") is not None else 1.0
    seed = body.get("seed")
    if not 1 <= n <= MAX_N or temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"need 1 <= n <= {MAX_N}, temperature >= 0 and 0 < top_p <= 1; got n={n}, "
                         f"temperature={temperature}, top_p={top_p}")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    top = body.get("top_logprobs")
    if top is not None and not body.get("logprobs"):
        raise ValueError("top_logprobs needs logprobs: true")
    if top is not None and not 0 <= int(top) <= MAX_TOP_LOGPROBS:
        raise ValueError(f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {top}")
    logprobs = int(top or 0) if body.get("logprobs") else None
    model = body.get("model") if isinstance(body.get("model"), str) else None
    return {"n": n, "seed": seed, "temperature": temperature, "top_p": top_p, "logprobs": logprobs, "model": model}


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


class Served:
    """The models a server answers with: its own, and the adapters loaded onto it by name. A request goes to
    the model its `model` names (any name not loaded: the served model); `counts` tallies the answers each
    gave, so tests and logs can see which model served a round."""

    def __init__(self, judge, name: str):
        self.judge, self.name = judge, name
        self.adapters: dict[str, tuple[object, str]] = {}  # name -> (judge, the path it was loaded from)
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()

    def _route(self, request: ChatRequest) -> tuple[str, object]:
        with self.lock:
            found = self.adapters.get(request.model or "")
        return (request.model, found[0]) if found else (self.name, self.judge)

    def complete(self, requests: Sequence[ChatRequest]) -> list[ChatReply]:
        groups: dict[str, tuple[object, list[int]]] = {}
        for i, r in enumerate(requests):
            name, judge = self._route(r)
            groups.setdefault(name, (judge, []))[1].append(i)
        replies: dict[int, ChatReply] = {}
        for name, (judge, idx) in groups.items():
            answered = judge.complete([requests[i] for i in idx])
            if len(answered) != len(idx):
                raise RuntimeError(f"{name} answered {len(answered)} of {len(idx)} requests")
            replies.update(zip(idx, answered, strict=True))
            self.counts[name] += sum(max(requests[i].n, 1) for i in idx)
        return [replies[i] for i in range(len(requests))]

    def load(self, name: str, path: str) -> None:
        """Serve the adapter (or model) at `path` as `name`; ValueError says why not."""
        if not name or name == self.name:
            raise ValueError(f"lora_name must be a new name, not {name!r} (the served model's own)")
        with self.lock:
            if name in self.adapters:
                raise ValueError(f"the lora adapter {name!r} has already been loaded; unload it first")
        judge = _load_onto(self.judge, Path(path), name)
        with self.lock:
            self.adapters[name] = (judge, path)

    def unload(self, name: str) -> bool:
        with self.lock:
            return self.adapters.pop(name, None) is not None

    def listed(self) -> list[dict]:
        with self.lock:
            loaded = [{"id": n, "object": "model", "parent": self.name, "root": p} for n, (_, p) in self.adapters.items()]
        return [{"id": self.name, "object": "model"}, *loaded]


def _load_onto(judge, path: Path, name: str):
    """A judge answering with the PEFT adapter at `path` on a copy of `judge`'s model, or with the full model
    directory at `path`, on the same device and under the same settings."""
    from vlalign.feedback.judge_local import ModelJudge

    model = getattr(judge, "model", None)
    if model is None:
        raise ValueError(f"this server's backend ({type(judge).__name__}) is not a local model: it cannot load adapters")
    if (path / "adapter_config.json").exists():
        from peft import PeftModel

        loaded = PeftModel.from_pretrained(copy.deepcopy(model), path, is_trainable=False).eval()
        return ModelJudge(loaded, judge.processor, name=name, batch_size=judge.batch_size)
    if (path / "config.json").exists():
        from vlalign.models.load import load

        p = next(model.parameters())
        full, processor = load(path, device=str(p.device), dtype=str(p.dtype).removeprefix("torch."))
        return ModelJudge(full, processor, name=name, batch_size=judge.batch_size)
    raise ValueError(f"no adapter or model at {path} (no adapter_config.json or config.json); lora_path must be a "
                     f"directory on the server's machine")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, judge, model_name: str, fail_every: int, fail_status: int,
                 max_batch: int, max_wait: float, idle_timeout: float):
        super().__init__(address, _Handler)
        self.judge, self.model_name, self.idle_timeout = judge, model_name, idle_timeout
        self.fail_every, self.fail_status, self.max_wait = fail_every, fail_status, max_wait
        self.lock, self.count = threading.Lock(), 0
        self.served = Served(judge, model_name)
        self.batcher = Batcher(self.served, max_batch)

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
            self._send(200, {"object": "list", "data": self.server.served.listed()})
        else:
            self._send(404, {"error": {"message": f"no route {self.path}"}})

    def _deadline(self) -> float:
        """When the client stops waiting: its own read timeout when it says, at most the server's max_wait."""
        try:
            wait = min(float(self.headers.get("x-stainless-read-timeout", "inf")), self.server.max_wait)
        except ValueError:
            wait = self.server.max_wait
        return time.monotonic() + max(0.0, wait)

    def _read_body(self, parse):
        """`parse` of the JSON body, or None after answering 400 / 413 with the reason."""
        try:
            length = int(self.headers.get("Content-Length", 0))
            if length > MAX_BODY:
                self._send(413, {"error": {"message": f"body of {length} bytes exceeds {MAX_BODY}"}})
                return None
            return parse(json.loads(self.rfile.read(length)))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            self._send(400, {"error": {"message": f"bad request: {e}"}})
            return None

    def _read_request(self) -> ChatRequest | None:
        return self._read_body(parse_chat)

    def do_POST(self) -> None:
        route = self.path.rstrip("/")
        if route in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter"):
            self._adapter(route.endswith("/load_lora_adapter"))
            return
        if route != "/v1/chat/completions":
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

    def _adapter(self, loading: bool) -> None:
        """Load or unload an adapter as vLLM's runtime LoRA endpoints do (200 with a line of text)."""
        body = self._read_body(lambda b: (str(b["lora_name"]), str(b["lora_path"]) if loading else ""))
        if body is None:
            return
        name, path = body
        served = self.server.served
        if not loading:
            if not served.unload(name):
                self._send(404, {"error": {"message": f"the lora adapter {name!r} cannot be found"}})
                return
            self._send_text(f"Success: LoRA adapter '{name}' removed successfully.")
            return
        try:
            served.load(name, path)
        except (ValueError, OSError) as e:
            self._send(400, {"error": {"message": str(e)}})
            return
        self._send_text(f"Success: LoRA adapter '{name}' added successfully.")

    def _send_text(self, text: str) -> None:
        data = text.encode()
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _answer(self, job: _Job, number: int) -> None:
        reply = job.reply
        if reply is None:
            self._send(503, {"error": {"message": "the request waited longer than its timeout; retry"}},
                       {"Retry-After": "1"})
            return
        if not reply.ok:
            self._send(500, {"error": {"message": reply.error}})
            return
        answers = reply.answers()
        prompt_tokens = len(job.request.prompt.split())
        completion_tokens = sum(len(a.text.split()) for a in answers)
        self._send(200, {
            "id": f"chatcmpl-{number}", "object": "chat.completion", "created": int(time.time()),
            "model": job.request.model or self.server.model_name,
            "choices": [_choice_json(i, a) for i, a in enumerate(answers)],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        })


def _choice_json(index: int, choice: Choice) -> dict:
    """One choice of a chat completion, with `logprobs.content` when its tokens' log-probs were asked for."""
    out: dict = {"index": index, "finish_reason": "stop", "message": {"role": "assistant", "content": choice.text}}
    if choice.logprobs is not None:
        out["logprobs"] = {"content": [
            {"token": t.token, "logprob": t.logprob, "bytes": list(t.token.encode()),
             "top_logprobs": [{"token": w, "logprob": lp, "bytes": list(w.encode())} for w, lp in t.top]}
            for t in choice.logprobs]}
    return out


def make_server(judge, host: str = "127.0.0.1", port: int = 8000, model_name: str = "vlalign",
                fail_every: int = 0, fail_status: int = 503, *, max_batch: int = 16, max_wait: float = 600.0,
                idle_timeout: float = 60.0) -> _Server:
    """A server (not yet serving) answering with `judge`; `port=0` picks a free port (`server.server_port`).
    `max_batch` requests at most go to the model at once; a request is dropped once it has waited
    `max_wait` seconds (or its client's own timeout); a connection idle for `idle_timeout` seconds is closed."""
    return _Server((host, port), judge, model_name, fail_every, fail_status, max_batch, max_wait, idle_timeout)
