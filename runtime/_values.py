"""Value semantics of the expression language: truth, text form, operators, the one member choke point.

Values are JSON data only: ``None``, ``bool``, ``int``, ``float``, ``str``,
``list`` and ``dict`` (``env`` may be any read-only ``Mapping``). Compiled
expressions inline fast paths for the common types and fall back to the
checked helpers here, which raise ``ExpressionError`` (or ``LimitExceeded``)
naming the operation and the types involved -- never ``KeyError``,
``TypeError`` or ``IndexError``: a ``KeyError`` escaping an expression means
"a name was read before it was set" to the VM, nothing else.

Decisions (docs/expressions.md repeats them for users):

* ``bool`` is not a number: ``true + 1`` is an error and ``true == 1`` is false.
* Whole numbers are exact integers (as in Python). ``+``, ``-`` and ``*``
  refuse a result beyond ``MAX_INT_BITS`` bits (``LimitExceeded``), so a loop
  cannot grow a number without bound (``update_variable``'s increment and
  decrement go through ``add``/``sub`` for the same reason). ``/`` always gives a float; ``//`` and ``%`` floor,
  with ints when both sides are ints. A float result that is not finite is an
  error.
* ``==`` compares data: ``1 == 1.0`` is true, values of different kinds are
  simply unequal (no error). Ordering works between numbers or between texts
  only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import msgspec

from runtime._errors import ExpressionError, LimitExceeded
from runtime._limits import (
    MAX_LIST_LENGTH,
    MAX_NESTING_DEPTH,
    MAX_STRING_LENGTH,
    MAX_VALUE_CHARS,
    MAX_VALUE_NODES,
)

__all__ = (
    "truthy",
    "to_text",
    "type_name",
    "json_dumps",
    "check_limits",
    "written_size",
    "show",
    "is_number",
    "member",
    "index",
    "add",
    "sub",
    "fits_int",
    "mul",
    "div",
    "floordiv",
    "mod",
    "neg",
    "concat",
    "eq",
    "ne",
    "lt",
    "le",
    "gt",
    "ge",
    "contains",
    "not_contains",
    "MAX_INT_BITS",
    "MAX_STRING_LENGTH",
)

#: Largest whole number ``+``, ``-`` and ``*`` may produce, in bits.
MAX_INT_BITS = 256
#: an int ``r`` is within the limit exactly when ``-INT_LIMIT < r < INT_LIMIT``
INT_LIMIT = 1 << MAX_INT_BITS
_INT_LO = -INT_LIMIT

_encoder = msgspec.json.Encoder()


def truthy(v: Any) -> bool:
    """The VM's truth test: ``null``, ``false``, ``0``, ``0.0``, ``""``, ``[]`` and ``{}`` are false."""
    return bool(v)


def type_name(v: Any) -> str:
    """The kind of ``v`` as users know it: null, boolean, number, text, list, object."""
    if v is None:
        return "null"
    t = type(v)
    if t is bool:
        return "boolean"
    if t is int or t is float:
        return "number"
    if t is str:
        return "text"
    if t is list or t is tuple:
        return "list"
    if isinstance(v, Mapping):
        return "object"
    return f"unsupported value ({t.__name__})"


def is_number(v: Any) -> bool:
    """True for ints and floats, false for booleans (which Python counts as ints)."""
    t = type(v)
    return t is int or t is float


def json_dumps(v: Any) -> str:
    """Compact JSON of a value (msgspec); keys keep their insertion order.

    A text, so no longer than ``MAX_STRING_LENGTH``: a list or object is
    measured first (``_text_form_fits``), so that one which shares parts is
    refused before it is written out rather than after.
    """
    t = type(v)
    if (t is list or t is dict) and not _text_form_fits(v, t):
        raise LimitExceeded(f"the text form of this {type_name(v)} is longer than {MAX_STRING_LENGTH:,} characters")
    try:
        text = _encoder.encode(v).decode()
    except (TypeError, ValueError, OverflowError) as exc:
        raise ExpressionError(f"cannot encode a {type_name(v)} as JSON: {exc}") from None
    if len(text) > MAX_STRING_LENGTH:
        raise LimitExceeded(f"the text form of this {type_name(v)} is longer than {MAX_STRING_LENGTH:,} characters")
    return text


