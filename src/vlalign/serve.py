"""`vlalign serve`: an OpenAI-compatible chat endpoint in front of a local model.

`POST /v1/chat/completions` (text and `image_url` parts with data URLs) and `GET /v1/models`, enough for the
`openai` SDK and for every judge-backed step here, so a world model can stand in for GPT-4o and the API
path is tested against a real HTTP server. Requests are answered one at a time by one model. `fail_every`
makes every k-th request fail with 503 (or 429 when `fail_status` says so), to test clients' retries.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image

from vlalign.feedback.judge import ChatRequest


def _decode_image(url: str) -> Image.Image:
    if not url.startswith("data:"):
        raise ValueError("only data: URLs are accepted for images (this server reaches no network)")
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")


def parse_chat(body: dict) -> ChatRequest:
    """The ChatRequest an OpenAI chat body asks for; a malformed body raises ValueError with the reason."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list")
    system, texts, images = None, [], []
    for m in messages:
        content = m.get("content")
        if m.get("role") == "system":
            system = content if isinstance(content, str) else " ".join(p.get("text", "") for p in content)
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


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, judge, model_name: str, fail_every: int, fail_status: int):
        super().__init__(address, _Handler)
        self.judge, self.model_name = judge, model_name
        self.fail_every, self.fail_status = fail_every, fail_status
        self.lock, self.count = threading.Lock(), 0


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args) -> None:  # quiet: one line per request is noise in a pipeline
        pass

    def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": self.server.model_name, "object": "model"}]})
        else:
            self._send(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self) -> None:
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._send(404, {"error": {"message": f"no route {self.path}"}})
            return
        s = self.server
        with s.lock:
            s.count += 1
            fail = s.fail_every > 0 and s.count % s.fail_every == 0
        if fail:
            self._send(s.fail_status, {"error": {"message": "failing on purpose (--fail-every)"}},
                       {"Retry-After": "0"})
            return
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            request = parse_chat(body)
        except (ValueError, KeyError, json.JSONDecodeError) as e:
            self._send(400, {"error": {"message": f"bad request: {e}"}})
            return
        with s.lock:  # one model, one request at a time
            reply = s.judge.complete([request])[0]
        if not reply.ok:
            self._send(500, {"error": {"message": reply.error}})
            return
        prompt_tokens = len(request.prompt.split())
        completion_tokens = len(reply.text.split())
        self._send(200, {
            "id": f"chatcmpl-{s.count}", "object": "chat.completion", "created": int(time.time()),
            "model": s.model_name,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": reply.text}}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        })


def make_server(judge, host: str = "127.0.0.1", port: int = 8000, model_name: str = "vlalign",
                fail_every: int = 0, fail_status: int = 503) -> _Server:
    """A server (not yet serving) answering with `judge`; `port=0` picks a free port (`server.server_port`)."""
    return _Server((host, port), judge, model_name, fail_every, fail_status)
