"""Request history: the trace of one run, bounded and with secrets redacted.

Values are encoded the moment a step reports them (later steps may change a
variable in place), cut to ``MAX_SUMMARY_BYTES``, and scrubbed of every
``env`` value and of credentials in URLs and headers before they are kept.
"""

from __future__ import annotations

import re
import reprlib
from collections.abc import Iterable
from typing import Any

import msgspec

from engine._http import redact_headers, redact_url
from engine._http.redact import MASK
from engine._store.codec import encode_bounded, encode_lenient
from runtime._errors import LimitExceeded
from runtime._limits import MAX_NESTING_DEPTH
from runtime._values import written_size

__all__ = ("RunTrace", "Secrets", "MAX_SUMMARY_BYTES", "MAX_TRACE_ENTRIES")

#: the longest JSON summary kept for a step's inputs or output
MAX_SUMMARY_BYTES = 2048
#: a run keeps at most this many step entries (a long loop keeps its first ones)
MAX_TRACE_ENTRIES = 2000
#: the longest text a summary keeps as it is (masked), without encoding it
_SHORT_TEXT = MAX_SUMMARY_BYTES // 2

_encode = msgspec.json.encode
_Raw = msgspec.Raw
#: values a summary keeps as they are (immutable, small, nothing to scrub)
_PLAIN = frozenset({type(None), int, float, bool})
#: the ``repr`` of a value msgspec cannot encode: bounded in length and in work
#: (it shows the first entries of each list and object, to a few levels)
_short_repr = reprlib.Repr()
_short_repr.maxlevel, _short_repr.maxlist, _short_repr.maxdict = 6, 20, 20
_short_repr.maxstring = _short_repr.maxother = _short_repr.maxlong = MAX_SUMMARY_BYTES


#: a list or object larger than this written out (entries / characters) is
#: summarised from its first entries: the summary keeps 2 KB of it, and writing
#: the rest out (100,000 records, or ``[s, s]`` repeated in a loop) only to cut
#: it would hold the event loop for as long as that takes
_PREVIEW_ENTRIES = MAX_SUMMARY_BYTES
_PREVIEW_CHARS = 4 * MAX_SUMMARY_BYTES


def _is_small(value: Any, kind: type) -> bool:
    """Whether a list or object writes out within the preview budget; takes time within it too.

    A short flat one (most steps' inputs and outputs) is told in one pass over
    its entries; anything else is measured by ``written_size`` with the
    budget as its limits, which stops as soon as the budget is passed.
    """
    if len(value) <= 64:
        chars = 0
        if kind is dict:
            for key, item in value.items():
                ti = type(item)
                if type(key) is not str:  # not from a run (a test's, a tool's): written_size tells
                    break
                if ti is str:
                    chars += len(item) + len(key)
                elif ti is dict or ti is list:
                    break
                else:
                    chars += len(key)
            else:
                return chars <= _PREVIEW_CHARS
        else:
            for item in value:
                ti = type(item)
                if ti is str:
                    chars += len(item)
                elif ti is dict or ti is list:
                    break
            else:
                return chars <= _PREVIEW_CHARS
    try:
        written_size(value, _PREVIEW_ENTRIES, _PREVIEW_CHARS)
    except LimitExceeded:  # over the budget (or over a limit of the runtime's: too deep)
        return False
    except TypeError:  # a key JSON has no text for: the encoder's fallback (a short repr) takes it
        return True
    return True


def _encoded_if_small(value: Any, kind: type) -> bytes | None:
    """The JSON of the list or object ``value`` when ``_is_small`` (else None), measured at the cost of one pass.

    A flat one (most steps' inputs and outputs) whose texts hold at most
    ``_PREVIEW_CHARS`` characters writes out in time linear in its size (it
    shares no list or object, and its texts are summed however often it
    repeats one; keys are distinct), so it is encoded at once: JSON writes
    each character of a key or text in at least one byte, so output within
    ``_PREVIEW_CHARS`` bytes proves it small without counting its keys.
    Longer output, or a value that nests, is told by ``_is_small`` itself.
    Encoding errors propagate (the caller's fallback takes them).
    """
    if len(value) > _PREVIEW_ENTRIES:  # writes out more entries than the budget, flat or not
        return None
    chars = 0
    for item in value.values() if kind is dict else value:
        ti = type(item)
        if ti is str:
            chars += len(item)
        elif ti is dict or ti is list:
            return _encode(value) if _is_small(value, kind) else None
    if chars > _PREVIEW_CHARS:
        return None
    try:
        data = _encode(value)
    except Exception:
        if _is_small(value, kind):  # as _is_small's caller would have met it
            raise
        return None  # (keys past the budget: a preview, never an encode)
    if len(data) <= _PREVIEW_CHARS or _is_small(value, kind):
        return data
    return None


