"""The HTTP side of `vlalign serve`: routes, the API key, the request body, the request log.

Every answer that is not a completion is an error in OpenAI's shape with its status: 401 without the
API key (when the server has one), 404 for an unknown route or model, 411 / 413 / 400 for a body that is
missing, too large (refused from its Content-Length, before a byte of it is read) or shorter than it said,
400 for any invalid parameter (see `vlalign.serve.request`), 429 with Retry-After when the queue is full,
503 when a request waited past its client's timeout, 500 when the model failed. A body that is refused
unread is drained into nothing for a moment, so the client reads the answer instead of a reset connection,
and the connection is then closed. One line per request goes to the request log: time, method and route,
status, prompt and completion tokens, seconds (no header, body or query string, so no secret).
"""

from __future__ import annotations

import hmac
import json
import socket
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from vlalign.feedback.judge import Choice
from vlalign.serve.request import ApiError, Limits, parse_chat
from vlalign.serve.worker import Batcher, Busy, Job, Served

DRAIN_SECONDS = 2.0  # how long an unread body is drained before the connection closes
_CHUNK = 64 * 1024


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, judge, model_name: str, limits: Limits, *, api_key: str | None,
                 lora_dirs, fail_every: int, fail_status: int, max_batch: int, max_wait: float,
                 idle_timeout: float, log: Callable[[str], None] | None):
        super().__init__(address, _Handler)
        self.judge, self.model_name, self.limits, self.api_key = judge, model_name, limits, api_key or None
        self.fail_every, self.fail_status, self.max_wait, self.idle_timeout = fail_every, fail_status, max_wait, idle_timeout
        self.log, self.log_lock = log, threading.Lock()  # one whole line at a time from the handler threads
        self.count, self.count_lock = 0, threading.Lock()  # chat requests received
        self.served = Served(judge, model_name, lora_dirs)
        self.batcher = Batcher(self.served, max_batch, limits.max_queue)

    def server_close(self) -> None:
        super().server_close()
        self.batcher.stop()


