"""Differential tests: our matcher against croniter where croniter is right, and against a slow reference.

croniter is trusted only in UTC, with 5 fields and no single-value ranges
(``5-5``), which it reads as the whole field. The slow reference walks day by
day and tests each rule by its plain definition, covering L, W and # too.
"""

from __future__ import annotations

import calendar
from datetime import UTC, date, datetime, timedelta

from croniter import croniter
from hypothesis import assume, given
from hypothesis import strategies as st

from engine._schedule import Schedule

LIMITS = {"minute": (0, 59), "hour": (0, 23), "dom": (1, 31), "month": (1, 12), "dow": (0, 6)}


@st.composite
def item(draw, field):
    low, high = LIMITS[field]
    kind = draw(st.sampled_from(["value", "range", "step", "range_step"]))
    if kind == "value":
        return str(draw(st.integers(low, high)))
    if kind == "step":
        return f"*/{draw(st.integers(1, high - low + 1))}"
    a = draw(st.integers(low, high - 1))
    b = draw(st.integers(a + 1, high))  # never a-a: croniter reads it as '*'
    if kind == "range":
        return f"{a}-{b}"
    return f"{a}-{b}/{draw(st.integers(1, b - a + 1))}"


@st.composite
def field(draw, name, star_weight=3):
    if draw(st.integers(0, 9)) < star_weight:
        return "*"
    return ",".join(draw(st.lists(item(name), min_size=1, max_size=3)))


@st.composite
def expression(draw):
    parts = [draw(field(n)) for n in ("minute", "hour", "dom", "month", "dow")]
    return " ".join(parts)


after_times = st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2060, 1, 1)).map(
    lambda d: d.replace(tzinfo=UTC)
)


def _croniter_fires(expr, after, day_or, count):
    it = croniter(expr, after, day_or=day_or)
    return [it.get_next(datetime) for _ in range(count)]


def _possible(expr: str) -> bool:
    """Skip expressions that can never fire (croniter loops on them a long time)."""
    return bool(Schedule(expr, day_match="or").next_fires(datetime(2000, 1, 1), 1))


@given(expression(), after_times, st.sampled_from(["and", "or"]))
def test_agrees_with_croniter(expr, after, day_match):
    dom, dow = expr.split()[2:5:2]
    # Vixie cron (and croniter) treat a day field holding a '*' anywhere ('*/2',
    # '0,*/1') as unrestricted when OR-ing the day fields; we only treat '*' and '?' so.
    assume(day_match == "and" or not any("*" in f and f != "*" for f in (dom, dow)))
    if not _possible(expr) or not Schedule(expr, day_match=day_match).next_fires(after, 1):
        return
    ours = Schedule(expr, day_match=day_match).next_fires(after, 5)
    # AND across years can be rare; compare what both find
    theirs = _croniter_fires(expr, after, day_match == "or", len(ours))
    assert ours == theirs, expr


# --- a slow reference: plain definitions, day by day ---


def _values(text, low, high):
    out = set()
    for part in text.split(","):
        body, _, step = part.partition("/")
        step = int(step or 1)
        if body == "*":
            a, b = low, high
        elif "-" in body:
            a, b = map(int, body.split("-"))
        else:
            a = int(body)
            b = high if step > 1 or "/" in part else a
        out.update(range(a, b + 1, step))
    return out


def _dom_matches(text, day: date) -> bool:
    last = calendar.monthrange(day.year, day.month)[1]
    for part in text.split(","):
        if part == "L" and day.day == last:
            return True
        if part.startswith("L-") and day.day == last - int(part[2:]):
            return True
        if part.endswith("W"):
            target = last if part == "LW" else int(part[:-1])
            if target > last:
                continue
            # nearest Monday-Friday inside the month
            candidates = [
                d for d in range(1, last + 1) if date(day.year, day.month, d).weekday() < 5
            ]
            best = min(candidates, key=lambda d: (abs(d - target), d))
            if day.day == best:
                return True
        if part[0].isdigit() and not part.endswith("W") and day.day in _values(part, 1, 31):
            return True
    return False


def _dow_matches(text, day: date) -> bool:
    wd = (day.weekday() + 1) % 7
    last = calendar.monthrange(day.year, day.month)[1]
    for part in text.split(","):
        if "#" in part:
            k, n = map(int, part.split("#"))
            if wd == k % 7 and (day.day - 1) // 7 + 1 == n:
                return True
        elif part.endswith("L"):
            if wd == int(part[:-1]) % 7 and day.day + 7 > last:
                return True
        elif wd in {v % 7 for v in _values(part, 0, 7)}:
            return True
    return False


def _reference_next(minute, hour, dom, month, dow, day_match, after: datetime):
    minutes, hours, months = _values(minute, 0, 59), _values(hour, 0, 23), _values(month, 1, 12)
    day = after.date()
    for _ in range(366 * 30):
        if day.month in months:
            d_ok = dom == "*" or _dom_matches(dom, day)
            w_ok = dow == "*" or _dow_matches(dow, day)
            if dom != "*" and dow != "*":
                ok = (d_ok and w_ok) if day_match == "and" else (d_ok or w_ok)
            else:
                ok = d_ok and w_ok
            if ok:
                for h in sorted(hours):
                    for m in sorted(minutes):
                        t = datetime(day.year, day.month, day.day, h, m, tzinfo=UTC)
                        if t > after:
                            return t
        day += timedelta(days=1)
    return None


special_dom = st.sampled_from(["L", "L-1", "L-5", "15W", "1W", "LW", "31W", "1,L", "10-12,L"])
special_dow = st.sampled_from(["1#1", "5#5", "5L", "0L", "1#2,5L", "2#3,4#4", "1-5"])


@given(
    st.sampled_from(["0", "*/20", "5,35"]),
    st.sampled_from(["0", "9-11", "*/8"]),
    st.one_of(st.just("*"), special_dom, st.sampled_from(["1-7", "13", "29"])),
    st.sampled_from(["*", "2", "1-6", "2,8,12"]),
    st.one_of(st.just("*"), special_dow, st.sampled_from(["1", "5", "0,6"])),
    st.sampled_from(["and", "or"]),
    st.datetimes(min_value=datetime(1995, 1, 1), max_value=datetime(2050, 1, 1)),
)
def test_agrees_with_slow_reference(minute, hour, dom, month, dow, day_match, after):
    after = after.replace(tzinfo=UTC)
    s = Schedule(f"{minute} {hour} {dom} {month} {dow}", day_match=day_match)
    fires = s.next_fires(after, 3)
    expected, t = [], after
    for _ in range(3):
        t = _reference_next(minute, hour, dom, month, dow, day_match, t)
        if t is None:
            break
        expected.append(t)
    assert fires[: len(expected)] == expected


@given(
    st.sampled_from(["*/7 * * * * *", "0 */5 * * * *", "30 0 0 * * *", "15,45 30 6 1 * *"]),
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2040, 1, 1)),
)
def test_six_fields_match_five_fields_plus_seconds(expr, after):
    """Every 6-field fire's minute is a fire of the same schedule without seconds."""
    after = after.replace(tzinfo=UTC)
    six = Schedule(expr)
    five = Schedule(" ".join(expr.split()[1:]))
    seconds = _values(expr.split()[0], 0, 59)
    for fire in six.next_fires(after, 4):
        assert fire.second in seconds
        minute = fire.replace(second=0)
        assert five.next_fires(minute - timedelta(seconds=1), 1) == [minute]
