"""Secrets never reach what a run writes: one place that masks them, for text and for JSON-like values.

`redact_secrets(text)` masks whatever looks like a credential in a line of text (an error string, a log or
progress line): the userinfo of a URL (`http://user:PASS@host`), secret query values (`?key=...`,
`?api_key=...`), Authorization / api-key fields and headers, Bearer and Basic tokens, and any given values
(an API key read from the environment). `redact(value)` applies it to every string inside a dict or list
and masks the values of secret-named keys, for manifests, `summary.json` and the report. `safe_url` is a
URL fit to show. The run store, the runner's JSON writer, the progress lines and the error logs call these,
so a spec such as `api:m@http://user:PASS@host/v1` is masked wherever it is recorded.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

MASK = "***"

_SECRET_NAME = r"(?:proxy-)?authorization|x-api-key|api[-_]?key|access[-_]?token|token|password|passwd|secret"
_SECRET_FIELD = re.compile(
    rf"""(?<![A-Za-z0-9])(?P<name>{_SECRET_NAME})(?P<sep>["']?\s*[:=]\s*["']?)(?:(?:bearer|basic)\s+)?[^\s"',;&}}\]]+""",
    re.IGNORECASE)
_SCHEME_TOKEN = re.compile(r"\b(?P<scheme>bearer|basic)\s+[A-Za-z0-9._~+/=-]{6,}", re.IGNORECASE)
_USERINFO = re.compile(r"(?P<scheme>\b[a-z][a-z0-9+.-]*://)[^/\s@]+@", re.IGNORECASE)
_SECRET_QUERY = re.compile(rf"^(?:{_SECRET_NAME}|key|sig|signature)$", re.IGNORECASE)
# a query parameter of a URL in running text: `?key=...` or `&sig=...` up to the next separator
_QUERY_VALUE = re.compile(r"(?P<lead>[?&](?P<name>[A-Za-z0-9_.-]+)=)(?P<value>[^\s&#\"'<>,;)\]}]+)")
_SECRET_KEY = re.compile(r"(^|_)(api_?key|secret|password|token|authorization)$", re.IGNORECASE)


def redact_secrets(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with secrets masked: the given values (an API key, a URL password) wherever they occur, and
    whatever looks like one: Authorization / api-key fields and headers, Bearer and Basic tokens, the
    userinfo of URLs and their secret query values."""
    text = _USERINFO.sub(rf"\g<scheme>{MASK}@", mask_values(text, secrets))
    text = _QUERY_VALUE.sub(lambda m: m["lead"] + (MASK if _SECRET_QUERY.match(m["name"]) else m["value"]), text)
    text = _SECRET_FIELD.sub(lambda m: f"{m['name']}{m['sep']}{MASK}", text)
    return _SCHEME_TOKEN.sub(rf"\g<scheme> {MASK}", text)


def mask_values(text: str, secrets: Iterable[str]) -> str:
    """`text` with each of `secrets` masked wherever it occurs (longest first, so no piece of one is left);
    values shorter than 4 characters are left alone, as masking them would garble the text."""
    for secret in sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def redact(value: Any) -> Any:
    """`value` (JSON-like) with secrets masked: the values of secret-named keys (`api_key`, `password`, ...)
    and every credential inside a string (see `redact_secrets`), so they never reach a file the run writes."""
    if isinstance(value, dict):
        return {k: MASK if isinstance(k, str) and _SECRET_KEY.search(k) and v else redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return redact_secrets(value)
    return value


def safe_url(url: Any) -> str:
    """The URL fit to show: no user or password, secret-looking query values masked."""
    parts = urlsplit(str(url))
    netloc = parts.netloc.rpartition("@")[2]
    query = urlencode([(k, MASK if _SECRET_QUERY.match(k) else v)
                       for k, v in parse_qsl(parts.query, keep_blank_values=True)])
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def url_secrets(url: str | None) -> list[str]:
    """What a URL carries that must never be shown: its userinfo, user, password (plain and percent-decoded),
    secret query values, and the Basic credentials an HTTP client derives from the userinfo."""
    if not url:
        return []
    parts = urlsplit(url)
    found = [v for k, v in parse_qsl(parts.query) if _SECRET_QUERY.match(k)]
    userinfo = parts.netloc.rpartition("@")[0]
    if userinfo:
        plain = unquote(userinfo)
        found += [userinfo, plain, *plain.split(":", 1), base64.b64encode(plain.encode()).decode("ascii")]
    return [s for s in found if s]
