"""JSON in and out of the admin API: msgspec encoding, body and query checks.

Every problem with a request becomes an ``ApiError`` whose message names the
field or parameter at fault, so that a dashboard or a shell user can fix the
call without reading the server's source.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
from aiohttp import web

from engine._api.errors import ApiError

__all__ = (
    "encoder",
    "json_response",
    "read_object",
    "get_str",
    "get_int",
    "query_int",
    "query_bool",
    "query_choice",
    "iso",
)

encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON response encoded with msgspec."""
    return web.Response(
        body=encoder.encode(data), status=status, content_type="application/json", headers=headers
    )


async def read_object(request: web.Request, *, required: bool = True) -> dict[str, Any]:
    """The request body as a JSON object; an empty body is ``{}`` when not ``required``.

    ``request.read()`` enforces the application's ``client_max_size`` and
    raises 413 past it; the error middleware turns that into JSON.
    """
    raw = await request.read()
    if not raw.strip():
        if required:
            raise ApiError(400, "the request body is empty; send a JSON object")
        return {}
    try:
        body = _decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(
            400, f"the request body must be a JSON object, not a JSON {_json_type(body)}"
        )
    return body


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def get_str(body: dict[str, Any], name: str, *, required: bool = False, default: str | None = None) -> str | None:
    """Field ``name`` of ``body`` as a string (null or absent -> ``default``)."""
    value = body.get(name)
    if value is None:
        if required:
            raise ApiError(400, f"field '{name}' is required (a string)")
        return default
    if not isinstance(value, str):
        raise ApiError(400, f"field '{name}' must be a string, not a JSON {_json_type(value)}")
    if required and not value:
        raise ApiError(400, f"field '{name}' must not be empty")
    return value


def get_int(body: dict[str, Any], name: str, *, default: int, low: int, high: int) -> int:
    """Field ``name`` of ``body`` as a whole number in ``[low, high]``."""
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(
            400, f"field '{name}' must be a whole number from {low} to {high}, not a JSON {_json_type(value)}"
        )
    if not low <= value <= high:
        raise ApiError(400, f"field '{name}' must be from {low} to {high}, got {value}")
    return value


def query_int(request: web.Request, name: str, *, default: int, low: int, high: int) -> int:
    """Query parameter ``name`` as a whole number in ``[low, high]``."""
    text = request.query.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise ApiError(
            400, f"query parameter '{name}' must be a whole number from {low} to {high}, got {text!r}"
        ) from None
    if not low <= value <= high:
        raise ApiError(400, f"query parameter '{name}' must be from {low} to {high}, got {value}")
    return value


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def query_bool(request: web.Request, name: str, *, default: bool) -> bool:
    """Query parameter ``name`` as a boolean (true/false, 1/0, yes/no)."""
    text = request.query.get(name)
    if text is None:
        return default
    low = text.lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ApiError(400, f"query parameter '{name}' must be true or false, got {text!r}")


def query_choice(request: web.Request, name: str, choices: tuple[str, ...]) -> str | None:
    """Query parameter ``name``, one of ``choices`` (absent -> None)."""
    text = request.query.get(name)
    if text is None or text == "":
        return None
    if text not in choices:
        raise ApiError(
            400, f"query parameter '{name}' must be one of {', '.join(choices)}; got {text!r}"
        )
    return text


def iso(ts: float | None) -> str | None:
    """Unix seconds as an ISO-8601 UTC string (``2024-05-01T06:00:00.000Z``)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
