"""Cron schedules: load time, memory and next-fire cost of ``engine.Schedule`` vs croniter.

Measured in the same run against croniter 7 (the installed baseline):
* load: N distinct expressions (100,000; ``--quick``: 10,000), each parsed and
  its first fire computed, vs one ``croniter(expr, start)`` + ``get_next`` each.
  Target: 100,000 in under 5 s.
* memory: bytes per loaded schedule (tracemalloc, parse caches cleared first),
  vs one croniter object per schedule. Target: under 2 KB.
* next: cost of each successive next fire (UTC and Europe/Berlin) vs
  croniter's ``get_next``.

Both sides use OR day matching (croniter's default) so they do the same work.
Run: ``python -m benchmarks.bench_schedule [--quick] [--json PATH]``.
"""

from __future__ import annotations

import gc
import tracemalloc
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from croniter import croniter

from benchmarks._harness import Result, parse_args, report, time_call
from engine._schedule import Schedule
from engine._schedule import cron as _cron

BENCH = "schedule"
START = datetime(2024, 1, 1, tzinfo=UTC)
DAYS = ["*", "1", "15", "1-7", "*/2", "10,20", "L"]
DOWS = ["*", "1", "1-5", "0,6", "MON-FRI", "SUN"]
MONTHS = ["*", "1-6"]


def expressions(n: int) -> list[str]:
    """``n`` distinct 5-field expressions that croniter also reads correctly."""
    out = [
        f"{m} {h} {d} {mo} {w}"
        for mo in MONTHS
        for d in DAYS
        for w in DOWS
        for h in range(24)
        for m in range(60)
    ]
    assert len(out) >= n
    return out[:n]


def _clear_caches() -> None:
    _cron._parse_cron.cache_clear()
    _cron._parse_field.cache_clear()
    _cron._day_rule.cache_clear()


def load_ours(exprs: list[str]) -> list:
    ts = START.timestamp()
    out = []
    for e in exprs:
        s = Schedule(e, day_match="or")
        s.next_after(ts)
        out.append(s)
    return out


def load_croniter(exprs: list[str]) -> list:
    out = []
    for e in exprs:
        it = croniter(e, START)
        it.get_next(float)
        out.append(it)
    return out


def bytes_per(load, exprs: list[str]) -> float:
    _clear_caches()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept = load(exprs)
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    del kept
    return used / len(exprs)


def run(quick: bool = False) -> list[Result]:
    n = 10_000 if quick else 100_000
    exprs = expressions(n)
    reps = 3 if quick else 5

    def ours() -> None:
        _clear_caches()
        load_ours(exprs)

    t_ours = time_call(ours, repeat=reps)
    t_cron = time_call(lambda: load_croniter(exprs), repeat=1 if not quick else 3, warmup=0)
    results = [
        Result(
            BENCH, f"load {n:,} distinct schedules + first fire", t_ours.median, "s",
            "croniter", t_cron.median, target=f"{n:,} in < {5 * n / 100_000:g} s",
            met=t_ours.median < 5 * n / 100_000, higher_is_better=False,
        ),
        Result(
            BENCH, "per schedule loaded", t_ours.median / n * 1e6, "us", "croniter",
            t_cron.median / n * 1e6, higher_is_better=False,
        ),
    ]  # fmt: skip

    m = 20_000 if not quick else 5_000
    mem_ours, mem_cron = bytes_per(load_ours, exprs[:m]), bytes_per(load_croniter, exprs[:m])
    results.append(
        Result(
            BENCH, "bytes per loaded schedule", mem_ours, "B", "croniter", mem_cron,
            target="< 2048 B", met=mem_ours < 2048, higher_is_better=False,
        )
    )  # fmt: skip

    sample, steps = exprs[:: max(1, n // 500)], 20
    for zone in ("UTC", "Europe/Berlin"):
        schedules = [Schedule(e, zone, "or") for e in sample]
        start_ts = START.timestamp()

        def successive_ours(schedules=schedules, start_ts=start_ts) -> None:
            for s in schedules:
                ts = start_ts
                for _ in range(steps):
                    ts = s.next_after(ts)

        def successive_cron(zone=zone) -> None:
            start = START.astimezone(ZoneInfo(zone))
            for e in sample:
                it = croniter(e, start)
                for _ in range(steps):
                    it.get_next(float)

        calls = len(sample) * steps
        a = time_call(successive_ours, repeat=reps)
        b = time_call(successive_cron, repeat=reps)
        results.append(
            Result(
                BENCH, f"successive next fire ({zone})", a.median / calls * 1e6, "us",
                "croniter get_next", b.median / calls * 1e6, higher_is_better=False,
                note="croniter figure includes building one object per 20 nexts",
            )
        )  # fmt: skip
    return results


def main(argv: list[str] | None = None) -> list[Result]:
    args = parse_args(argv, __doc__.splitlines()[0])
    results = run(quick=args.quick)
    report(results, args.json)
    return results


if __name__ == "__main__":
    main()
