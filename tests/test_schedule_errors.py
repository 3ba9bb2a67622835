"""Invalid schedules are refused with a ScheduleError that names the field and says what to do."""

from __future__ import annotations

import pytest

from engine._schedule import Schedule, ScheduleError
from runtime import CronstackError

CASES = [
    ("0 25 * * *", "cron field 'hour' (second of 5): 25 is out of range 0-23"),
    ("60 * * * *", "cron field 'minute' (first of 5): 60 is out of range 0-59"),
    ("60 * * * * *", "cron field 'second' (first of 6): 60 is out of range 0-59"),
    ("0 60 * * * *", "cron field 'minute' (second of 6): 60 is out of range 0-59"),
    ("0 0 32 * *", "cron field 'day-of-month' (third of 5): 32 is out of range 1-31"),
    ("0 0 0 * *", "cron field 'day-of-month' (third of 5): 0 is out of range 1-31"),
    ("0 0 * 13 *", "cron field 'month' (fourth of 5): 13 is out of range 1-12"),
    ("0 0 * * 8", "cron field 'day-of-week' (fifth of 5): 8 is out of range 0-7"),
    ("0 0 * JANUARY *", "cron field 'month' (fourth of 5): 'JANUARY' is not a number (names: JAN"),
    (
        "0 0 * * FUNDAY",
        "cron field 'day-of-week' (fifth of 5): 'FUNDAY' is not a number (names: SUN",
    ),
    ("*/0 * * * *", "step 0 in '*/0' would never advance"),
    ("0 0 */x * *", "step 'X' in '*/X' must be a positive whole number"),
    (
        "5-1 * * * *",
        "cron field 'minute' (first of 5): range '5-1' is reversed (5 > 1): write it as two ranges, e.g. '5-59,0-1'",
    ),
    ("0 0 * * FRI-MON", "range 'FRI-MON' is reversed"),
    ("0 0 1,,2 * *", "cron field 'day-of-month' (third of 5): empty list item"),
    ("* * *", "has 3 fields: write 5 fields"),
    ("", "has 0 fields"),
    ("1 2 3 4 5 6 7", "has 7 fields (a year field is not supported)"),
    ("@reboot", "unknown cron shorthand '@reboot'"),
    ("0 0 L * L", "cron field 'day-of-week' (fifth of 5): 'L' alone is ambiguous"),
    ("0 0 * * 1#6", "the week number after '#' must be 1-5"),
    ("0 0 * * 1#0", "the week number after '#' must be 1-5"),
    ("0 0 L-31 * *", "31 is out of range 0-30"),
    ("0 0 1W-3 * *", "'1W-3' is not valid here: use L, L-n, nW or LW"),
    (
        "0 L * * *",
        "cron field 'hour' (second of 5): 'L': L, W and # are only allowed in the day fields",
    ),
    (
        "? * * * *",
        "cron field 'minute' (first of 5): '?' is only allowed in day-of-month and day-of-week",
    ),
    ("0 0 * * 1W", "'1W' is not a number"),
    ("0 0 32W * *", "32 is out of range 1-31"),
    ("-1 * * * *", "cron field 'minute' (first of 5): a number is missing"),
]


@pytest.mark.parametrize(("expr", "message"), CASES)
def test_invalid_expression_names_the_field(expr, message):
    with pytest.raises(ScheduleError) as info:
        Schedule(expr)
    assert message in str(info.value)
    assert info.value.extra["expression"] == expr
    assert isinstance(info.value, CronstackError) and isinstance(info.value, ValueError)
    assert info.value.to_object()["type"] == "ScheduleError"


def test_field_name_is_carried_in_extra():
    with pytest.raises(ScheduleError) as info:
        Schedule("0 0 * 13 *")
    assert info.value.extra["field"] == "month"


def test_bad_timezone_suggests_the_nearest_name():
    with pytest.raises(
        ScheduleError,
        match="'Europe/Berln' is not a known IANA time zone: did you mean 'Europe/Berlin'",
    ):
        Schedule("* * * * *", "Europe/Berln")


@pytest.mark.parametrize("zone", ["Mars/Olympus", "../etc/passwd", "", "/abs"])
def test_unknown_timezones_are_refused(zone):
    with pytest.raises(ScheduleError, match="timezone"):
        Schedule("* * * * *", zone)


def test_bad_day_match_and_count_and_type():
    with pytest.raises(ScheduleError, match="day_match must be 'and' or 'or', not 'xor'"):
        Schedule("* * * * *", day_match="xor")
    with pytest.raises(ScheduleError, match="must be text"):
        Schedule(5)  # type: ignore[arg-type]
    from datetime import datetime

    with pytest.raises(ScheduleError, match="count must be a whole number >= 0"):
        Schedule("* * * * *").next_fires(datetime(2024, 1, 1), -1)
    with pytest.raises(ScheduleError, match="after must be a datetime"):
        Schedule("* * * * *").next_fires(1_700_000_000, 1)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "expr",
    [
        "0 0 ? * ?",
        "0 0 * * 0,7",
        "0 0 * * 5-7",
        "0 0 L,15W,L-3,LW * *",
        "0 0 * * 1#2,5L,SUN",
        "*/7 9-17/3 */10 JAN-JUN/2 MON-FRI",
        "0 0 1 * mon",
        "@Daily",
        "  0  6  *  *  *  ",
    ],
)
def test_valid_expressions_parse(expr):
    Schedule(expr)


def test_package_exports_are_complete():
    import engine._schedule as pkg

    assert isinstance(pkg.__all__, tuple)
    assert set(pkg.__all__) == {
        "FakeClock", "RealClock", "Schedule", "ScheduleError", "Timer", "wait_next"
    }  # fmt: skip
    for name in pkg.__all__:
        assert getattr(pkg, name).__module__.startswith("engine._schedule")
