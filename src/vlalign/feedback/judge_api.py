"""A judge behind any OpenAI-compatible chat endpoint (GPT-4o, vLLM, SGLang, Ollama, `vlalign serve`).

Requests run concurrently up to `concurrency`, each with a `timeout`. A 429, a 5xx, a timeout, a dropped
connection or a reply whose body is not a chat completion (HTML from a proxy, invalid JSON, no choices)
is retried with exponential backoff, honouring Retry-After (seconds or an HTTP date), up to
`max_retries` times. Any other failure, or one that outlives its retries, comes back as a `ChatReply`
with the reason, naming the request's record: one bad reply never fails the rest of the batch. Token use
is accumulated in `usage`. A request's sampling fields (`n`, `seed`, `top_p`, `logprobs`, a `model` such as a
loaded LoRA adapter) go to the server as the chat API's own parameters, and every choice comes back in
`ChatReply.choices`; a server that ignores `n` or returns no log-probs fails the request, named as such.
`SpreadJudge` spreads requests over several base URLs of one model.

The API key is read from an environment variable and never stored in a config, a manifest or a log line:
every error string this client makes is passed through `redact_secrets` (the key, a password or key in
the base URL, Authorization header values), and URLs are shown as `safe_url` prints them. `check()`
asks the endpoint for its models before a run spends anything on it.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import random
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any

from PIL import Image

from vlalign.feedback.judge import (
    ChatReply,
    ChatRequest,
    Choice,
    JudgeUnavailable,
    TokenLogprob,
    checked_logprob,
)
from vlalign.redaction import mask_values, redact_secrets, safe_url, url_secrets

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
FATAL_STATUS = {401, 403, 404}  # the key, a permission, the model or the URL: no retry and no other record fixes them
FATAL_REPEATS = 3  # requests refused with one of them in a row (no success between) before no more are sent
DEFAULT_URL = "https://api.openai.com/v1"
CHECK_TIMEOUT = 10.0
_EXCERPT = 160

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


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds the server asks a client to wait (`retry-after-ms`, or `Retry-After` in seconds or as an HTTP
    date); None when it asks nothing usable (absent, negative, not a number, not a date)."""
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / scale
        except ValueError:
            continue
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    return _seconds_until(headers.get("retry-after"))


def _seconds_until(date: str | None) -> float | None:
    """Seconds from now until an HTTP date (0 for one in the past), or None when `date` is not one."""
    if not date:
        return None
    try:
        when = parsedate_to_datetime(date)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def excerpt(text: Any, secrets: Iterable[str] = (), limit: int = _EXCERPT) -> str:
    """A short quotable piece of a body, so an error shows what came back without pasting a page; secrets
    are masked before it is cut, so no piece of one survives the cut."""
    text = " ".join(redact_secrets(str(text), secrets).split())
    return repr(text if len(text) <= limit else text[:limit] + "...")


class BadReply(ValueError):
    """A 200 reply whose body is not a usable chat completion; `retry` says whether asking again may help."""

    def __init__(self, reason: str, retry: bool):
        super().__init__(reason)
        self.retry = retry


