"""Cron text -> ``CronSpec`` (bit masks), and the next matching wall-clock time.

A field is parsed once into an integer bit mask (bit ``n`` set when value ``n``
matches) plus a few special day rules (``L``, ``W``, ``#``); parsed fields are
cached by their text, so 100,000 schedules share a handful of masks. The next
match is found by stepping year -> month -> day -> hour -> minute -> second
with bit tricks (lowest set bit at or above ``x``), never by scanning minutes.
Everything here is naive wall-clock arithmetic: time zones live in
``schedule.py``.
"""

from __future__ import annotations

import calendar
from datetime import date
from functools import lru_cache

from engine._schedule.errors import ScheduleError

__all__ = ("CronSpec", "DayRule", "parse_cron", "ALIASES")

#: ``@name`` shorthands, as in Vixie cron.
ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

# (name, low, high) of each field, seconds first.
_SEC, _MIN, _HOUR, _DOM, _MON, _DOW = range(6)
_FIELDS = (
    ("second", 0, 59),
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day-of-month", 1, 31),
    ("month", 1, 12),
    ("day-of-week", 0, 7),
)
_ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth")
_MONTHS = {m.upper(): i for i, m in enumerate(calendar.month_abbr) if m}
_DAYS = {"SUN": 0, "MON": 1, "TUE": 2, "WED": 3, "THU": 4, "FRI": 5, "SAT": 6}
_NAMES = {_MON: _MONTHS, _DOW: _DAYS}
_MAX_YEARS = 400  # the Gregorian calendar (weekdays included) repeats every 400 years

