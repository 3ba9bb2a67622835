"""Date filters: PHP-style formatting, parsing to Unix time, ISO 8601, calendar arithmetic.

Times are Unix seconds (what ``now`` gives) or ISO 8601 texts; timezones are
IANA names read through ``zoneinfo``. A naive text (no offset) is read in the
filter's timezone argument, UTC by default.
"""

from __future__ import annotations

import calendar
import functools
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from runtime._errors import ExpressionError
from runtime._values import show, type_name
from runtime.filters._registry import need_number, need_text, register

__all__ = ()

_UNIT_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400, "week": 604800}
_CALENDAR_UNITS = ("day", "week", "month", "year")


@functools.lru_cache(maxsize=128)
def _zone(name: str) -> Any:
    if name.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ExpressionError(f"unknown timezone {show(name)}: use an IANA name such as 'Europe/Paris' or 'UTC'") from None


def _tz(name: str, tz: Any) -> Any:
    return _zone(need_text(name, tz, "its timezone"))


def _instant(name: str, value: Any, zone: Any) -> datetime:
    """An aware datetime from Unix seconds or an ISO 8601 text (naive texts read in ``zone``)."""
    t = type(value)
    if t is int or t is float:
        try:
            return datetime.fromtimestamp(value, zone)
        except (OverflowError, OSError, ValueError):
            raise ExpressionError(f"filter '{name}' got a time out of range: {show(value)}") from None
    if t is str:
        try:
            dt = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ExpressionError(
                f"filter '{name}' cannot read a date from text {show(value)}: use ISO 8601 like '2025-01-16T06:00:00Z'"
            ) from None
        return dt.replace(tzinfo=zone) if dt.tzinfo is None else dt.astimezone(zone)
    raise ExpressionError(f"filter '{name}' needs Unix seconds or an ISO 8601 text, got {type_name(value)} {show(value)}")


def _seconds(dt: datetime) -> int | float:
    ts = dt.timestamp()
    return int(ts) if ts.is_integer() else ts