def _count(value: Any) -> int:
    """A token count from a usage object; anything but a non-negative integer counts as 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def parse_completion(body: str, secrets: Iterable[str] = ()) -> tuple[str, int, int]:
    """(text, prompt tokens, completion tokens) of a chat completion body; `BadReply` says what is wrong,
    quoting the body with `secrets` masked."""
    try:
        data = json.loads(body)
    except ValueError:
        raise BadReply(f"the reply is not JSON: {excerpt(body, secrets) if body.strip() else 'an empty body'}", True) from None
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise BadReply(f"the reply holds no choices: {excerpt(body, secrets)}", True)
    message = choices[0].get("message")
    if not isinstance(message, dict):
        raise BadReply(f"the reply's first choice has no message: {excerpt(body, secrets)}", True)
    content = message.get("content")
    if content is None:
        why = choices[0].get("finish_reason") or message.get("refusal") or "none given"
        raise BadReply(f"the reply holds no text (finish_reason: {excerpt(why, secrets)})", False)
    if not isinstance(content, str):
        raise BadReply(f"the reply's content is a {type(content).__name__}, not text: {excerpt(body, secrets)}", True)
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    return content, _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))


def _logprobs(choice: dict) -> tuple[TokenLogprob, ...] | None:
    """A choice's tokens with their log-probs; `BadReply` (worth a retry) when one is not a log-probability
    (NaN, infinite, positive): a labeler would read it as a P(yes)."""
    content = (choice.get("logprobs") or {}).get("content")
    if not isinstance(content, list):
        return None
    try:
        return tuple(TokenLogprob(str(t["token"]), checked_logprob(t["logprob"]),
                                  tuple((str(a["token"]), checked_logprob(a["logprob"]))
                                        for a in t.get("top_logprobs") or ()))
                     for t in content)
    except ValueError as e:
        raise BadReply(f"the reply's log-probs are broken: {e}", True) from None


def parse_choices(body: str, request: ChatRequest, secrets: Iterable[str] = ()) -> list[Choice]:
    """Every choice of a chat completion body (in `index` order), with its log-probs; `BadReply` (not worth
    a retry) when the server ignored what `request` asked: fewer than `n` choices, or no log-probs."""
    try:
        raw = sorted(json.loads(body)["choices"], key=lambda c: c.get("index", 0))
        choices = [Choice(c["message"]["content"] or "", _logprobs(c)) for c in raw]
    except BadReply:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise BadReply(f"the reply's choices are malformed ({type(e).__name__}: {e}): {excerpt(body, secrets)}", True) from None
    if len(choices) != max(request.n, 1):
        raise BadReply(f"asked for n={request.n} answers, the reply holds {len(choices)}: the server ignores n", False)
    if request.logprobs is not None and any(c.logprobs is None for c in choices):
        raise BadReply("asked for logprobs, the reply holds none: the server does not return logprobs", False)
    return choices


def sampling_options(request: ChatRequest) -> dict[str, Any]:
    """The chat API's sampling fields `request` sets (none of them when it keeps the defaults)."""
    options: dict[str, Any] = {}
    if request.n != 1:
        options["n"] = request.n
    if request.seed is not None:
        options["seed"] = request.seed
    if request.top_p != 1.0:
        options["top_p"] = request.top_p
    if request.logprobs is not None:
        options.update(logprobs=True, top_logprobs=request.logprobs)
    return options


def _error_message(body: Any, secrets: Iterable[str] = ()) -> str:
    """The message of an error reply: its `error.message` when it has one, else a piece of the body."""
    if isinstance(body, dict):
        error = body.get("error", body)
        message = error.get("message") if isinstance(error, dict) else error
        if isinstance(message, str) and message:
            return excerpt(message, secrets)
    return excerpt(body, secrets) if body else "no body"


def _connection_failure(url: str, error: BaseException) -> str:
    """What went wrong with the connection, with the low-level reason (refused, reset, DNS, cut short) that
    the SDK's own message ("Connection error.") hides."""
    inner = error.__cause__ or error.__context__
    cause = f"{type(inner).__name__}: {inner}" if inner is not None and str(inner) else type(error).__name__
    if inner is None or "connect" in type(inner).__name__.lower():
        return f"cannot reach {url} ({cause})"
    return f"the connection to {url} broke before a complete reply ({cause})"


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


@dataclass
class _Transient:
    """A failed attempt worth repeating, with the server's requested wait when it gave one."""

    reason: str
    wait: float | None = None


def _at_least(name: str, value: float, minimum: float, whole: bool = False) -> None:
    """Refuse a setting that would misbehave later (no workers, a zero timeout, a fractional retry count)."""
    kinds = (int,) if whole else (int, float)
    if not isinstance(value, kinds) or isinstance(value, bool) or not value >= minimum:
        kind = "a whole number" if whole else "a number"
        raise ValueError(f"judge setting {name}={value!r} must be {kind} >= {minimum:g}")