def _first_part(value: Any, budget: list[int], depth: int, secrets: Secrets) -> Any:
    """The beginning of ``value``: its first entries while ``budget[0]`` (characters) lasts.

    Texts (and keys) cut short are scrubbed before the cut, over a margin as
    long as the longest secret, so a secret across the cut is masked whole
    and never kept in part.
    """
    kind = type(value)
    if kind is str:
        room = budget[0]
        budget[0] -= len(value) + 2
        if budget[0] >= 0:
            return value
        return secrets.scrub(value[: max(room, 0) + secrets.longest])[: max(room, 0)]
    if kind is not dict and kind is not list:
        budget[0] -= 8
        return value
    if depth >= MAX_NESTING_DEPTH:
        budget[0] = -1
        return "..."
    budget[0] -= 2
    if kind is list:
        out_list: list[Any] = []
        for item in value:
            if budget[0] <= 0:
                break
            out_list.append(_first_part(item, budget, depth + 1, secrets))
        return out_list
    out: dict[str, Any] = {}
    for key, item in value.items():
        if budget[0] <= 0:
            break
        shown = _first_part(key, budget, depth + 1, secrets) if type(key) is str else key
        out[shown] = _first_part(item, budget, depth + 1, secrets) if budget[0] > 0 else "..."
    return out


class _Step(msgspec.Struct, gc=False):
    """A step entry as stored. msgspec encodes a Struct as a JSON object in
    field order, so the fields are the stored keys in the stored order: the
    whole trace is then one C-speed encode, and building one costs less
    than the 7-key dict it replaces. ``gc=False``: an entry holds only
    summaries (immutable values, msgspec.Raw, the small ``$truncated`` dict),
    never a container of the run's, so it can be in no reference cycle.
    """

    path: Any
    kind: Any
    started: Any
    duration: Any
    inputs: Any
    output: Any
    error: Any


class _Log(msgspec.Struct, gc=False):
    """A log entry as stored: the keys of a log line, in their stored order (not a step's)."""

    path: Any
    kind: Any
    level: Any
    output: Any
    started: Any
    duration: Any
    inputs: Any
    error: Any


class Secrets:
    """Values never to store: masked in every summary, URL, header and error.

    ``found`` is the same alternatives over UTF-8 bytes: it tells, without
    decoding, whether an encoded summary holds any secret at all (in valid
    UTF-8 an encoded text only matches at a character boundary, so it finds
    a secret exactly where the text pattern would).
    """

    __slots__ = ("texts", "_pattern", "found", "longest")

    def __init__(self, secrets: Iterable[str]) -> None:
        plain = {s for s in secrets if isinstance(s, str) and len(s) >= 4}
        self.texts = sorted(plain | {_encode(s).decode()[1:-1] for s in plain}, key=len, reverse=True)
        self.longest = len(self.texts[0]) if self.texts else 0
        # longest first, so a secret that contains another is masked whole
        self._pattern = re.compile("|".join(map(re.escape, self.texts))) if self.texts else None
        self.found = re.compile(b"|".join(re.escape(t.encode()) for t in self.texts)).search if self.texts else None

    def scrub(self, text: str) -> str:
        return text if self._pattern is None else self._pattern.sub(MASK, text)


