"""JSON for stored documents, through msgspec (fast, strict)."""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = ("encode", "encode_lenient", "decode")

_strict = msgspec.json.Encoder()
_lenient = msgspec.json.Encoder(enc_hook=repr)
_decoder = msgspec.json.Decoder()


def encode(value: Any) -> str:
    """JSON text of ``value``; raises TypeError/msgspec.EncodeError if JSON cannot hold it."""
    return _strict.encode(value).decode()


def encode_lenient(value: Any) -> str:
    """JSON text of ``value``, writing anything JSON cannot hold as its ``repr``.

    For traces and run results: a history entry must never fail the run, nor
    keep its outcome from being stored. A text with a lone surrogate (an
    expression can build one; UTF-8 cannot hold it) is stored with the
    surrogate written out as ``\\udXXX`` text.
    """
    try:
        return _lenient.encode(value).decode()
    except UnicodeEncodeError:
        return _lenient.encode(_without_surrogates(value)).decode()


def _without_surrogates(value: Any) -> Any:
    """``value`` with every text (keys too) made UTF-8-safe; other values as they are."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_without_surrogates(k): _without_surrogates(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_without_surrogates(v) for v in value]
    return value


def decode(text: str | bytes | None) -> Any:
    return None if text is None else _decoder.decode(text)
