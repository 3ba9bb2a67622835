"""``Schedule``: a cron expression in a time zone -> its fire instants.

``cron.py`` finds matching wall-clock times; this module turns them into
instants in an IANA zone and settles daylight-saving time:

* a wall time skipped by a spring-forward gap fires once, at the first
  instant after the gap (02:30 on the spring-forward day in New York fires at
  03:00 EDT);
* a wall time that happens twice on fall-back fires once, at its first
  occurrence — except when the hour field is ``*`` (every hour matches):
  such interval-like schedules (``*/5 * * * *``, ``30 * * * *``) keep firing
  through the repeated hour, so real time never goes an hour without a fire.
"""

from __future__ import annotations

import difflib
import math
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from engine._schedule.cron import CronSpec, parse_cron
from engine._schedule.errors import ScheduleError

__all__ = ("Schedule",)

_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_MIN_TS = (1 - _EPOCH_ORDINAL) * 86400 + 86400  # 0001-01-02: every zone's wall time exists
_MAX_TS = (date(9999, 12, 30).toordinal() - _EPOCH_ORDINAL) * 86400
_UTC_NAMES = frozenset(
    "UTC Etc/UTC UCT Etc/UCT Universal Etc/Universal Zulu Etc/Zulu GMT Etc/GMT GMT0 "
    "Etc/GMT0 GMT+0 Etc/GMT+0 GMT-0 Etc/GMT-0 Greenwich Etc/Greenwich".split()
)
_SECOND = timedelta(seconds=1)


class Schedule:
    """A cron expression evaluated in an IANA time zone.

    ``day_match="and"`` (the default) requires both day fields to match when
    both are restricted (``0 9 1-7 * 1`` = first Monday); ``"or"`` is classic
    Vixie cron. Instances are immutable, hashable and cheap (~200 bytes).
    """

    __slots__ = ("expr", "timezone", "day_match", "_spec", "_tz", "_utc")

    expr: str
    timezone: str
    day_match: str
    _spec: CronSpec
    _tz: ZoneInfo
    _utc: bool

    def __init__(self, expr: str, timezone: str = "UTC", day_match: str = "and") -> None:
        self._spec = parse_cron(expr, day_match)
        self._tz = _zone(timezone)
        self._utc = timezone in _UTC_NAMES
        self.expr, self.timezone, self.day_match = expr, timezone, day_match

    def __repr__(self) -> str:
        return f"Schedule({self.expr!r}, timezone={self.timezone!r}, day_match={self.day_match!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Schedule):
            return NotImplemented
        return (self.expr, self.timezone, self.day_match) == (
            other.expr,
            other.timezone,
            other.day_match,
        )

    def __hash__(self) -> int:
        return hash((self.expr, self.timezone, self.day_match))

    def next_fires(self, after: datetime, count: int) -> list[datetime]:
        """The next ``count`` fires strictly after ``after`` (naive = UTC), in the schedule's zone.

        Fewer (possibly none) are returned when the expression stops firing,
        e.g. ``0 0 30 2 *`` never fires and yields ``[]``.
        """
        if not isinstance(count, int) or count < 0:
            raise ScheduleError(f"count must be a whole number >= 0, not {count!r}")
        if not isinstance(after, datetime):
            raise ScheduleError(f"after must be a datetime (naive = UTC), not {after!r}; next_after takes Unix seconds")
        if after.tzinfo is None:
            after = after.replace(tzinfo=UTC)
        ts: float | None = after.timestamp()
        fires = []
        for _ in range(count):
            ts = self.next_after(ts)  # type: ignore[arg-type]
            if ts is None:
                break
            fires.append(datetime.fromtimestamp(ts, self._tz))
        return fires

    def next_after(self, ts: float) -> float | None:
        """The next fire as Unix time strictly after ``ts``; None if it never fires again."""
        t0 = max(math.floor(ts) + 1, _MIN_TS)  # fires fall on whole seconds
        if t0 > _MAX_TS:
            return None
        if self._utc:
            days, secs = divmod(t0, 86400)
            d = date.fromordinal(days + _EPOCH_ORDINAL)
            h, rest = divmod(secs, 3600)
            wall = self._spec.next_wall(d.year, d.month, d.day, h, *divmod(rest, 60))
            return None if wall is None else float(_epoch(wall))
        return self._next_zoned(t0)

    def _next_zoned(self, t0: int) -> float | None:
        tz, spec = self._tz, self._spec
        dt = datetime.fromtimestamp(t0, tz)
        start = (dt.year, dt.month, dt.day, dt.hour, dt.minute, dt.second)
        naive = dt.replace(tzinfo=None)
        off0, off1 = _offset(tz, naive, 0), _offset(tz, naive, 1)
        wall = spec.next_wall(*start)
        if off0 == off1:
            return self._resolve(wall)
        # t0 lies in a repeated stretch of wall time [a, b) around transition x.
        delta = off0 - off1
        if dt.fold == 0:
            x = _transition(tz, t0, t0 + delta, off0)
        else:
            x = _transition(tz, t0 - delta, t0, off0)
        a, b = x + off1, x + off0  # as naive wall seconds
        if wall is None:
            return None
        w = _epoch(wall)
        if w < b:  # the next match is still inside the repeated stretch
            if dt.fold == 0:
                return float(w - off0)
            if spec.every_hour:
                return float(w - off1)
            return self._resolve(spec.next_wall(*_wall(b)))
        if dt.fold == 0 and spec.every_hour:  # the second pass comes before `wall`
            again = spec.next_wall(*_wall(a))
            if again is not None and _epoch(again) < b:
                return float(_epoch(again) - off1)
        return self._resolve(wall)

    def _resolve(self, wall: tuple | None) -> float | None:
        """The instant of a matching wall time: its first occurrence, or the end of its gap."""
        if wall is None:
            return None
        naive = datetime(*wall)
        off0, off1 = _offset(self._tz, naive, 0), _offset(self._tz, naive, 1)
        w = _epoch(wall)
        if off0 >= off1:  # a plain time, or the first of a repeated one
            return float(w - off0)
        return float(_transition(self._tz, w - off1, w - off0, off0))  # skipped: end of gap