def _text_form_fits(v: Any, t: type) -> bool:
    """False when the JSON of the list or object ``v`` is surely longer than ``MAX_STRING_LENGTH``.

    JSON writes every entry in at least one character and every text in at
    least its length, so more entries or more characters of text than the
    limit cannot fit. A flat value is summed in one pass; one that nests is
    measured by ``_measure`` (linear in its distinct parts). Raises
    ``LimitExceeded`` for a value that breaks a limit of its own (depth).
    """
    chars = 0
    for item in v.values() if t is dict else v:
        ti = type(item)
        if ti is str:
            chars += len(item)
        elif ti is dict or ti is list:
            break
    else:
        return len(v) + chars <= MAX_STRING_LENGTH
    try:
        _measure(v, t, 0, {}, MAX_STRING_LENGTH, MAX_STRING_LENGTH)
    except _Expands:
        return False
    return True


def _number_text(v: int | float) -> str:
    if type(v) is int:
        return str(v)
    if v.is_integer() and abs(v) < 1e16:
        return str(int(v))
    return repr(v)


def to_text(v: Any) -> str:
    """Text form: null -> "", booleans -> "true"/"false", numbers in shortest form
    (``2.0`` -> ``"2"``), lists and objects as compact JSON."""
    t = type(v)
    if t is str:
        return v
    if v is None:
        return ""
    if t is bool:
        return "true" if v else "false"
    if t is int or t is float:
        return _number_text(v)
    return json_dumps(dict(v) if isinstance(v, Mapping) and t is not dict else v)


def show(v: Any, width: int = 40) -> str:
    """A short, quoted rendering of a value for error messages."""
    if type(v) is str:
        s = v if len(v) <= width else v[: width - 3] + "..."
        return repr(s)
    try:
        s = to_text(v) if v is not None else "null"
    except (ExpressionError, LimitExceeded):
        s = f"<{type_name(v)}>"
    return s if len(s) <= width else s[: width - 3] + "..."


def check_limits(v: Any) -> None:
    """Raise LimitExceeded when ``v`` breaks a size or depth limit of ``runtime._limits``.

    Every run's result comes through here, and most are a flat object or list
    of scalars: those are checked in one pass over their items (the texts'
    lengths summed, which bounds both each text and the characters the list
    writes out, however often it repeats one text); anything that nests is
    measured by ``_measure``, as written out, in time linear in its distinct
    lists and objects.
    """
    t = type(v)
    if t is str:
        if len(v) > MAX_STRING_LENGTH:
            raise LimitExceeded(f"a text of {len(v):,} characters is longer than the limit of {MAX_STRING_LENGTH:,}")
        return
    if t is not dict and t is not list:
        return
    if len(v) > MAX_LIST_LENGTH:
        _check_nested(v)  # raises with the reason
    chars = 0
    entries = len(v)
    for item in v.values() if t is dict else v:
        ti = type(item)
        if ti is str:
            chars += len(item)
        elif ti is dict or ti is list:
            # one level down, summed here while everything below it is flat: record
            # data like {"summary": {...}} (a walk by _measure cost more than the add)
            n = len(item)
            if n > MAX_LIST_LENGTH or MAX_NESTING_DEPTH < 2:
                break
            entries += n
            if ti is dict:
                chars += sum(map(len, item))  # keys, as _measure counts them
                item = item.values()
            for sub in item:
                ts = type(sub)
                if ts is str:
                    chars += len(sub)
                elif ts is dict or ts is list:
                    break
            else:
                continue
            break
    else:
        if chars <= MAX_STRING_LENGTH and entries <= MAX_VALUE_NODES:
            return
    _check_nested(v)


def _check_nested(v: Any) -> None:
    """``check_limits`` without its fast path: the full measure of any value."""
    t = type(v)
    if t is str:
        if len(v) > MAX_STRING_LENGTH:
            raise LimitExceeded(f"a text of {len(v):,} characters is longer than the limit of {MAX_STRING_LENGTH:,}")
    elif t is dict or t is list:
        try:
            _measure(v, t, 0, {}, MAX_VALUE_NODES, MAX_VALUE_CHARS)
        except _Expands as exc:
            raise LimitExceeded(exc.message()) from None