# _DOW_DAYS[wd1 * 128 + mask]: the days 1..31 (as bits) whose weekday is in
# ``mask`` (bit 0 = Sunday) in a month whose first day has cron weekday wd1.
_DOW_DAYS = [
    sum(1 << d for d in range(1, 32) if mask >> ((wd1 + d - 1) % 7) & 1)
    for wd1 in range(7)
    for mask in range(128)
]
_LEAP_DAYS = (0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


class _FieldError(Exception):
    """A problem inside one field; ``parse_cron`` adds which field it was."""


class DayRule:
    """Which days of a month match: the month, day-of-month and day-of-week fields together.

    Shared by every schedule with the same three day fields (cached by their
    text), so the month-by-month day masks it memoises and the ``never``
    verdict of a 400-year search are paid for once. ``dom_rules`` holds
    ``("L", n)`` (n days before the last), ``("W", n)`` (nearest weekday to
    day n) and ``("LW", 0)``; ``dow_rules`` holds ``("#", weekday, n)`` and
    ``("L", weekday, 0)`` (last such weekday of the month).
    """

    __slots__ = (
        "month", "dom", "dow", "dom_rules", "dow_rules",
        "dom_any", "dow_any", "use_and", "never", "_memo",
    )  # fmt: skip

    def __init__(self, month: tuple, dom: tuple, dow: tuple, flags: tuple[bool, bool, bool]):
        self.month = month[0]
        self.dom, self.dom_rules = dom
        self.dow = (dow[0] | (dow[0] >> 7)) & 0x7F  # 7 is Sunday too
        self.dow_rules = dow[1]
        self.dom_any, self.dow_any, self.use_and = flags
        self.never = False  # set once a search proves these days never come
        self._memo: dict[int, int] = {}

    def days(self, y: int, mo: int) -> int:
        """The matching days of month ``mo`` of year ``y``, as bits 1..31."""
        memo = self._memo
        key = y * 16 + mo
        found = memo.get(key)
        if found is None:
            if len(memo) >= 512:
                memo.clear()
            found = memo[key] = self._compute(y, mo)
        return found

    def _compute(self, y: int, mo: int) -> int:
        last = _LEAP_DAYS[mo] if mo != 2 or calendar.isleap(y) else 28
        month_mask = (1 << (last + 1)) - 2
        dom_any, dow_any = self.dom_any, self.dow_any
        if dom_any and dow_any:
            return month_mask
        wd1 = (date(y, mo, 1).weekday() + 1) % 7  # cron numbering: 0 = Sunday
        if not dom_any:
            dom = self.dom & month_mask
            for kind, n in self.dom_rules:
                dom |= _dom_rule(kind, n, last, wd1)
            if dow_any:
                return dom
        if not dow_any:
            dow = _DOW_DAYS[wd1 * 128 + self.dow] & month_mask
            for kind, wd, n in self.dow_rules:
                first = 1 + (wd - wd1) % 7
                if kind == "#":
                    day = first + 7 * (n - 1)
                else:  # last such weekday of the month
                    day = first + 7 * ((last - first) // 7)
                if day <= last:
                    dow |= 1 << day
            if dom_any:
                return dow
        return dom & dow if self.use_and else dom | dow


class CronSpec:
    """A parsed cron expression: bit masks for second, minute and hour, and its ``DayRule``."""

    __slots__ = ("second", "minute", "hour", "day")

    def __init__(self, second: int, minute: int, hour: int, day: DayRule):
        self.second, self.minute, self.hour, self.day = second, minute, hour, day

    @property
    def every_hour(self) -> bool:
        """True when every hour matches: such schedules fire in both passes of a repeated hour."""
        return self.hour == 0xFFFFFF

    def next_wall(self, y: int, mo: int, d: int, h: int, mi: int, s: int) -> tuple | None:
        """The first matching wall time at or after the given one, or None within 400 years."""
        day = self.day
        if day.never:
            return None
        months, hours, minutes, seconds = day.month, self.hour, self.minute, self.second
        limit = min(y + _MAX_YEARS, 9999)
        while y <= limit:
            v = months >> mo
            if not v:
                y, mo, d, h, mi, s = y + 1, 1, 1, 0, 0, 0
                continue
            nxt = mo + (v & -v).bit_length() - 1
            if nxt != mo:
                mo, d, h, mi, s = nxt, 1, 0, 0, 0
            days = day.days(y, mo)
            while True:
                v = days >> d
                if not v:
                    break
                nxt = d + (v & -v).bit_length() - 1
                if nxt != d:
                    d, h, mi, s = nxt, 0, 0, 0
                v = hours >> h
                if not v:
                    d, h, mi, s = d + 1, 0, 0, 0
                    continue
                nxt = h + (v & -v).bit_length() - 1
                if nxt != h:
                    h, mi, s = nxt, 0, 0
                v = minutes >> mi
                if not v:
                    h, mi, s = h + 1, 0, 0
                    continue
                nxt = mi + (v & -v).bit_length() - 1
                if nxt != mi:
                    mi, s = nxt, 0
                v = seconds >> s
                if not v:
                    mi, s = mi + 1, 0
                    continue
                return y, mo, d, h, mi, s + (v & -v).bit_length() - 1
            mo, d, h, mi, s = mo + 1, 1, 0, 0, 0
            if mo > 12:
                y, mo = y + 1, 1
        if y <= 9999 - _MAX_YEARS:  # a whole Gregorian cycle searched: it never fires
            day.never = True
        return None


def _dom_rule(kind: str, n: int, last: int, wd1: int) -> int:
    """The bit of the day a day-of-month rule picks in a month (0 when none)."""
    if kind == "L":
        day = last - n
        return 1 << day if day >= 1 else 0
    day = last if kind == "LW" else n
    if day > last:
        return 0
    wd = (wd1 + day - 1) % 7
    if wd == 6:  # Saturday: Friday before, or Monday after when the 1st
        day = day - 1 if day > 1 else day + 2
    elif wd == 0:  # Sunday: Monday after, or Friday before when the last day
        day = day + 1 if day < last else day - 2
    return 1 << day


def parse_cron(expr: str, day_match: str = "and") -> CronSpec:
    """Parse ``expr`` (5 or 6 fields, or an ``@alias``); raise ScheduleError naming the field."""
    return _parse_cron(expr, day_match)


@lru_cache(maxsize=4096)
def _parse_cron(expr: str, day_match: str) -> CronSpec:
    if not isinstance(expr, str):
        raise ScheduleError(f"a cron expression must be text, not {type(expr).__name__}")
    text = expr.strip()
    if text.startswith("@"):
        alias = ALIASES.get(text.lower())
        if alias is None:
            raise ScheduleError(
                f"unknown cron shorthand {text!r} in {expr!r}: use one of {', '.join(ALIASES)}",
                expression=expr,
            )
        text = alias
    parts = text.split()
    if len(parts) not in (5, 6):
        hint = " (a year field is not supported)" if len(parts) == 7 else ""
        raise ScheduleError(
            f"cron expression {expr!r} has {len(parts)} fields{hint}: write 5 fields "
            "'minute hour day-of-month month day-of-week', or 6 with a leading second",
            expression=expr,
        )
    if len(parts) == 5:
        parts.insert(0, "0")
    fields = []
    for index, part in enumerate(parts):
        try:
            fields.append(_parse_field(index, part.upper()))
        except _FieldError as exc:
            name = _FIELDS[index][0]
            position = index + 1 if len(text.split()) == 6 else index
            raise ScheduleError(
                f"cron field {name!r} ({_ORDINALS[position - 1]} of {len(text.split())}): {exc} "
                f"(in {expr!r})",
                expression=expr,
                field=name,
            ) from None
    if day_match not in ("and", "or"):
        raise ScheduleError(f"day_match must be 'and' or 'or', not {day_match!r}", expression=expr)
    day = _day_rule(parts[_MON].upper(), parts[_DOM].upper(), parts[_DOW].upper(), day_match)
    return CronSpec(fields[_SEC][0], fields[_MIN][0], fields[_HOUR][0], day)


@lru_cache(maxsize=4096)
def _day_rule(month: str, dom: str, dow: str, day_match: str) -> DayRule:
    """The shared DayRule of three already validated day fields."""
    flags = (dom in ("*", "?"), dow in ("*", "?"), day_match == "and")
    return DayRule(
        _parse_field(_MON, month), _parse_field(_DOM, dom), _parse_field(_DOW, dow), flags
    )


@lru_cache(maxsize=8192)
def _parse_field(index: int, text: str) -> tuple[int, tuple]:
    """One field's text -> (bit mask, special rules); raises _FieldError."""
    name, low, high = _FIELDS[index]
    mask, rules = 0, []
    if text in ("*", "?"):
        if text == "?" and index not in (_DOM, _DOW):
            raise _FieldError("'?' is only allowed in day-of-month and day-of-week")
        return sum(1 << v for v in range(low, high + 1)), ()
    for item in text.split(","):
        if not item:
            raise _FieldError(f"empty list item in {text!r}")
        rule = _special(index, item, low, high)
        if rule is not None:
            rules.append(rule)
            continue
        start, end, step = _range(index, item, low, high)
        mask |= sum(1 << v for v in range(start, end + 1, step))
    return mask, tuple(rules)


def _special(index: int, item: str, low: int, high: int) -> tuple | None:
    """Parse ``L``, ``L-n``, ``nW``, ``LW`` (day-of-month) or ``n#k``, ``nL`` (day-of-week)."""
    if index == _DOM:
        if item == "L":
            return ("L", 0)
        if item == "LW":
            return ("LW", 0)
        if item.startswith("L-"):
            n = _number(index, item[2:], 0, 30)
            return ("L", n)
        if item.endswith("W"):
            return ("W", _number(index, item[:-1], low, high))
        if "L" in item or "W" in item or "#" in item:
            raise _FieldError(f"{item!r} is not valid here: use L, L-n, nW or LW")
    elif index == _DOW:
        if "#" in item:
            day, _, nth = item.partition("#")
            wd = _number(index, day, low, high) % 7
            if not nth.isdigit() or not 1 <= int(nth) <= 5:
                raise _FieldError(f"in {item!r} the week number after '#' must be 1-5")
            return ("#", wd, int(nth))
        if item == "L":
            raise _FieldError(
                "'L' alone is ambiguous here: write e.g. 5L or FRIL for the last Friday, "
                "or put L in day-of-month for the last day"
            )
        if item.endswith("L"):
            return ("L", _number(index, item[:-1], low, high) % 7, 0)
    else:
        bare = item
        for name in _MONTHS:  # JUL holds an L
            bare = bare.replace(name, "")
        if any(c in bare for c in "LW#"):
            raise _FieldError(f"{item!r}: L, W and # are only allowed in the day fields")
    return None


def _range(index: int, item: str, low: int, high: int) -> tuple[int, int, int]:
    """``*``, ``a``, ``a-b``, each with an optional ``/step`` -> (start, end, step)."""
    body, slash, step_text = item.partition("/")
    step = 1
    if slash:
        if not step_text.isdigit():
            raise _FieldError(f"step {step_text!r} in {item!r} must be a positive whole number")
        step = int(step_text)
        if step == 0:
            raise _FieldError(f"step 0 in {item!r} would never advance: use a step of 1 or more")
    if body in ("*", "?"):
        return low, high, step
    first, dash, last = body.partition("-")
    start = _number(index, first, low, high)
    if not dash:
        # "a/n" runs from a to the end of the field, as in Vixie cron
        return (start, high, step) if slash else (start, start, step)
    end = _number(index, last, low, high, range_end=True)
    if start > end:
        raise _FieldError(
            f"range {item!r} is reversed ({start} > {end}): write it as two ranges, "
            f"e.g. '{first}-{high},{low}-{last}'"
        )
    return start, end, step


def _number(index: int, text: str, low: int, high: int, range_end: bool = False) -> int:
    """A value or a name (JAN, MON) checked against the field's range."""
    names = _NAMES.get(index, {})
    if text in names:
        value = names[text]
        return 7 if range_end and index == _DOW and value == 0 else value
    if not text:
        raise _FieldError("a number is missing (a range needs both ends, e.g. 1-5)")
    if not text.isdigit():
        hint = f" (names: {', '.join(names)})" if names else ""
        raise _FieldError(f"{text!r} is not a number{hint}")
    value = int(text)
    if not low <= value <= high:
        raise _FieldError(f"{value} is out of range {low}-{high}")
    return value
