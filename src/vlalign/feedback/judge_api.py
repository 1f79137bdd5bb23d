"""A judge behind any OpenAI-compatible chat endpoint (GPT-4o, vLLM, SGLang, Ollama, `vlalign serve`).

Requests run concurrently up to `concurrency`; a 429, a 5xx, a timeout or a dropped connection is retried
with exponential backoff (honouring Retry-After) up to `max_retries` times; any other failure, or one that
outlives its retries, comes back as a `ChatReply` with the error, naming the request's record. Token use
is accumulated in `usage`. The API key is read from an environment variable and never stored in a config,
a manifest or a log line.
"""

from __future__ import annotations

import base64
import io
import os
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from PIL import Image

from vlalign.feedback.judge import ChatReply, ChatRequest

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


def image_data_url(image: Image.Image) -> str:
    """A PNG data URL, the form every OpenAI-compatible server accepts for inline images."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def chat_messages(request: ChatRequest) -> list[dict]:
    """The request as OpenAI chat messages: images first, then the text, in one user turn."""
    content: list[dict] = [{"type": "image_url", "image_url": {"url": image_data_url(im)}} for im in request.images]
    content.append({"type": "text", "text": request.prompt})
    messages = [{"role": "system", "content": request.system}] if request.system else []
    return [*messages, {"role": "user", "content": content}]


@dataclass
class Usage:
    requests: int = 0
    failures: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for key, value in counts.items():
                setattr(self, key, getattr(self, key) + value)

    def to_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in ("requests", "failures", "retries", "prompt_tokens", "completion_tokens")}


class OpenAIJudge:
    """`complete(requests)` against `base_url` with `model`; see the module docstring for failure handling."""

    def __init__(self, model: str, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 concurrency: int = 8, max_retries: int = 5, timeout: float = 120.0, backoff: float = 1.0,
                 max_backoff: float = 60.0):
        from openai import OpenAI

        self.name = f"api:{model}"
        self.model, self.concurrency, self.max_retries = model, max(1, concurrency), max_retries
        self.backoff, self.max_backoff = backoff, max_backoff
        key = os.environ.get(api_key_env)
        if not key and base_url is None:
            raise ValueError(f"no API key: set the environment variable {api_key_env} (or point base_url at a "
                             f"local server, which needs none)")
        self.client = OpenAI(api_key=key or "unused", base_url=base_url, timeout=timeout, max_retries=0)
        self.usage = Usage()

    def _wait(self, attempt: int, error: Exception) -> float:
        retry_after = getattr(getattr(error, "response", None), "headers", {}).get("retry-after")
        try:
            if retry_after is not None:
                return min(float(retry_after), self.max_backoff)
        except ValueError:
            pass
        return min(self.backoff * 2 ** attempt, self.max_backoff) * (0.5 + random.random() / 2)

    def _one(self, request: ChatRequest) -> ChatReply:
        import openai

        for attempt in range(self.max_retries + 1):
            try:
                response = self.client.chat.completions.create(
                    model=self.model, messages=chat_messages(request), max_tokens=request.max_tokens,
                    temperature=request.temperature)
            except (openai.APITimeoutError, openai.APIConnectionError, openai.APIStatusError) as e:
                status = getattr(e, "status_code", None)
                retryable = status is None or status in RETRY_STATUS
                if retryable and attempt < self.max_retries:
                    self.usage.add(retries=1)
                    time.sleep(self._wait(attempt, e))
                    continue
                self.usage.add(requests=1, failures=1)
                what = f"HTTP {status}" if status is not None else type(e).__name__
                tries = f" after {attempt + 1} attempts" if retryable else ""
                return ChatReply(None, f"record {request.id or '?'}: {self.name} failed{tries}: {what}: {e}")
            usage = response.usage
            prompt_tokens = getattr(usage, "prompt_tokens", 0) or 0
            completion_tokens = getattr(usage, "completion_tokens", 0) or 0
            self.usage.add(requests=1, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
            text = response.choices[0].message.content if response.choices else None
            if text is None:
                self.usage.add(failures=1)
                return ChatReply(None, f"record {request.id or '?'}: {self.name} returned no text")
            return ChatReply(text, None, prompt_tokens, completion_tokens)
        raise AssertionError("unreachable")

    def complete(self, requests: Sequence[ChatRequest]) -> list[ChatReply]:
        if not requests:
            return []
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests))) as pool:
            return list(pool.map(self._one, requests))
