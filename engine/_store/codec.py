"""JSON for stored documents, through msgspec (fast, strict).

A list or object is measured before it is written (``runtime._values.check_limits``):
values may share parts (``[s, s]`` holds ``s`` twice), so one that is small in
memory can write out to more entries than any store could hold, and writing it
would hold the event loop until memory runs out.
"""

from __future__ import annotations

from typing import Any

import msgspec

from runtime._errors import LimitExceeded
from runtime._values import check_limits

__all__ = ("encode", "encode_lenient", "encode_bounded", "decode", "TooLarge")

_strict = msgspec.json.Encoder()
_lenient = msgspec.json.Encoder(enc_hook=repr)
_decoder = msgspec.json.Decoder()


class TooLarge(ValueError):
    """A value would write out past a limit of ``runtime._limits`` (the message says which)."""


def _check(value: Any) -> None:
    t = type(value)
    if t is dict or t is list:
        try:
            check_limits(value)
        except LimitExceeded as exc:
            raise TooLarge(exc.message) from None


def encode(value: Any) -> str:
    """JSON text of ``value``; raises TypeError/msgspec.EncodeError if JSON cannot hold it,
    ``TooLarge`` (a ValueError) if it would write out past the limits."""
    _check(value)
    return _strict.encode(value).decode()


def encode_lenient(value: Any) -> str:
    """JSON text of ``value``, writing anything JSON cannot hold as its ``repr``.

    For traces and run results: a history entry must never fail the run, nor
    keep its outcome from being stored. A text with a lone surrogate (an
    expression can build one; UTF-8 cannot hold it) is stored with the
    surrogate written out as ``\\udXXX`` text. A value that would write out
    past the limits is stored as the text saying so.
    """
    t = type(value)
    if t is dict or t is list:  # _check, inlined: every run's result and trace come through here
        try:
            check_limits(value)
        except LimitExceeded as exc:
            return _strict.encode(exc.message).decode()
    try:
        return _lenient.encode(value).decode()
    except UnicodeEncodeError:
        return _lenient.encode(_without_surrogates(value, {})).decode()


def encode_bounded(value: Any) -> str:
    """``encode_lenient`` of a value known to be bounded (a trace's entries hold only
    summaries, each measured when it was made): the same text, without the measuring."""
    try:
        return _lenient.encode(value).decode()
    except UnicodeEncodeError:
        return _lenient.encode(_without_surrogates(value, {})).decode()


def _without_surrogates(value: Any, done: dict[int, Any]) -> Any:
    """``value`` with every text (keys too) made UTF-8-safe; other values as they are.

    A list or object the value shares (holds more than once) is repaired once
    and shared the same way in the result (``done``, by ``id``): the repair
    takes time linear in the distinct parts, not in the value written out.
    """
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, (dict, list, tuple)):
        got = done.get(id(value))
        if got is None:
            if isinstance(value, dict):
                got = {_without_surrogates(k, done): _without_surrogates(v, done) for k, v in value.items()}
            else:
                got = [_without_surrogates(v, done) for v in value]
            done[id(value)] = got
        return got
    return value


def decode(text: str | bytes | None) -> Any:
    return None if text is None else _decoder.decode(text)
