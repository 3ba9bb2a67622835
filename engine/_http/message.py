"""Turns a step's values into an HTTP request, and response bytes back into values.

Pure functions, no I/O: the URL with its query, the header block, the body in
one of the ``body_format``s, and the decoded body of a response. Values that
are not text are rendered the way a text template renders them (``true``,
``3``, ``2.5``, compact JSON for lists and objects) so that ``"{{ n }}"`` in a
header and ``n`` in ``query`` send the same characters.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import msgspec
from yarl import URL

from runtime._errors import LimitExceeded
from runtime._values import check_limits

__all__ = (
    "METHODS",
    "BODY_FORMATS",
    "BadValue",
    "BadUrl",
    "BadJson",
    "to_text",
    "build_url",
    "add_query",
    "build_headers",
    "has_header",
    "encode_body",
    "is_json_type",
    "decode_body",
)

METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
BODY_FORMATS = ("json", "form", "text", "raw", "none")

#: Methods whose requests never carry a body here (a non-null body is refused).
_BODYLESS = frozenset({"GET", "HEAD"})
_DEFAULT_CONTENT_TYPE = {
    "json": "application/json",
    "form": "application/x-www-form-urlencoded",
    "text": "text/plain; charset=utf-8",
    "raw": "application/octet-stream",
}
_json_encode = msgspec.json.Encoder().encode
#: Charset names read as UTF-8 (after lower-casing and "_" -> "-").
_UTF8 = ("utf-8", "utf8")
_BOM = b"\xef\xbb\xbf"
_json_decode = msgspec.json.Decoder().decode


class BadValue(ValueError):
    """A value cannot go into the request; the client reports it with context."""


class BadUrl(BadValue):
    """The URL itself is unusable (as opposed to a query value or the body)."""


class BadJson(ValueError):
    """A response that says JSON is not JSON; ``text`` is the body as text."""

    def __init__(self, reason: str, text: str) -> None:
        super().__init__(reason)
        self.text = text


def _measured(value: Any, what: str) -> None:
    """Raise BadValue when the list or object ``value`` would write out past the limits.

    Values may share parts (``[s, s]`` holds ``s`` twice): one small in memory
    can write out to more JSON than any server takes, and writing it would hold
    the event loop until memory runs out. ``check_limits`` measures it first, in
    time linear in its distinct parts.
    """
    try:
        check_limits(value)
    except LimitExceeded as exc:
        raise BadValue(f"{what} cannot be sent: {exc.message}") from None


def to_text(value: Any) -> str:
    """``value`` as the characters a text template would produce."""
    if isinstance(value, str):
        return value
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer() and abs(value) < 1e16:
            return str(int(value))
        return repr(value)
    if isinstance(value, (list, tuple, dict)):
        _measured(value, f"a {type(value).__name__}")
        try:
            return _json_encode(value).decode()
        except (TypeError, ValueError) as exc:
            raise BadValue(f"cannot render {type(value).__name__} as JSON: {exc}") from exc
    raise BadValue(f"cannot send a value of type {type(value).__name__}")


def _pairs(values: Mapping[str, Any], what: str) -> list[tuple[str, str]]:
    """Key/text pairs: None skipped, lists become repeated keys."""
    if not isinstance(values, Mapping):
        raise BadValue(f"{what} must be an object of names to values, not {type(values).__name__}")
    _measured(values, what)  # all its texts together, not each one (a list may repeat one value)
    pairs: list[tuple[str, str]] = []
    for key, value in values.items():
        if value is None:
            continue
        name = to_text(key)
        if isinstance(value, (list, tuple)):
            pairs.extend((name, to_text(v)) for v in value if v is not None)
        else:
            pairs.append((name, to_text(value)))
    return pairs


#: the usual cause of an empty or relative URL: a template such as
#: "{{ env.N8N_WEBHOOK_URL }}/sync" whose variable is not set (null is written as nothing)
_UNSET_ENV = (
    "; when the URL is built from an environment variable, that variable is probably not set "
    "(an unset env.NAME reads as null, written as nothing): set it, or list it in the task's requires_env"
)


def build_url(url: Any, query: Mapping[str, Any] | None) -> URL:
    """The absolute http(s) URL to call, with ``query`` appended to any query it has."""
    if not isinstance(url, str) or not url.strip():
        raise BadUrl(f"the URL must be non-empty text, got {url!r:.80}" + (_UNSET_ENV if url in (None, "") else ""))
    try:
        target = URL(url.strip())
    except (TypeError, ValueError) as exc:
        raise BadUrl(f"the URL does not parse: {exc}") from exc
    if target.scheme not in ("http", "https"):
        if not target.scheme:
            raise BadUrl(f"only http:// and https:// URLs can be called; {url.strip()[:80]!r} has no scheme "
                         f"(a relative URL){_UNSET_ENV}")
        raise BadUrl(f"only http:// and https:// URLs can be called; the scheme is '{target.scheme}:'")
    if not target.host:
        raise BadUrl("the URL has no host name")
    return add_query(target, query) if query else target


def add_query(target: URL, query: Mapping[str, Any]) -> URL:
    """``target`` with ``query``'s pairs appended to any query it has."""
    pairs = _pairs(query, "query")
    return target.extend_query(pairs) if pairs else target