class OpenAIJudge:
    """`complete(requests)` against `base_url` with `model`; see the module docstring for failure handling."""

    def __init__(self, model: str, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 concurrency: int = 8, max_retries: int = 5, timeout: float = 120.0, backoff: float = 1.0,
                 max_backoff: float = 60.0):
        from openai import OpenAI

        _at_least("concurrency", concurrency, 1, whole=True)
        _at_least("max_retries", max_retries, 0, whole=True)
        for name, value, minimum in (("timeout", timeout, 1e-3), ("backoff", backoff, 0), ("max_backoff", max_backoff, 0)):
            _at_least(name, value, minimum)
        self.name = f"api:{model}"
        self.model, self.concurrency, self.max_retries = model, int(concurrency), int(max_retries)
        self.timeout, self.backoff, self.max_backoff = float(timeout), backoff, max_backoff
        self.api_key_env, self.url = api_key_env, safe_url(base_url or DEFAULT_URL)
        key = os.environ.get(api_key_env)
        if not key and base_url is None:
            raise ValueError(f"no API key: set the environment variable {api_key_env} (or point base_url at a "
                             f"local server, which needs none)")
        self._secrets = [s for s in (key, *url_secrets(base_url)) if s]
        self.client = OpenAI(api_key=key or "unused", base_url=base_url, timeout=self.timeout, max_retries=0)
        self.usage = Usage()
        self._lock, self._fatal, self._stopped = threading.Lock(), [], None  # see `_refused`

    def __repr__(self) -> str:
        return f"OpenAIJudge({self.model!r}, {self.url!r}, concurrency={self.concurrency}, timeout={self.timeout:g})"

    def redact(self, text: str) -> str:
        """`text` with this judge's key and URL credentials masked, and anything else that looks secret."""
        return redact_secrets(text, self._secrets)

    def _wait(self, attempt: int, asked: float | None) -> float:
        if asked is not None:
            return min(asked, self.max_backoff)
        return min(self.backoff * 2 ** attempt, self.max_backoff) * (0.5 + random.random() / 2)

    def _attempt(self, request: ChatRequest) -> ChatReply | _Transient:
        """One try: a reply (text, or a failure not worth repeating) or a transient failure."""
        import openai

        try:
            raw = self.client.chat.completions.with_raw_response.create(
                model=request.model or self.model, messages=chat_messages(request), max_tokens=request.max_tokens,
                temperature=request.temperature, **sampling_options(request))
            text, prompt_tokens, completion_tokens = parse_completion(raw.text, self._secrets)
            detailed = request.n != 1 or request.logprobs is not None
            choices = parse_choices(raw.text, request, self._secrets) if detailed else []
        except openai.APITimeoutError:
            return _Transient(f"APITimeoutError: no reply from {self.url} within the timeout of {self.timeout:g} s")
        except openai.APIConnectionError as e:
            return _Transient(f"APIConnectionError: {_connection_failure(self.url, e)}")
        except openai.APIStatusError as e:
            reason = f"HTTP {e.status_code}: {_error_message(e.body, self._secrets)}"
            if e.status_code in RETRY_STATUS:
                return _Transient(reason, retry_after(e.response.headers))
            return ChatReply(None, reason + self._hint(e.status_code), meta={"status": e.status_code})
        except BadReply as e:
            return _Transient(str(e)) if e.retry else ChatReply(None, str(e))
        # a server that echoes the request's headers must not hand the key back inside a reply either
        masked = [Choice(mask_values(c.text, self._secrets), c.logprobs) for c in choices]
        return ChatReply(mask_values(text, self._secrets), None, prompt_tokens, completion_tokens, choices=masked)

    def _hint(self, status: int) -> str:
        """What to do about a client error that no retry will fix."""
        if status in (401, 403):
            return f" (the endpoint refused the API key: set {self.api_key_env} to a valid key)"
        if status == 404:
            return f" (check the model name {self.model!r} and the base URL {self.url})"
        return ""

    def _failed(self, request: ChatRequest, reason: str, attempts: int = 0) -> ChatReply:
        self.usage.add(requests=1, failures=1)
        tries = f" after {attempts} attempts" if attempts else ""
        return ChatReply(None, self.redact(f"record {request.id or '?'}: {self.name} failed{tries}: {reason}"))

    def _one(self, request: ChatRequest) -> ChatReply:
        if self._stopped is not None:
            return ChatReply(None, self.redact(f"record {request.id or '?'}: {self.name}: not sent, as the endpoint "
                                               f"refused the requests before it ({self._stopped})"))
        for attempt in range(self.max_retries + 1):
            outcome = self._attempt(request)
            if isinstance(outcome, ChatReply):
                self._refused(outcome.meta.get("status") if not outcome.ok else None, outcome.error)
                if not outcome.ok:
                    return self._failed(request, outcome.error or "no reason given")
                self.usage.add(requests=1, prompt_tokens=outcome.prompt_tokens,
                               completion_tokens=outcome.completion_tokens)
                return outcome
            if attempt < self.max_retries:
                self.usage.add(retries=1)
                time.sleep(self._wait(attempt, outcome.wait))
        self._refused(None, None)
        return self._failed(request, outcome.reason, attempts=self.max_retries + 1)

    def _refused(self, status: int | None, reason: str | None) -> None:
        """Note how a request ended: after `FATAL_REPEATS` in a row refused with the same status of
        `FATAL_STATUS` (the key, a permission, the model), no more requests are sent (see `complete`)."""
        with self._lock:
            self._fatal = [*self._fatal, status][-FATAL_REPEATS:] if status in FATAL_STATUS else []
            if len(self._fatal) == FATAL_REPEATS and len(set(self._fatal)) == 1 and self._stopped is None:
                self._stopped = reason

    def _stop(self) -> JudgeUnavailable:
        return self._unavailable(f"{self.url} refused {FATAL_REPEATS} requests in a row ({self._stopped}), so no "
                                 f"more are sent", "fix that and run the same command again (what is done is kept)")

    def _guarded(self, request: ChatRequest) -> ChatReply:
        """`_one`, with anything unforeseen turned into this request's failure rather than the batch's."""
        try:
            return self._one(request)
        except Exception as e:
            return self._failed(request, f"unexpected {type(e).__name__}: {e}")

    def complete(self, requests: Sequence[ChatRequest]) -> list[ChatReply]:
        """Every request's reply; `JudgeUnavailable` instead once the endpoint has refused `FATAL_REPEATS`
        requests in a row with the same 401, 403 or 404 (a bad key is noticed after a few requests, not after
        every record was sent and failed)."""
        if self._stopped is not None:
            raise self._stop()
        if not requests:
            return []
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests))) as pool:
            replies = list(pool.map(self._guarded, requests))
        if self._stopped is not None:
            raise self._stop()
        return replies

    def check(self, timeout: float = CHECK_TIMEOUT) -> list[str]:
        """Ask the endpoint for its models (GET /models) and return their ids, so a run learns before its
        first stage that the endpoint is unreachable, refuses the key or does not serve `model`; raises
        `JudgeUnavailable` naming the URL and the fix."""
        import openai

        try:
            raw = self.client.with_options(timeout=timeout, max_retries=0).models.with_raw_response.list()
        except openai.APITimeoutError:
            raise self._unavailable(f"{self.url} did not answer GET /models within {timeout:g} s",
                                    "check that the server is up and not overloaded") from None
        except openai.APIConnectionError as e:
            raise self._unavailable(_connection_failure(self.url, e), "start the server, or fix the "
                                    "base URL (api:MODEL@URL in the judge spec, or OPENAI_BASE_URL)") from None
        except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
            raise self._unavailable(f"{self.url} refused the API key (HTTP {e.status_code}: "
                                    f"{_error_message(e.body, self._secrets)})", f"set {self.api_key_env} to a valid key") from None
        except openai.NotFoundError:
            return []  # it answers but lists no models: requests will say whether `model` is served
        except openai.APIStatusError as e:
            raise self._unavailable(f"{self.url} answered GET /models with HTTP {e.status_code}: "
                                    f"{_error_message(e.body, self._secrets)}", "check the base URL and the server") from None
        return self._served(raw.text)

    def _served(self, body: str) -> list[str]:
        try:
            listed = json.loads(body).get("data")
            ids = [m["id"] for m in listed if isinstance(m, dict) and isinstance(m.get("id"), str)]
        except (ValueError, AttributeError, TypeError):
            raise self._unavailable(f"{self.url}/models answered with {excerpt(body, self._secrets)}, not a model list",
                                    "point the base URL at an OpenAI-compatible endpoint (it usually ends in "
                                    "/v1)") from None
        if ids and self.model not in ids:
            raise self._unavailable(f"{self.url} does not serve model {self.model!r}; it serves "
                                    f"{', '.join(ids[:20])}", "name one of them in the judge spec (api:MODEL@URL)")
        return ids

    def _unavailable(self, what: str, fix: str) -> JudgeUnavailable:
        return JudgeUnavailable(self.redact(f"judge {self.name}: {what}: {fix}"))