def _printable(text: str, limit: int = 200) -> str:
    """`text` fit for one log line: no control characters (no forged lines), at most `limit` characters."""
    return "".join(c if c.isprintable() else "?" for c in text[:limit])


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def setup(self) -> None:
        self.timeout = self.server.idle_timeout  # a client that sends nothing does not hold a thread for ever
        super().setup()

    # ------------------------------------------------------------ the request log

    def handle_one_request(self) -> None:
        self.command, self._status, self._tokens, started = None, None, None, time.monotonic()
        super().handle_one_request()
        if self.command and self.server.log is not None:
            route = _printable(urlsplit(self.path).path) if self.path else "-"
            tokens = f"{self._tokens[0]}+{self._tokens[1]} tokens" if self._tokens else "- tokens"
            stamp = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
            with self.server.log_lock:
                self.server.log(f"{stamp} {_printable(self.command, 16)} {route} {self._status or '-'} {tokens} "
                                f"{time.monotonic() - started:.3f}s")

    def send_response(self, code: int, message: str | None = None) -> None:
        self._status = code
        super().send_response(code, message)

    def log_message(self, format: str, *args) -> None:  # the request log above replaces http.server's lines
        pass

    # ------------------------------------------------------------ answers

    def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client left; nobody to tell

    def _error(self, error: ApiError, headers: dict | None = None) -> None:
        self._send(error.status, error.body(), headers)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (a malformed request line, too many headers, an unknown method) in
        OpenAI's error shape too."""
        self.close_connection = True
        self._error(ApiError(code, message or self.responses.get(code, ("error",))[0]))

    def _drain(self) -> None:
        """Read the body that is refused unread (as much as its Content-Length says, for a moment at most) into
        nothing, so memory stays flat and the client gets to read the answer; the connection closes after it."""
        self.close_connection = True
        given = (self.headers.get("Content-Length") or "").strip()
        left = int(given) if given.isdigit() else None
        try:
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(0.2)
            until = time.monotonic() + DRAIN_SECONDS
            while (left is None or left > 0) and time.monotonic() < until:
                chunk = self.rfile.read1(min(_CHUNK, left or _CHUNK))
                if not chunk:
                    break
                left = None if left is None else left - len(chunk)
        except OSError:
            pass

    # ------------------------------------------------------------ checks

    def _check_key(self) -> None:
        key = self.server.api_key
        if key is None:
            return
        given = self.headers.get("Authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise ApiError(401, "the API key is missing or wrong: send it as 'Authorization: Bearer KEY' (the "
                                "openai client sends its api_key so)", None, "invalid_api_key")

    def _body(self) -> bytes:
        """The request body, read only when its Content-Length is within the limit; `ApiError` otherwise."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise ApiError(411, "chunked request bodies are not accepted: send a Content-Length", None,
                           "length_required")
        given = self.headers.get_all("Content-Length") or []
        if not given:
            raise ApiError(411, "a request body needs a Content-Length header", None, "length_required")
        if len(set(given)) > 1 or not given[0].strip().isdigit():
            raise ApiError(400, f"Content-Length must be one non-negative whole number, got {', '.join(given)!r}",
                           None, "invalid_content_length")
        length, limit = int(given[0]), self.server.limits.max_body
        if length > limit:
            raise ApiError(413, f"the request body of {length} bytes exceeds this server's limit of {limit} bytes "
                                f"(--max-body-mb); send smaller or fewer images", None, "request_too_large")
        self.connection.settimeout(self.server.limits.body_timeout)
        chunks, got = [], 0
        try:
            while got < length:
                chunk = self.rfile.read(min(_CHUNK, length - got))
                if not chunk:
                    break
                chunks.append(chunk)
                got += len(chunk)
        except (TimeoutError, OSError):
            pass
        if got < length:
            self.close_connection = True
            raise ApiError(400, f"the body ended after {got} of the {length} bytes its Content-Length announced",
                           None, "incomplete_body")
        return b"".join(chunks)

    def _json(self) -> object:
        try:
            return json.loads(self._body())
        except (ValueError, RecursionError) as e:  # RecursionError: JSON nested too deep to parse
            raise ApiError(400, f"the body is not valid JSON ({type(e).__name__}: {str(e)[:200]})", None,
                           "invalid_json") from None

    # ------------------------------------------------------------ routes

    def _route(self) -> str:
        return urlsplit(self.path).path.rstrip("/")

    def do_GET(self) -> None:
        try:
            self._check_key()
            if self._route() != "/v1/models":
                raise ApiError(404, f"no route GET {self._route()}", None, "not_found")
            self._send(200, {"object": "list", "data": self.server.served.listed()})
        except ApiError as e:
            self._error(e)

    def do_POST(self) -> None:
        routes = {"/v1/chat/completions": self._chat, "/v1/load_lora_adapter": self._load,
                  "/v1/unload_lora_adapter": self._unload}
        handler, read = routes.get(self._route()), False
        self._until = self._deadline()  # from when the request came, before its body is read
        try:
            self._check_key()
            if handler is None:
                raise ApiError(404, f"no route POST {self._route()}", None, "not_found")
            body = self._json()
            read = True
            handler(body)
        except ApiError as e:
            if not read:
                self.close_connection = True
            self._error(e, {"Retry-After": str(e.retry_after)} if isinstance(e, _Refused) else None)
            if not read:
                self._drain()

    def _chat(self, body) -> None:
        s = self.server
        with s.count_lock:
            s.count += 1
            fail = s.fail_every > 0 and s.count % s.fail_every == 0
        deadline = self._until
        request = parse_chat(body, s.limits)
        if not s.served.knows(request.model):
            raise ApiError(404, f"The model `{request.model}` does not exist.", "model", "model_not_found")
        if fail:
            raise _Refused(s.fail_status, "failing on purpose (--fail-every)", 0)
        job = Job(request, self.connection, deadline)
        try:
            s.batcher.submit(job)
        except Busy as e:
            raise _Refused(429, str(e), e.retry_after, "rate_limit_exceeded") from None
        if not job.done.wait(timeout=max(0.0, deadline - time.monotonic())):
            job.cancelled = True
        self._answer(job)

    def _deadline(self) -> float:
        """When the client stops waiting: its own read timeout when it says, at most the server's max_wait."""
        try:
            wait = min(float(self.headers.get("x-stainless-read-timeout", "inf")), self.server.max_wait)
        except ValueError:
            wait = self.server.max_wait
        return time.monotonic() + max(0.0, wait)

    def _answer(self, job: Job) -> None:
        reply = job.reply
        if reply is None:
            raise _Refused(503, "the request waited longer than its timeout; retry", 1)
        if not reply.ok:
            raise ApiError(500, reply.error or "the model gave no answer", None, "model_error")
        self._tokens = (reply.prompt_tokens, reply.completion_tokens)
        self._send(200, {
            "id": f"chatcmpl-{id(job):x}", "object": "chat.completion", "created": int(time.time()),
            "model": job.request.model or self.server.model_name,
            "choices": [_choice_json(i, a) for i, a in enumerate(reply.answers())],
            "usage": {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
                      "total_tokens": reply.prompt_tokens + reply.completion_tokens},
        })

    def _load(self, body) -> None:
        """Load an adapter as vLLM's runtime LoRA endpoint does (200 with a line of text)."""
        name, path = _field(body, "lora_name"), _field(body, "lora_path")
        self.server.served.load(name, path)
        self._send_text(f"Success: LoRA adapter '{name}' added successfully.")

    def _unload(self, body) -> None:
        name = _field(body, "lora_name")
        if not self.server.served.unload(name):
            raise ApiError(404, f"the lora adapter {name!r} cannot be found", "lora_name", "not_found")
        self._send_text(f"Success: LoRA adapter '{name}' removed successfully.")

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


class _Refused(ApiError):
    """An error answered with Retry-After (429, 503): the client may try again after that many seconds."""

    def __init__(self, status: int, message: str, retry_after: int, code: str | None = None):
        super().__init__(status, message, None, code)
        self.retry_after = retry_after


def _field(body, name: str) -> str:
    value = body.get(name) if isinstance(body, dict) else None
    if not isinstance(value, str):
        raise ApiError(400, f"{name} must be a string, got {value!r}", name, "invalid_value")
    return value


def _choice_json(index: int, choice: Choice) -> dict:
    """One choice of a chat completion, with `logprobs.content` when its tokens' log-probs were asked for."""
    out: dict = {"index": index, "finish_reason": choice.finish_reason,
                 "message": {"role": "assistant", "content": choice.text}}
    if choice.logprobs is not None:
        out["logprobs"] = {"content": [
            {"token": t.token, "logprob": t.logprob, "bytes": list(t.token.encode()),
             "top_logprobs": [{"token": w, "logprob": lp, "bytes": list(w.encode())} for w, lp in t.top]}
            for t in choice.logprobs]}
    return out


def make_server(judge, host: str = "127.0.0.1", port: int = 8000, model_name: str = "vlalign",
                fail_every: int = 0, fail_status: int = 503, *, limits: Limits = Limits(), api_key: str | None = None,
                lora_dirs=(), max_batch: int = 16, max_wait: float = 600.0, idle_timeout: float = 60.0,
                log: Callable[[str], None] | None = None) -> _Server:
    """A server (not yet serving) answering with `judge`; `port=0` picks a free port (`server.server_port`).
    `limits` bound what a request may ask; `api_key` (when set) is required on every request; adapters load
    only from `lora_dirs`; `max_batch` answers at most go to the model at once; a request is dropped once it
    has waited `max_wait` seconds (or its client's own timeout); a connection idle for `idle_timeout` seconds
    is closed; `log` gets one line per request."""
    return _Server((host, port), judge, model_name, limits, api_key=api_key, lora_dirs=lora_dirs,
                   fail_every=fail_every, fail_status=fail_status, max_batch=max_batch, max_wait=max_wait,
                   idle_timeout=idle_timeout, log=log)