def _ordinal(day: int) -> str:
    if 11 <= day % 100 <= 13:
        return "th"
    return {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")


def _offset(dt: datetime, colon: bool) -> str:
    off = dt.utcoffset() or timedelta(0)
    total = int(off.total_seconds())
    sign = "-" if total < 0 else "+"
    h, m = divmod(abs(total) // 60, 60)
    return f"{sign}{h:02d}:{m:02d}" if colon else f"{sign}{h:02d}{m:02d}"


_PHP: dict[str, Any] = {
    "d": lambda d: f"{d.day:02d}",
    "D": lambda d: d.strftime("%a"),
    "j": lambda d: str(d.day),
    "l": lambda d: d.strftime("%A"),
    "N": lambda d: str(d.isoweekday()),
    "S": lambda d: _ordinal(d.day),
    "w": lambda d: str(d.isoweekday() % 7),
    "z": lambda d: str(d.timetuple().tm_yday - 1),
    "W": lambda d: f"{d.isocalendar()[1]:02d}",
    "F": lambda d: d.strftime("%B"),
    "M": lambda d: d.strftime("%b"),
    "m": lambda d: f"{d.month:02d}",
    "n": lambda d: str(d.month),
    "t": lambda d: str(calendar.monthrange(d.year, d.month)[1]),
    "L": lambda d: "1" if calendar.isleap(d.year) else "0",
    "o": lambda d: str(d.isocalendar()[0]),
    "Y": lambda d: f"{d.year:04d}",
    "y": lambda d: f"{d.year % 100:02d}",
    "a": lambda d: "am" if d.hour < 12 else "pm",
    "A": lambda d: "AM" if d.hour < 12 else "PM",
    "g": lambda d: str(d.hour % 12 or 12),
    "G": lambda d: str(d.hour),
    "h": lambda d: f"{d.hour % 12 or 12:02d}",
    "H": lambda d: f"{d.hour:02d}",
    "i": lambda d: f"{d.minute:02d}",
    "s": lambda d: f"{d.second:02d}",
    "u": lambda d: f"{d.microsecond:06d}",
    "v": lambda d: f"{d.microsecond // 1000:03d}",
    "e": lambda d: getattr(d.tzinfo, "key", "UTC"),
    "T": lambda d: d.tzname() or "UTC",
    "P": lambda d: _offset(d, True),
    "O": lambda d: _offset(d, False),
    "p": lambda d: "Z" if not d.utcoffset() else _offset(d, True),
    "Z": lambda d: str(int((d.utcoffset() or timedelta(0)).total_seconds())),
    "I": lambda d: "1" if d.dst() else "0",
    "U": lambda d: str(int(d.timestamp() // 1)),
    "c": lambda d: d.strftime("%Y-%m-%dT%H:%M:%S") + _offset(d, True),
    "r": lambda d: d.strftime("%a, %d %b %Y %H:%M:%S ") + _offset(d, False),
}


@register("date")
def f_date(value, format="Y-m-d H:i:s", timezone="UTC"):  # noqa: A002 - the user-facing name
    """A time formatted with PHP date() letters (Y-m-d H:i:s...) in a timezone; \\ escapes a letter."""
    fmt = need_text("date", format, "its format")
    dt = _instant("date", value, _tz("date", timezone))
    out: list[str] = []
    i = 0
    while i < len(fmt):
        c = fmt[i]
        if c == "\\" and i + 1 < len(fmt):
            out.append(fmt[i + 1])
            i += 2
            continue
        fn = _PHP.get(c)
        out.append(fn(dt) if fn else c)
        i += 1
    return "".join(out)


@register("to_timestamp")
def f_to_timestamp(value, timezone="UTC"):
    """Unix seconds of an ISO 8601 text (naive texts are read in timezone); numbers pass through."""
    if type(value) in (int, float):
        return value
    return _seconds(_instant("to_timestamp", value, _tz("to_timestamp", timezone)))


@register("iso")
def f_iso(value, timezone="UTC"):
    """A time as ISO 8601 text in a timezone ("Z" for UTC), with milliseconds when not whole."""
    dt = _instant("iso", value, _tz("iso", timezone))
    text = dt.isoformat(timespec="seconds" if dt.microsecond == 0 else "milliseconds")
    return text[:-6] + "Z" if dt.tzinfo is UTC else text


def _unit(name: str, unit: Any) -> str:
    u = need_text(name, unit, "its unit").lower()
    u = u[:-1] if u.endswith("s") else u
    if u not in _UNIT_SECONDS and u not in _CALENDAR_UNITS:
        raise ExpressionError(
            f"filter '{name}' does not know the unit {show(unit)}: use seconds, minutes, hours, days, weeks, months or years"
        )
    return u


@register("date_add")
def f_date_add(value, amount, unit="seconds", timezone="UTC"):
    """Unix seconds after adding amount units; days, weeks, months and years follow the calendar of timezone."""
    n = need_number("date_add", amount, "its amount")
    u = _unit("date_add", unit)
    dt = _instant("date_add", value, _tz("date_add", timezone))
    try:
        if u in ("second", "minute", "hour"):
            ts = dt.timestamp() + n * _UNIT_SECONDS[u]
            return int(ts) if type(n) is int and float(ts).is_integer() else ts
        if u in ("day", "week"):
            local = dt.replace(tzinfo=None) + timedelta(days=n * (7 if u == "week" else 1))
        else:
            if type(n) is not int and not float(n).is_integer():
                raise ExpressionError(f"filter 'date_add' adds whole {u}s only, got {show(n)}")
            months = int(n) * (12 if u == "year" else 1)
            y, m = divmod(dt.month - 1 + months, 12)
            year = dt.year + y
            day = min(dt.day, calendar.monthrange(year, m + 1)[1])
            local = dt.replace(tzinfo=None, year=year, month=m + 1, day=day)
        return _seconds(local.replace(tzinfo=dt.tzinfo))
    except (OverflowError, ValueError):
        raise ExpressionError(f"filter 'date_add' moved the time out of range ({show(n)} {u}s)") from None


@register("date_diff")
def f_date_diff(value, other, unit="seconds"):
    """The time from other to the value in seconds, minutes, hours, days or weeks (may be fractional)."""
    u = _unit("date_diff", unit)
    if u not in _UNIT_SECONDS:
        raise ExpressionError("filter 'date_diff' cannot count months or years (their length varies); use days")
    a = _instant("date_diff", value, UTC).timestamp()
    b = _instant("date_diff", other, UTC).timestamp()
    d = (a - b) / _UNIT_SECONDS[u]
    return int(d) if d.is_integer() else d
