"""Filters over numbers and between types: rounding, conversions, defaults, type tests.

Rounding is half away from zero (2.5 -> 3, -2.5 -> -3), as in PHP and
spreadsheets, not Python's banker's rounding.
"""

from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from runtime._errors import ExpressionError, LimitExceeded
from runtime._values import MAX_INT_BITS, fits_int, show, to_text, type_name
from runtime.filters._registry import need_int, need_number, register

__all__ = ()


def _int_result(name: str, x: float) -> int | float:
    if not math.isfinite(x):
        raise ExpressionError(f"filter '{name}' cannot make a whole number of {show(x)}")
    r = int(x)
    if not fits_int(r):  # 1e300|round would be a 997-bit int
        raise LimitExceeded(f"filter '{name}' of {show(x)} gives a whole number of more than {MAX_INT_BITS} bits")
    return r


@register("round")
def f_round(value, digits=0):
    """The number rounded to digits decimals, halves away from zero; a whole number when digits is 0."""
    x = need_number("round", value)
    n = need_int("round", digits, "digits")
    if not -15 <= n <= 15:
        raise ExpressionError(f"filter 'round' takes digits between -15 and 15, got {n}")
    if type(x) is int and n >= 0:
        return x
    try:
        q = Decimal(repr(x)).quantize(Decimal(1).scaleb(-n), rounding=ROUND_HALF_UP)
    except InvalidOperation:  # more digits than a decimal holds: already as round as it gets
        return _int_result("round", x) if n <= 0 else x
    return _int_result("round", float(q)) if n <= 0 else float(q)


@register("floor")
def f_floor(value):
    """The largest whole number not above the number."""
    x = need_number("floor", value)
    return x if type(x) is int else _int_result("floor", math.floor(x))


@register("ceil")
def f_ceil(value):
    """The smallest whole number not below the number."""
    x = need_number("ceil", value)
    return x if type(x) is int else _int_result("ceil", math.ceil(x))


@register("abs")
def f_abs(value):
    """The number without its sign."""
    x = need_number("abs", value)
    return abs(x)


def _parse_number(name: str, text: str) -> int | float:
    s = text.strip()
    try:
        if s and (s.lstrip("+-").isdigit()) and s.isascii():
            if len(s) > 100:
                raise ValueError(s)
            return int(s)
        x = float(s)
    except ValueError:
        x = math.nan
    if not math.isfinite(x) or s.lower().lstrip("+-") in ("inf", "infinity", "nan") or not s.isascii():
        raise ExpressionError(f"filter '{name}' cannot read a number from text {show(text)}")
    return x


@register("to_number")
def f_to_number(value):
    """A number from text ("42" -> 42, "2.5" -> 2.5), a boolean (1/0), a number or null (0)."""
    t = type(value)
    if t is int or t is float:
        return value
    if t is bool:
        return 1 if value else 0
    if value is None:
        return 0
    if t is str:
        return _parse_number("to_number", value)
    raise ExpressionError(f"filter 'to_number' cannot convert {type_name(value)} {show(value)} to a number")


@register("to_int")
def f_to_int(value):
    """A whole number: text is parsed, floats lose their fraction (toward zero), booleans give 1/0, null 0."""
    x = f_to_number(value) if type(value) is not float else value
    if type(x) is float:
        return _int_result("to_int", math.trunc(x)) if math.isfinite(x) else _int_result("to_int", x)
    return x


_TRUE = frozenset({"true", "1", "yes", "on", "y"})
_FALSE = frozenset({"false", "0", "no", "off", "n", ""})


@register("to_bool")
def f_to_bool(value):
    """true/false from text ("true", "yes", "1", "on" / "false", "no", "0", "off", ""), or the value's truth."""
    if type(value) is str:
        s = value.strip().lower()
        if s in _TRUE:
            return True
        if s in _FALSE:
            return False
        raise ExpressionError(f"filter 'to_bool' cannot read true or false from text {show(value)}")
    return bool(value)


@register("to_text")
def f_to_text(value):
    """The text form: null -> "", numbers in shortest form, booleans true/false, lists/objects as JSON."""
    return to_text(value)


@register("default")
def f_default(value, fallback):
    """The value, or fallback when the value is null (the same as ??)."""
    return fallback if value is None else value


@register("type")
def f_type(value):
    """The kind of value: null, boolean, number, text, list or object."""
    return type_name(value)
