"""Load: 100,000 distinct schedules parsed and their next fire computed; a sample checked."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest
from croniter import croniter

from engine._schedule import Schedule

DAYS = ["*", "1", "15", "1-7", "*/2", "10,20", "L", "LW", "15W"]
DOWS = ["*", "1", "1-5", "0,6", "MON-FRI", "SUN", "5L", "1#1"]
# Day pairs that can never both hold (worked out by hand): a last Friday is
# the 22nd or later, a first Monday the 7th or earlier, a W day is a weekday.
NEVER = {
    ("1", "5L"), ("1-7", "5L"), ("15", "5L"), ("10,20", "5L"), ("15W", "5L"),
    ("15", "1#1"), ("10,20", "1#1"), ("L", "1#1"), ("LW", "1#1"), ("15W", "1#1"),
    ("LW", "SUN"), ("LW", "0,6"), ("15W", "SUN"), ("15W", "0,6"),
}  # fmt: skip


def distinct_expressions(n: int) -> list[str]:
    out = [f"{m} {h} {d} * {w}" for d in DAYS for w in DOWS for h in range(24) for m in range(60)]
    return out[:n]


@pytest.mark.slow
def test_load_100k_distinct_schedules():
    exprs = distinct_expressions(100_000)
    assert len(set(exprs)) == 100_000
    start = datetime(2024, 1, 1, tzinfo=UTC)
    ts = start.timestamp()
    zones = ["UTC", "UTC", "UTC", "Europe/Berlin"]
    loaded = []
    for i, expr in enumerate(exprs):
        s = Schedule(expr, zones[i % 4])
        loaded.append((s, s.next_after(ts)))
    rng = random.Random(3)
    checked = 0
    for s, nxt in loaded:
        fields = s.expr.split()
        assert (nxt is None) == ((fields[2], fields[4]) in NEVER), s
    for s, nxt in rng.sample([pair for pair in loaded if pair[1] is not None], 400):
        fields = s.expr.split()
        plain = not any(c in f for f in fields for c in "LW#")
        restricted = fields[2] != "*" and fields[4] != "*"
        if s.timezone == "UTC" and plain and not fields[2].startswith("*/"):
            # croniter is right here: UTC, 5 fields, no single-value ranges
            expected = croniter(s.expr, start, day_or=not restricted).get_next(float)
            assert nxt == expected, s
            checked += 1
        else:
            assert nxt is not None and nxt > ts
            fire = datetime.fromtimestamp(nxt, s._tz)
            assert (fire.minute, fire.hour) == (int(fields[0]), int(fields[1]))
    assert checked > 100
