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

    For traces and run results: a history entry must never fail the run.
    """
    return _lenient.encode(value).decode()


def decode(text: str | bytes | None) -> Any:
    return None if text is None else _decoder.decode(text)