def written_size(v: Any, max_entries: int = MAX_VALUE_NODES, max_chars: int = MAX_VALUE_CHARS) -> tuple[int, int]:
    """``(entries, characters)`` of ``v`` written out as JSON, shared parts counted each time they appear.

    Entries are list items and object fields at every level; characters are
    those of texts and object keys. Takes time linear in the distinct lists
    and objects of ``v`` (each is measured once), however many times the
    value repeats them. Raises ``LimitExceeded`` past ``max_entries`` or
    ``max_chars``, or when a limit of ``runtime._limits`` is broken (nesting
    depth, list length, text length).
    """
    t = type(v)
    if t is str:
        if len(v) > MAX_STRING_LENGTH:
            raise LimitExceeded(f"a text of {len(v):,} characters is longer than the limit of {MAX_STRING_LENGTH:,}")
        if len(v) > max_chars:
            raise LimitExceeded(_Expands("characters of text", max_chars).message())
        return 0, len(v)
    if t is not dict and t is not list:
        if isinstance(v, Mapping):
            return written_size(dict(v), max_entries, max_chars)
        return 0, 0
    try:
        entries, chars, _ = _measure(v, t, 0, {}, max_entries, max_chars)
    except _Expands as exc:
        raise LimitExceeded(exc.message()) from None
    return entries, chars


class _Expands(Exception):
    """``_measure``'s signal: the value written out passes ``limit`` entries or characters."""

    def __init__(self, what: str, limit: int) -> None:
        self.what, self.limit = what, limit

    def message(self) -> str:
        return (
            f"a value would expand to more than {self.limit:,} {self.what} when written out: it holds the "
            "same list or object many times over (as `[s, s]` repeated in a loop does); "
            "build it without repeating shared parts, or keep a count of them instead"
        )


def _measure(x: Any, t: type, depth: int, memo: dict[int, tuple[int, int, int]], max_entries: int, max_chars: int) -> tuple[int, int, int]:
    """``(entries, characters, height)`` of the list or object ``x`` written out.

    ``memo`` holds the measure of every list and object already measured in
    this walk, by ``id`` (each is alive, inside the value, for the whole walk):
    a part the value shares is measured once and counted wherever it appears.
    Raises ``_Expands`` as soon as a part passes ``max_entries`` or
    ``max_chars`` (a part is never larger than the whole), so a value doubled
    40 times stops within a few dozen levels. ``depth`` also bounds the walk
    of a value that holds itself.
    """
    if depth >= MAX_NESTING_DEPTH:
        raise LimitExceeded(f"a value nests deeper than {MAX_NESTING_DEPTH} lists/objects")
    n = len(x)
    if n > MAX_LIST_LENGTH:
        raise LimitExceeded(f"a {type_name(x)} of {n:,} entries is longer than the limit of {MAX_LIST_LENGTH:,}")
    entries, chars, height = n, 0, 1
    if t is dict:
        for key in x:
            if type(key) is str:
                chars += len(key)
        items: Any = x.values()
    else:
        items = x
    own = 0
    for item in items:
        ti = type(item)
        if ti is str:
            own += len(item)
        elif ti is list or ti is dict:
            got = memo.get(id(item))
            if got is None:
                got = _measure(item, ti, depth + 1, memo, max_entries, max_chars)
            elif depth + 1 + got[2] > MAX_NESTING_DEPTH:
                raise LimitExceeded(f"a value nests deeper than {MAX_NESTING_DEPTH} lists/objects")
            entries += got[0]
            chars += got[1]
            if got[2] >= height:
                height = got[2] + 1
    if own > MAX_STRING_LENGTH:
        for item in items:
            if type(item) is str and len(item) > MAX_STRING_LENGTH:
                raise LimitExceeded(
                    f"a text of {len(item):,} characters is longer than the limit of {MAX_STRING_LENGTH:,}"
                )
    chars += own
    if entries > max_entries:
        raise _Expands("entries", max_entries)
    if chars > max_chars:
        raise _Expands("characters of text", max_chars)
    got = memo[id(x)] = (entries, chars, height)
    return got


# -- member access: the single choke point --------------------------------------------


def member(obj: Any, name: str) -> Any:
    """``obj.name``: a key of an object; null for a missing key or a null object."""
    if type(obj) is dict:
        return obj.get(name)
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(name)
    raise ExpressionError(
        f"cannot read .{name} of {type_name(obj)} {show(obj)}: only objects have fields"
    )