class SpreadJudge:
    """One OpenAI-compatible model served at several base URLs: request i goes to URL i mod len(urls), all of
    them at once, so many servers (vLLM replicas, `vlalign serve` processes) share a stage's requests. The
    servers must serve the same model: which one answers does not change a seeded answer."""

    def __init__(self, judges: Sequence[OpenAIJudge]):
        if not judges:
            raise ValueError("SpreadJudge needs at least one endpoint")
        self.judges = list(judges)
        self.name, self.model = judges[0].name, judges[0].model
        self.usage = Usage()
        for j in self.judges:
            j.usage = self.usage  # one count for the stage's manifest, whichever server answered

    @property
    def urls(self) -> list[str]:
        return [j.url for j in self.judges]

    def __repr__(self) -> str:
        return f"SpreadJudge({self.model!r}, {self.urls!r})"

    def complete(self, requests: Sequence[ChatRequest]) -> list[ChatReply]:
        count = len(self.judges)
        shares = [list(requests[i::count]) for i in range(count)]
        with ThreadPoolExecutor(max_workers=count) as pool:
            answered = list(pool.map(lambda pair: pair[0].complete(pair[1]), zip(self.judges, shares, strict=True)))
        out: list[ChatReply] = [None] * len(requests)  # type: ignore[list-item]
        for i, replies in enumerate(answered):
            out[i::count] = replies
        return out

    def check(self, timeout: float = CHECK_TIMEOUT) -> list[str]:
        """Every endpoint answers and serves the model (see `OpenAIJudge.check`)."""
        return [m for j in self.judges for m in j.check(timeout)]