def _epoch(wall: tuple) -> int:
    y, mo, d, h, mi, s = wall
    return (date(y, mo, d).toordinal() - _EPOCH_ORDINAL) * 86400 + h * 3600 + mi * 60 + s


def _wall(seconds: int) -> tuple:
    days, secs = divmod(seconds, 86400)
    d = date.fromordinal(days + _EPOCH_ORDINAL)
    h, rest = divmod(secs, 3600)
    return (d.year, d.month, d.day, h, *divmod(rest, 60))


def _offset(tz: ZoneInfo, naive: datetime, fold: int) -> int:
    return tz.utcoffset(naive.replace(fold=fold)) // _SECOND  # type: ignore[operator]


def _transition(tz: ZoneInfo, lo: int, hi: int, off_lo: int) -> int:
    """The first instant in (lo, hi] whose UTC offset is no longer ``off_lo`` (bisection)."""
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, tz).utcoffset() // _SECOND == off_lo:  # type: ignore[operator]
            lo = mid
        else:
            hi = mid
    return hi


@lru_cache(maxsize=1024)
def _zone(name: str) -> ZoneInfo:
    """The IANA zone ``name``; ScheduleError with a suggestion when unknown."""
    if not isinstance(name, str) or not name:
        raise ScheduleError(
            f"timezone must be an IANA zone name such as 'Europe/Berlin', not {name!r}"
        )
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        close = difflib.get_close_matches(name, sorted(available_timezones()), n=1, cutoff=0.6)
        hint = (
            f"did you mean {close[0]!r}?"
            if close
            else ("use an IANA zone name such as 'UTC', 'Europe/Berlin' or 'America/New_York'")
        )
        raise ScheduleError(
            f"timezone {name!r} is not a known IANA time zone: {hint}", timezone=name
        ) from None
