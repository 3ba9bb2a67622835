"""Filters that encode and decode: JSON, URL, base64, hashes and HMAC.

Texts are hashed and base64-encoded as their UTF-8 bytes; decoded bytes must
be UTF-8 text again, because values are JSON data and have no bytes type.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import urllib.parse
from collections.abc import Mapping

import msgspec

from runtime._errors import ExpressionError
from runtime._values import check_limits, json_dumps, show, to_text, type_name
from runtime.filters._registry import check_text, need_text, register, texts

__all__ = ()


@register("json_encode")
def f_json_encode(value):
    """The value as compact JSON text."""
    return json_dumps(dict(value) if isinstance(value, Mapping) and type(value) is not dict else value)


@register("json_decode")
def f_json_decode(value):
    """The value a JSON text describes."""
    text = need_text("json_decode", value)
    try:
        result = msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        raise ExpressionError(f"filter 'json_decode' got text that is not JSON ({exc}): {show(text)}") from None
    check_limits(result)
    return result


@register("url_encode")
def f_url_encode(value):
    """Text percent-encoded for a URL part, or an object as a query string (a=1&b=x)."""
    if isinstance(value, Mapping):
        pairs = list(zip(value.keys(), texts("url_encode", value.values(), 1)))
        return urllib.parse.urlencode(pairs, quote_via=urllib.parse.quote)
    if type(value) in (int, float, bool):
        value = to_text(value)
    text = need_text("url_encode", value)
    check_text("url_encode", len(text.encode()) * 3)
    return urllib.parse.quote(text, safe="")


@register("url_decode")
def f_url_decode(value):
    """Percent-encoded text decoded ("a%20b" -> "a b"; "+" stays "+")."""
    text = need_text("url_decode", value)
    try:
        return urllib.parse.unquote(text, errors="strict")
    except UnicodeDecodeError:
        raise ExpressionError(f"filter 'url_decode' got bytes that are not UTF-8 text in {show(text)}") from None


@register("base64_encode")
def f_base64_encode(value):
    """The UTF-8 bytes of the text in base64."""
    text = need_text("base64_encode", value)
    check_text("base64_encode", (len(text) * 4 // 3 + 4) * 4)
    return base64.b64encode(text.encode()).decode("ascii")


@register("base64_decode")
def f_base64_decode(value):
    """The text whose UTF-8 bytes a base64 text holds (standard or URL-safe alphabet)."""
    text = need_text("base64_decode", value).strip()
    try:
        padded = text + "=" * (-len(text) % 4)
        raw = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
        return raw.decode("utf-8")
    except (binascii.Error, ValueError):
        raise ExpressionError(f"filter 'base64_decode' got text that is not base64 of UTF-8 text: {show(text)}") from None


def _bytes(name: str, v: object, what: str = "its input") -> bytes:
    if type(v) in (int, float, bool):
        v = to_text(v)
    if type(v) is not str:
        raise ExpressionError(f"filter '{name}' needs text as {what}, got {type_name(v)} {show(v)}")
    return v.encode()


@register("sha256")
def f_sha256(value):
    """The SHA-256 digest of the text's UTF-8 bytes, as 64 hex digits."""
    return hashlib.sha256(_bytes("sha256", value)).hexdigest()


@register("hmac_sha256")
def f_hmac_sha256(value, key):
    """The HMAC-SHA256 of the text under key, as 64 hex digits (for signing webhooks)."""
    return hmac.new(_bytes("hmac_sha256", key, "its key"), _bytes("hmac_sha256", value), hashlib.sha256).hexdigest()