class RunTrace:
    """Collects the steps of one run (and of the functions it calls inline)."""

    __slots__ = ("entries", "logs", "_secrets", "_prefix", "dropped")

    def __init__(self, secrets: Iterable[str] = (), prefix: str = "", *, prepared: Secrets | None = None) -> None:
        self.entries: list[_Step] = []
        self.logs: list[_Log] = []
        self._secrets = prepared if prepared is not None else self.prepare(secrets)
        self._prefix = prefix
        self.dropped = 0

    @staticmethod
    def prepare(secrets: Iterable[str]) -> Secrets:
        """The texts to mask (also as they appear inside JSON strings), and one pattern for them all.

        Computed once per engine and shared by every run's trace: a summary is
        then scrubbed in one regular-expression pass, however many environment
        variables there are.
        """
        return Secrets(secrets)

    def child(self, prefix: str) -> RunTrace:
        """A view for a function called inline: same entries, paths under ``prefix``."""
        view = RunTrace.__new__(RunTrace)
        view.entries, view.logs, view._secrets = self.entries, self.logs, self._secrets
        view._prefix = f"{self._prefix}{prefix} > "
        view.dropped = 0
        return view

    def summary(self, value: Any) -> Any:
        """What the trace keeps of a step's input or output: JSON, cut, scrubbed.

        Numbers, booleans and short texts are immutable and small: kept as
        they are (texts scrubbed), without a round of encoding. Encoded JSON
        that is short and holds no secret is kept as encoded: decoding,
        scrubbing and encoding it again gave the same bytes (msgspec writes
        valid UTF-8), for about 7% of the trace's cost in STACK10. A value
        msgspec cannot encode (a text with a lone surrogate raises
        UnicodeEncodeError, a ValueError) is kept as its scrubbed ``repr``:
        a trace must never fail the step that reports it.
        """
        kind = type(value)
        if kind in _PLAIN:
            return value
        secrets = self._secrets
        if kind is str:
            if len(value) <= _SHORT_TEXT:
                return secrets.scrub(value)
            if len(value) > _PREVIEW_CHARS:
                return self._preview(value)
        elif kind is dict or kind is list:
            try:
                data = _encoded_if_small(value, kind)
            except (TypeError, ValueError, msgspec.EncodeError, OverflowError, RecursionError):
                return secrets.scrub(_short_repr.repr(value)[:MAX_SUMMARY_BYTES])
            return self._preview(value) if data is None else self._of_encoded(data)
        try:
            data = _encode(value)
        except (TypeError, ValueError, msgspec.EncodeError, OverflowError, RecursionError):
            return secrets.scrub(_short_repr.repr(value)[:MAX_SUMMARY_BYTES])
        return self._of_encoded(data)

    def _preview(self, value: Any) -> dict[str, Any]:
        """The summary of a value too large to write out in full: its first 2 KB.

        Unlike a cut summary it has no ``$bytes``: the full size would take
        writing the whole value out (or walking every part of it) to know.
        """
        budget = [_PREVIEW_CHARS]
        try:
            text = _encode(_first_part(value, budget, 0, self._secrets)).decode("utf-8", "replace")
        except (TypeError, ValueError, msgspec.EncodeError, OverflowError, RecursionError):
            text = _short_repr.repr(value)
        return {"$truncated": self._secrets.scrub(text)[:MAX_SUMMARY_BYTES]}

    def _of_encoded(self, data: bytes) -> Any:
        """``summary`` of a value already encoded as ``data``."""
        secrets = self._secrets
        if len(data) <= MAX_SUMMARY_BYTES and (secrets.found is None or secrets.found(data) is None):
            return msgspec.Raw(data)
        text = secrets.scrub(data.decode("utf-8", "replace"))
        if len(text) > MAX_SUMMARY_BYTES:
            return {"$truncated": text[:MAX_SUMMARY_BYTES], "$bytes": len(data)}
        return msgspec.Raw(text.encode())

    def _request_inputs(self, inputs: Any) -> Any:
        if not isinstance(inputs, dict):
            return inputs
        shown = dict(inputs)
        if isinstance(shown.get("url"), str):
            shown["url"] = redact_url(shown["url"], self._secrets.texts)
        if isinstance(shown.get("headers"), dict):
            shown["headers"] = redact_headers(shown["headers"], self._secrets.texts)
        return shown

    def step(
        self,
        path: str,
        kind: str,
        started: float,
        duration: float,
        inputs: Any,
        output: Any,
        error: dict[str, Any] | None,
    ) -> None:
        entries = self.entries
        if len(entries) >= MAX_TRACE_ENTRIES:
            self.dropped += 1
            return
        if kind == "external_api_request":
            inputs = self._request_inputs(inputs)
        # a step of a traced run costs this call: plain values skip the call to summary(),
        # and None (the inputs of most steps) skips the type test too; without secrets,
        # a short text is kept as it is and a list or object whose JSON is short is kept
        # as that JSON, what summary() returns for them, without the call
        if inputs is not None and type(inputs) not in _PLAIN:
            inputs = self.summary(inputs)
        kind_out = type(output)
        if kind_out not in _PLAIN:
            if self._secrets.found is not None:
                output = self.summary(output)
            elif kind_out is str:
                if len(output) > _SHORT_TEXT:
                    output = self.summary(output)
            elif kind_out is dict or kind_out is list:
                # a short flat one (most outputs) is told small here, in one tight pass: its
                # texts within the budget and its JSON within MAX_SUMMARY_BYTES prove it
                # (_encoded_if_small's reasoning); anything else takes the full path below
                if len(output) <= 64:
                    chars = 0
                    for item in output.values() if kind_out is dict else output:
                        if type(item) in _PLAIN:
                            continue
                        if type(item) is not str:
                            break
                        chars += len(item)
                    else:
                        if chars <= _PREVIEW_CHARS:
                            try:
                                data = _encode(output)
                            except (TypeError, ValueError, msgspec.EncodeError, OverflowError, RecursionError):
                                pass
                            else:
                                if len(data) <= MAX_SUMMARY_BYTES:
                                    entries.append(_Step(self._prefix + path, kind, started, duration, inputs,
                                                         _Raw(data), self.summary(error) if error else None))
                                    return
                try:
                    data = _encoded_if_small(output, kind_out)
                except (TypeError, ValueError, msgspec.EncodeError, OverflowError, RecursionError):
                    output = self.summary(output)
                else:  # a long one is cut from the same bytes, not encoded again
                    if data is None:
                        output = self._preview(output)
                    else:
                        output = _Raw(data) if len(data) <= MAX_SUMMARY_BYTES else self._of_encoded(data)
            else:
                output = self.summary(output)
        entries.append(
            _Step(self._prefix + path, kind, started, duration, inputs, output, self.summary(error) if error else None)
        )

    def log(self, path: str, level: str, message: Any) -> None:
        if len(self.logs) < MAX_TRACE_ENTRIES:
            self.logs.append(_Log(self._prefix + path, "log", level, self.summary(message), None, 0.0, None, None))

    def redact_error(self, error: dict[str, Any] | None) -> dict[str, Any] | None:
        """An error object fit to store: secrets scrubbed, size bounded.

        Encoded as the store encodes it (``encode_lenient``: a lone surrogate in
        a message is written out rather than failing the encode)."""
        if error is None or not self._secrets.texts:
            return error
        return msgspec.json.decode(self._secrets.scrub(encode_lenient(error)))

    def _stored(self) -> list[_Step | _Log]:
        """Every entry to store, in the stored order: steps, then logs, then the truncation marker."""
        out: list[_Step | _Log] = self.entries
        if self.logs or self.dropped:
            out = out + self.logs
            if self.dropped:
                out.append(_Step("", "trace_truncated", None, 0.0, None, {"dropped_steps": self.dropped}, None))
        return out

    def export(self) -> list[dict[str, Any]]:
        """The entries to store as dicts; their summaries are pre-encoded ``msgspec.Raw`` JSON.

        The readable form (tests, tools). The store takes ``export_json()``,
        the same entries already encoded.
        """
        return [msgspec.structs.asdict(e) for e in self._stored()]

    def export_json(self) -> str:
        """The stored JSON text of the trace: exactly ``codec.encode_lenient(self.export())``.

        Through ``codec.encode_bounded``, which skips ``encode_lenient``'s size
        check: every entry holds only summaries, each already bounded.

        One encode of the entries as they are kept, with the store's own
        encoder, instead of building a dict per entry for the store to
        encode: the same text (keys in the same order), for a fraction of
        the cost. Should that encode fail (a short text summary kept as it
        is can hold a lone surrogate, which the store's encoder only repairs
        inside dicts and lists), the text is made from ``export()`` exactly as
        the store would: the rare run pays, the stored JSON stays the same.
        """
        entries = self._stored()
        try:
            return encode_bounded(entries)
        except Exception:
            return encode_bounded(self.export())