def index(obj: Any, key: Any) -> Any:
    """``obj[key]``: list position (negative counts from the end) or object key; null when absent."""
    tk = type(key)
    if type(obj) is list:
        if tk is int:
            n = len(obj)
            return obj[key] if -n <= key < n else None
        if tk is float and key.is_integer():
            return index(obj, int(key))
        raise ExpressionError(f"a list index must be a whole number, got {type_name(key)} {show(key)}")
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        if tk is str:
            return obj.get(key)
        if tk is int:
            return obj.get(str(key))
        raise ExpressionError(f"an object key must be text, got {type_name(key)} {show(key)}")
    raise ExpressionError(f"cannot read [{show(key)}] of {type_name(obj)} {show(obj)}: only lists and objects have entries")


# -- arithmetic -----------------------------------------------------------------------


def _fit(r: int | float, op: str, a: Any, b: Any) -> int | float:
    if type(r) is int:
        if r.bit_length() > MAX_INT_BITS:
            raise LimitExceeded(f"the result of {show(a)} {op} {show(b)} has more than {MAX_INT_BITS} bits")
        return r
    if math.isfinite(r):
        return r
    raise ExpressionError(f"the result of {show(a)} {op} {show(b)} is too large for a number")


def fits_int(r: int) -> bool:
    """True when the int ``r`` is within ``MAX_INT_BITS`` bits (what filters producing ints check)."""
    return _INT_LO < r < INT_LIMIT


def _bits(op: str, a: Any, b: Any) -> LimitExceeded:
    return LimitExceeded(f"the result of {show(a)} {op} {show(b)} has more than {MAX_INT_BITS} bits")


def _big(op: str, a: Any, b: Any) -> ExpressionError:
    return ExpressionError(f"the result of {show(a)} {op} {show(b)} is too large for a number")


def _bad(verb: str, op: str, a: Any, b: Any) -> ExpressionError:
    return ExpressionError(f"cannot {verb} {type_name(a)} and {type_name(b)} ({show(a)} {op} {show(b)})")


def add(a: Any, b: Any) -> Any:
    """``a + b``: numbers add; texts concatenate; lists concatenate into a new list."""
    ta, tb = type(a), type(b)
    if (ta is int or ta is float) and (tb is int or tb is float):
        try:
            r = a + b
        except OverflowError:
            raise _big("+", a, b) from None
        if ta is int and tb is int:
            if _INT_LO < r < INT_LIMIT:
                return r
            raise _bits("+", a, b)
        return _fit(r, "+", a, b)
    if ta is str and tb is str:
        if len(a) + len(b) > MAX_STRING_LENGTH:
            raise LimitExceeded(f"joining texts would exceed {MAX_STRING_LENGTH:,} characters")
        return a + b
    if ta is list and tb is list:
        if len(a) + len(b) > MAX_LIST_LENGTH:
            raise LimitExceeded(f"joining lists would exceed {MAX_LIST_LENGTH:,} entries")
        return a + b
    hint = "; use ~ to join as text" if str in (ta, tb) else ""
    err = _bad("add", "+", a, b)
    raise ExpressionError(err.message + hint)


def _numbers(verb: str, op: str, a: Any, b: Any) -> None:
    ta, tb = type(a), type(b)
    if not ((ta is int or ta is float) and (tb is int or tb is float)):
        raise _bad(verb, op, a, b)


def sub(a: Any, b: Any) -> Any:
    _numbers("subtract", "-", a, b)
    try:
        r = a - b
    except OverflowError:
        raise _big("-", a, b) from None
    if type(r) is int:
        if _INT_LO < r < INT_LIMIT:
            return r
        raise _bits("-", a, b)
    return _fit(r, "-", a, b)


def mul(a: Any, b: Any) -> Any:
    _numbers("multiply", "*", a, b)
    if type(a) is int and type(b) is int and a.bit_length() + b.bit_length() > MAX_INT_BITS + 1:
        raise _bits("*", a, b)
    try:
        return _fit(a * b, "*", a, b)
    except OverflowError:
        raise _big("*", a, b) from None


def div(a: Any, b: Any) -> float:
    """``a / b``: true division, always a float."""
    _numbers("divide", "/", a, b)
    if b == 0:
        raise ExpressionError(f"division by zero ({show(a)} / {show(b)})")
    try:
        return _fit(a / b, "/", a, b)
    except OverflowError:
        raise ExpressionError(f"the result of {show(a)} / {show(b)} is too large for a number") from None


