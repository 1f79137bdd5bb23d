"""What a chat request may ask of `vlalign serve`, checked before any of it reaches the model.

`parse_chat(body, limits)` turns an OpenAI chat body into a `ChatRequest`, or raises `ApiError` with the
status, the parameter at fault and the reason, in OpenAI's error shape
(`{"error": {"message", "type", "param", "code"}}`): a wrong type, a value out of range (`max_tokens` 0 or
over the server's maximum, a seed outside 64 bits, a temperature that is not a finite number, `n` that is
not a whole number from 1 to the server's bound), streaming (not served), and images that are not readable
data URLs or that hold more pixels than the server decodes (checked from the image's header, before the
pixels are decompressed, so a decompression bomb costs nothing). The bounds are the server's `Limits`.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import warnings
from dataclasses import dataclass
from typing import Any

from PIL import Image

from vlalign.feedback.judge import ChatRequest

SEED_RANGE = 2 ** 63  # seeds are 64-bit signed integers, as vLLM takes them; negative ones are refused here
MAX_TOP_LOGPROBS = 20  # alternatives per token, as OpenAI and vLLM's default allow
ROLES = ("system", "developer", "user", "assistant")

# OpenAI's error types by status (clients branch on the status; the type and code say why in words)
ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "permission_error",
               404: "invalid_request_error", 411: "invalid_request_error", 413: "invalid_request_error",
               429: "rate_limit_error", 500: "server_error", 503: "server_error"}


class ApiError(Exception):
    """A request the server answers with `status` and OpenAI's error body instead of a completion."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": ERROR_TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server; `vlalign serve`'s options set them."""

    max_body: int = 16 * 2 ** 20  # bytes of a request body, refused (413) before it is read
    max_images: int = 8  # images in one request
    max_image_pixels: int = 4096 * 4096  # width x height of one image, read from its header before decoding
    max_tokens: int = 4096  # the most a request may ask for (max_tokens / max_completion_tokens)
    default_max_tokens: int = 256  # answer length when a request does not say
    max_n: int = 128  # answers one request may ask for (OpenAI's bound)
    max_queue: int = 256  # requests waiting or being answered; more are refused with 429 and Retry-After
    body_timeout: float = 30.0  # seconds a client has to send the body it announced

    def __post_init__(self) -> None:
        for name in ("max_body", "max_images", "max_image_pixels", "max_tokens", "default_max_tokens", "max_n",
                     "max_queue"):
            if getattr(self, name) < 1:
                raise ValueError(f"serve limit {name} must be at least 1, got {getattr(self, name)}")
        if self.default_max_tokens > self.max_tokens:
            raise ValueError(f"default_max_tokens ({self.default_max_tokens}) exceeds max_tokens ({self.max_tokens})")


def _invalid(param: str, message: str) -> ApiError:
    return ApiError(400, f"{param}: {message}", param, "invalid_value")


def _integer(body: dict, name: str, low: int, high: int, default: int | None) -> int | None:
    """A whole-number field within [low, high]: 3 and 3.0 are accepted (as vLLM's pydantic does), 2.7,
    true and "3" are not."""
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid(name, f"must be a whole number, got {value!r}")
    if not low <= value <= high:
        raise _invalid(name, f"must be between {low} and {high} on this server, got {value}")
    return value


def _number(body: dict, name: str, low: float, high: float, default: float, low_open: bool = False) -> float:
    """A finite number within [low, high] (or (low, high] with `low_open`); NaN and infinities are refused."""
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _invalid(name, f"must be a finite number, got {value!r}")
    if value < low or value > high or (low_open and value == low):
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise _invalid(name, f"must be in {interval}, got {value!r}")
    return float(value)


def decode_image(url: Any, param: str, limits: Limits) -> Image.Image:
    """The RGB image of a base64 data URL, its size checked from the header before its pixels are decoded."""
    if not isinstance(url, str) or not url.startswith("data:"):
        raise _invalid(param, "only data: URLs are accepted for images (this server reaches no network)")
    try:
        data = base64.b64decode(url.split(",", 1)[1], validate=True)
    except (IndexError, binascii.Error, ValueError) as e:
        raise _invalid(param, f"not a base64 data URL ({e})") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))  # reads the header only
            width, height = image.size
            if width * height > limits.max_image_pixels:
                raise _invalid(param, f"an image of {width}x{height} pixels is larger than this server decodes "
                                      f"({limits.max_image_pixels} pixels); send a smaller one")
            return image.convert("RGB")
    except ApiError:
        raise
    except Exception as e:  # PIL raises many kinds (OSError, SyntaxError, struct.error, zlib.error, ...)
        raise _invalid(param, f"not a readable image ({type(e).__name__}: {e})") from None


def _content(message: dict, i: int, limits: Limits, images: list) -> list[str]:
    """The texts of one message's content (its images appended to `images`)."""
    content = message.get("content")
    if content is None or isinstance(content, str):
        return [content] if content else []
    if not isinstance(content, list):
        raise _invalid(f"messages[{i}].content", "must be a string or a list of content parts")
    texts = []
    for j, part in enumerate(content):
        where = f"messages[{i}].content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            if len(images) >= limits.max_images:
                raise _invalid(where, f"more than {limits.max_images} images in one request")
            images.append(decode_image(url, where, limits))
        else:
            raise _invalid(where, "must be {type: text, text: ...} or {type: image_url, image_url: {url: ...}}")
    return texts


def parse_chat(body: Any, limits: Limits = Limits()) -> ChatRequest:
    """The ChatRequest an OpenAI chat body asks for; `ApiError` (400) names the parameter and the reason."""
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object", None, "invalid_body")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise _invalid("messages", "must be a non-empty list of message objects")
    if body.get("stream"):
        raise _invalid("stream", "streaming is not served here; leave stream unset")
    system, texts, images = None, [], []
    for i, m in enumerate(messages):
        if m.get("role") not in ROLES:
            raise _invalid(f"messages[{i}].role", f"must be one of {', '.join(ROLES)}, got {m.get('role')!r}")
        parts = _content(m, i, limits, images)
        if m["role"] in ("system", "developer"):
            system = " ".join(parts)
        else:
            texts += parts
    tokens = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    return ChatRequest(prompt="\n".join(texts), images=tuple(images), system=system,
                       max_tokens=_integer(body, tokens, 1, limits.max_tokens, limits.default_max_tokens),
                       **_sampling(body, limits))


def _sampling(body: dict, limits: Limits) -> dict:
    """The sampling fields of a chat body (n, seed, temperature, top_p, logprobs, model), checked."""
    n = _integer(body, "n", 1, limits.max_n, 1)
    seed = _integer(body, "seed", 0, SEED_RANGE - n, None)
    logprobs = body.get("logprobs")
    if logprobs is not None and not isinstance(logprobs, bool):
        raise _invalid("logprobs", f"must be true or false, got {logprobs!r}")
    top = _integer(body, "top_logprobs", 0, MAX_TOP_LOGPROBS, None)
    if top is not None and not logprobs:
        raise _invalid("top_logprobs", "needs logprobs: true")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise _invalid("model", f"must be a string (a served model's name), got {model!r}")
    return {"n": n, "seed": seed, "temperature": _number(body, "temperature", 0.0, 2.0, 0.0),
            "top_p": _number(body, "top_p", 0.0, 1.0, 1.0, low_open=True),
            "logprobs": (top or 0) if logprobs else None, "model": model}