#: a header name is an HTTP token (RFC 9110, section 5.6.2); anything else the server refuses
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def build_headers(headers: Mapping[str, Any] | None) -> dict[str, str]:
    """Header block as text; None values skipped; CR/LF refused (header injection)."""
    if not headers:
        return {}
    if not isinstance(headers, Mapping):
        raise BadValue(
            f"headers must be an object of names to values, not {type(headers).__name__}"
        )
    _measured(headers, "headers")
    out: dict[str, str] = {}
    for name, value in headers.items():
        if value is None:
            continue
        key = to_text(name)
        text = to_text(value)
        if not _TOKEN.fullmatch(key):
            raise BadValue(
                f"{key!r} is not a valid header name: use letters, digits and !#$%&'*+-.^_`|~ only"
            )
        if "\r" in text or "\n" in text:
            raise BadValue(f"the value of header {key!r} contains a line break")
        out[key] = text
    return out


def has_header(headers: Mapping[str, str], name: str) -> bool:
    lowered = name.lower()
    return any(k.lower() == lowered for k in headers)


def encode_body(method: str, body: Any, body_format: str) -> tuple[bytes | None, str | None]:
    """``(payload, default Content-Type)`` for ``body`` in ``body_format``.

    A null body sends nothing in every format. ``GET``/``HEAD`` with a body
    and ``"none"`` with a body are refused rather than silently dropped.
    """
    if body_format not in BODY_FORMATS:
        raise BadValue(
            f"body_format must be one of {', '.join(BODY_FORMATS)}, not {body_format!r:.40}"
        )
    if body is None:
        return None, None
    if body_format == "none":
        raise BadValue('body_format is "none" but a body was given; remove one of them')
    if method in _BODYLESS:
        raise BadValue(f"a {method} request carries no body; put the values in `query` instead")
    if body_format == "json":
        _measured(body, "the body")
        try:
            payload = _json_encode(body)
        except (TypeError, ValueError, OverflowError) as exc:
            raise BadValue(f"the body cannot be encoded as JSON: {exc}") from exc
    elif body_format == "form":
        if isinstance(body, str):  # already urlencoded by the stack
            payload = body.encode()
        else:
            payload = urlencode(_pairs(body, "a form body")).encode("ascii")
    elif isinstance(body, (bytes, bytearray)):
        payload = bytes(body)
    else:
        payload = to_text(body).encode()
    return payload, _DEFAULT_CONTENT_TYPE[body_format]


def is_json_type(mimetype: str) -> bool:
    """``application/json`` and any ``+json`` type (``application/problem+json``)."""
    return mimetype == "application/json" or mimetype.endswith("+json")


def _text(raw: bytes, charset: str | None) -> str:
    if charset:
        try:
            return raw.decode(charset, errors="replace")
        except LookupError:  # unknown charset name: fall back to UTF-8
            pass
    return raw.decode("utf-8", errors="replace")


def decode_body(raw: bytes, mimetype: str, charset: str | None) -> Any:
    """JSON value when the type says JSON, else text; an empty body is None.

    Raises ``BadJson`` (with the body as text) when a JSON type holds no JSON.
    """
    if not raw:
        return None
    if mimetype != "application/json" and not mimetype.endswith("+json"):  # is_json_type, inline
        return _text(raw, charset)
    if charset and charset not in _UTF8 and charset.lower().replace("_", "-") not in _UTF8:
        source: bytes | str = _text(raw, charset)
    else:
        source = raw[3:] if raw[:3] == _BOM else raw
    try:
        return _json_decode(source)
    except msgspec.DecodeError as exc:
        text = source if isinstance(source, str) else _text(source, None)
        raise BadJson(str(exc), text) from exc
