"""Masks secrets in URLs, headers and text before they reach a trace or a message.

A run's history is read by people who must not learn the CRM's API key from it.
These helpers are pure functions of their input (no I/O), cheap enough to call
for every traced step, and leave everything that is not a secret byte for byte
as it was so that a trace still shows which endpoint was called.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote_plus, urlsplit, urlunsplit

__all__ = ("MASK", "MIN_SECRET_LENGTH", "redact_url", "redact_headers", "redact_text")

#: What a secret is replaced with.
MASK = "***"

#: Secret strings shorter than this are not searched for in text: masking every
#: "1" or "on" (typical non-secret env values) would garble the whole trace.
MIN_SECRET_LENGTH = 4

#: Query keys whose value is masked: the key itself, or one of its words
#: (``access_token``, ``X-Amz-Signature``, ``apiKey``), is one of these.
_SECRET_QUERY_WORDS = frozenset(
    {
        "token",
        "key",
        "apikey",
        "secret",
        "password",
        "passwd",
        "pwd",
        "signature",
        "sig",
        "auth",
        "authorization",
        "credential",
        "credentials",
    }
)
_SECRET_QUERY_KEYS = frozenset({"api_key", "access_token", "client_secret", "refresh_token"})

#: Header names always masked, and substrings that make any header name secret.
_SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"}
)
_SECRET_HEADER_PARTS = ("token", "secret", "key", "auth", "password", "cookie")

_WORD_SPLIT = re.compile(r"[^A-Za-z0-9]+|(?<=[a-z0-9])(?=[A-Z])")


def _query_key_is_secret(raw_key: str) -> bool:
    key = unquote_plus(raw_key)
    if key.lower().replace("-", "_") in _SECRET_QUERY_KEYS:
        return True
    return any(word.lower() in _SECRET_QUERY_WORDS for word in _WORD_SPLIT.split(key) if word)


def _secret_list(secrets: Iterable[str]) -> list[str]:
    # Longest first, so that a secret containing another is masked whole.
    found = {s for s in secrets if isinstance(s, str) and len(s) >= MIN_SECRET_LENGTH}
    return sorted(found, key=len, reverse=True)


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every occurrence of each secret string replaced by ``***``.

    Secrets shorter than ``MIN_SECRET_LENGTH`` characters are ignored.
    """
    for secret in _secret_list(secrets):
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def redact_url(url: str, secrets: Iterable[str] = ()) -> str:
    """``url`` with its password and the values of secret-looking query keys masked.

    ``https://bob:pw@api.example.com/x?api_key=abc&page=2`` becomes
    ``https://bob:***@api.example.com/x?api_key=***&page=2``. The rest of the
    URL is kept as written (no re-encoding). Any of ``secrets`` found anywhere
    in it (a webhook URL whose path is itself the secret) is masked as well.
    Text that does not parse as a URL is returned with only ``secrets`` masked.
    """
    text = str(url)
    try:
        parts = urlsplit(text)
    except ValueError:
        return redact_text(text, secrets)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        if ":" in userinfo:
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}:{MASK}@{hostport}"
    query = parts.query
    if query:
        pieces = []
        for piece in query.split("&"):
            key, eq, _value = piece.partition("=")
            if eq and _query_key_is_secret(key):
                pieces.append(f"{key}={MASK}")
            else:
                pieces.append(piece)
        query = "&".join(pieces)
    if netloc != parts.netloc or query != parts.query:
        text = urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    return redact_text(text, secrets)


def _header_is_secret(name: str) -> bool:
    lowered = name.lower()
    return lowered in _SECRET_HEADERS or any(part in lowered for part in _SECRET_HEADER_PARTS)


def redact_headers(
    headers: Mapping[str, Any] | None, secrets: Iterable[str] = ()
) -> dict[str, Any]:
    """A copy of ``headers`` fit for a trace: secret headers masked whole.

    Masked: ``Authorization``, ``Proxy-Authorization``, ``Cookie``,
    ``Set-Cookie``, ``X-Api-Key`` and any header whose name contains
    ``token``, ``secret``, ``key``, ``auth``, ``password`` or ``cookie``
    (case-insensitive). In the other values, each of ``secrets`` is masked
    where it occurs. Names keep their case; non-text values are kept as they are.
    """
    if not headers:
        return {}
    secret_list = _secret_list(secrets)
    out: dict[str, Any] = {}
    for name, value in headers.items():
        if _header_is_secret(str(name)):
            out[name] = MASK
        elif isinstance(value, str) and secret_list:
            out[name] = redact_text(value, secret_list)
        else:
            out[name] = value
    return out