def floordiv(a: Any, b: Any) -> int | float:
    _numbers("divide", "//", a, b)
    if b == 0:
        raise ExpressionError(f"division by zero ({show(a)} // {show(b)})")
    try:
        return _fit(a // b, "//", a, b)
    except OverflowError:
        raise _big("//", a, b) from None


def mod(a: Any, b: Any) -> int | float:
    """``a % b``: the remainder takes the sign of ``b`` (floored, as in Python)."""
    _numbers("take the remainder of", "%", a, b)
    if b == 0:
        raise ExpressionError(f"modulo by zero ({show(a)} % {show(b)})")
    try:
        return _fit(a % b, "%", a, b)
    except OverflowError:
        raise _big("%", a, b) from None


def neg(a: Any) -> int | float:
    t = type(a)
    if t is int or t is float:
        return -a
    raise ExpressionError(f"cannot negate {type_name(a)} {show(a)}")


def concat(a: Any, b: Any) -> str:
    """``a ~ b``: both sides as text, joined."""
    sa, sb = to_text(a), to_text(b)
    if len(sa) + len(sb) > MAX_STRING_LENGTH:
        raise LimitExceeded(f"joining texts would exceed {MAX_STRING_LENGTH:,} characters")
    return sa + sb


# -- comparison -----------------------------------------------------------------------


def eq(a: Any, b: Any) -> bool:
    """Data equality: numbers by value (1 == 1.0), booleans only equal booleans, deep for containers."""
    ta, tb = type(a), type(b)
    if ta is tb:
        if ta is list or ta is dict:
            return _eq_deep(a, b, ta, set())
        return a == b
    if (ta is int or ta is float) and (tb is int or tb is float):
        return a == b
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return eq(dict(a), dict(b))
    return False


def _eq_deep(a: Any, b: Any, t: type, same: set[tuple[int, int]]) -> bool:
    """``eq`` of two lists or two objects, in time linear in their distinct parts.

    ``same`` holds the pairs of parts (by ``id``, alive for the whole walk)
    already found equal: values may share parts (``[s, s]``), and a pair met
    again is not compared again. A part is equal to itself (values hold no
    NaN: no operation, filter or decoder makes one).
    """
    if a is b:
        return True
    pair = (id(a), id(b))
    if pair in same:
        return True
    if len(a) != len(b):
        return False
    if t is list:
        pairs: Any = zip(a, b)
    else:
        if a.keys() != b.keys():
            return False
        pairs = ((v, b[k]) for k, v in a.items())
    for x, y in pairs:
        tx = type(x)
        if tx is type(y) and (tx is list or tx is dict):
            if not _eq_deep(x, y, tx, same):
                return False
        elif not eq(x, y):
            return False
    same.add(pair)
    return True


def ne(a: Any, b: Any) -> bool:
    return not eq(a, b)


def _orderable(a: Any, b: Any, op: str) -> None:
    ta, tb = type(a), type(b)
    if (ta is int or ta is float) and (tb is int or tb is float):
        return
    if ta is str and tb is str:
        return
    raise ExpressionError(
        f"cannot order {type_name(a)} and {type_name(b)} ({show(a)} {op} {show(b)}): "
        "only numbers with numbers and texts with texts"
    )


def lt(a: Any, b: Any) -> bool:
    _orderable(a, b, "<")
    return a < b


def le(a: Any, b: Any) -> bool:
    _orderable(a, b, "<=")
    return a <= b


def gt(a: Any, b: Any) -> bool:
    _orderable(a, b, ">")
    return a > b


def ge(a: Any, b: Any) -> bool:
    _orderable(a, b, ">=")
    return a >= b


def contains(needle: Any, hay: Any) -> bool:
    """``needle in hay``: an element of a list, a substring of a text, a key of an object."""
    th = type(hay)
    if th is list:
        return any(eq(needle, x) for x in hay)
    if th is str:
        if type(needle) is not str:
            raise ExpressionError(f"cannot look for {type_name(needle)} {show(needle)} in text; only text is found in text")
        return needle in hay
    if isinstance(hay, Mapping):
        if type(needle) is not str:
            raise ExpressionError(f"object keys are text, cannot look for {type_name(needle)} {show(needle)} among them")
        return needle in hay
    raise ExpressionError(f"cannot look inside {type_name(hay)} {show(hay)} with 'in': use a list, text or object")


def not_contains(needle: Any, hay: Any) -> bool:
    return not contains(needle, hay)
