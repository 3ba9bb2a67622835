"""Many runs waiting at once, and many loaded schedules: time and memory per item.

Waiting runs: N durable runs (10,000 quick, 100,000 full) of a stack whose
first step is ``wait 1`` are triggered at once on an ``Engine`` (SQLite file,
history off). Figures: wall time from the first trigger to every final row
committed (target about 1 s for 10,000: the runs overlap), and Python memory
per waiting run (tracemalloc, measured in a separate pass while every run is
parked in its wait; target < 10 KB). Same-run baselines: bare asyncio tasks
sleeping 1 s (time and bytes per task), and ``runtime.execute`` of the same
stack without the engine (what the VM alone costs).

Loaded schedules: 100,000 cron schedules (varied expressions) through the
scheduler's timing core (``Schedule`` + ``next_after`` + ``Timer``), against
croniter building the same schedules and their first fire (a sample, scaled);
target < 2 KB per schedule. Then ``Engine.open`` with that many task
definitions (2,000 quick; 20,000 schedules in the core): load time and bytes per task, compiled stack
included. Both loops where a loop runs.
Run: ``.venv/bin/python -m benchmarks.bench_concurrency [--quick] [--json PATH]``.
"""

from __future__ import annotations

import asyncio
import gc
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks import loops, runner
from benchmarks._harness import Result, parse_args, report

WAIT_STACK = [
    {"function": "wait", "duration": 1},
    {"function": "return", "value": "{{ task.name }}"},
]


def _engine_config(max_running: int) -> Any:
    from engine import EngineConfig

    return EngineConfig(max_running=max_running)


async def _engine_waiting(folder: Path, n: int, settle: Callable[[], Awaitable[None]] | None) -> float:
    """Trigger ``n`` waiting runs at once; seconds until all are committed. ``settle`` runs mid-wait."""
    from engine import Engine

    defs = [{"name": f"sleeper_{i:03d}", "stack": WAIT_STACK, "request_history": {"enabled": False}}
            for i in range(100)]  # fmt: skip
    db = folder / f"wait-{time.monotonic_ns()}.db"
    async with Engine.open(defs, database=f"sqlite:///{db}", env={}, config=_engine_config(n + 100)) as engine:
        names = engine.task_names()
        await engine.trigger(names[0], wait=True)
        base = sum(engine.runs_total.values())
        t0 = time.perf_counter()
        await asyncio.gather(*(engine.trigger(names[i % 100]) for i in range(n)))
        if settle is not None:
            await settle()
        # the engine has no public "wait for every run"; a 5 ms poll is noise against 1 s
        while sum(engine.runs_total.values()) < base + n:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        elapsed = time.perf_counter() - t0
        done = await engine.store.count_runs(status="completed")
        if done != base + n:
            raise AssertionError(f"{done} runs completed, expected {base + n}")
    return elapsed


async def _vm_waiting(n: int, settle: Callable[[], Awaitable[None]] | None) -> float:
    from compiler import lower_stack
    from runtime import execute

    program = lower_stack(WAIT_STACK, "sleeper").program
    t0 = time.perf_counter()
    tasks = [asyncio.ensure_future(execute(program)) for _ in range(n)]
    if settle is not None:
        await settle()
    await asyncio.gather(*tasks)
    return time.perf_counter() - t0


async def _bare_waiting(n: int, settle: Callable[[], Awaitable[None]] | None) -> float:
    t0 = time.perf_counter()
    tasks = [asyncio.ensure_future(asyncio.sleep(1)) for _ in range(n)]
    if settle is not None:
        await settle()
    await asyncio.gather(*tasks)
    return time.perf_counter() - t0


def _timed_and_sized(r: asyncio.Runner, make: Callable[[Any], Awaitable[float]], n: int) -> tuple[float, float]:
    """(wall seconds without tracing, traced bytes per item while all ``n`` wait)."""
    gc.collect()
    wall = r.run(make(None))
    held: list[int] = []

    async def settle() -> None:
        await asyncio.sleep(0.5)  # every run is parked in its wait now
        gc.collect()
        held.append(tracemalloc.get_traced_memory()[0])

    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        r.run(make(settle))
    finally:
        tracemalloc.stop()
    return wall, (held[0] - before) / n


def _schedule_exprs(n: int) -> list[str]:
    return [f"{i % 60} {(i // 60) % 24} {1 + (i // 1440) % 28} * *" for i in range(n)]


def _core_load(n: int) -> tuple[float, float]:
    """Seconds and traced bytes per schedule to load ``n`` schedules into the timing core."""
    from engine._schedule import Schedule, Timer

    exprs = _schedule_exprs(n)
    now = 1_700_000_000.0

    def load() -> tuple[Any, Any]:
        timer, held = Timer(), {}
        for i, expr in enumerate(exprs):
            sched = Schedule(expr)
            held[i] = sched
            timer.schedule(i, sched.next_after(now))
        return timer, held

    gc.collect()
    t0 = time.perf_counter()
    keep = load()
    elapsed = time.perf_counter() - t0
    del keep
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        keep = load()
        size = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    del keep
    return elapsed, size / n


def _croniter_load(n: int) -> float:
    """Seconds per schedule for croniter to build a schedule and give its first fire."""
    from datetime import UTC, datetime

    from croniter import croniter

    start = datetime.fromtimestamp(1_700_000_000, UTC)
    exprs = _schedule_exprs(n)
    t0 = time.perf_counter()
    for expr in exprs:
        croniter(expr, start, day_or=False).get_next(float)
    return (time.perf_counter() - t0) / n


async def _engine_load(n: int) -> tuple[float, float]:
    """Seconds and traced bytes per task to ``Engine.open`` ``n`` scheduled task definitions."""
    from engine import Engine

    exprs = _schedule_exprs(n)
    defs = [{"name": f"t_{i:06d}", "schedule": e, "stack": [{"function": "return", "value": "{{ task.name }}"}]}
            for i, e in enumerate(exprs)]  # fmt: skip
    gc.collect()
    t0 = time.perf_counter()
    async with Engine.open(defs, database="sqlite:///:memory:", env={}) as engine:
        elapsed = time.perf_counter() - t0
        if len(engine.schedules) != n:
            raise AssertionError(f"{len(engine.schedules)} schedules loaded, expected {n}")
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        async with Engine.open(defs, database="sqlite:///:memory:", env={}):
            gc.collect()
            size = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    return elapsed, size / n


def run(quick: bool, *, waiting: int | None = None, schedules: int | None = None) -> list[Result]:
    n = waiting or (10_000 if quick else 100_000)
    n_sched = schedules or (20_000 if quick else 100_000)
    n_engine = min(n_sched, 2_000 if quick else 100_000)
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="cronstack-bench-") as tmp:
        for loop in loops():
            with runner(loop) as r:
                bare_wall, bare_bytes = _timed_and_sized(r, lambda s: _bare_waiting(n, s), n)
                vm_wall, vm_bytes = _timed_and_sized(r, lambda s: _vm_waiting(n, s), n)
                eng_wall, eng_bytes = _timed_and_sized(r, lambda s: _engine_waiting(Path(tmp), n, s), n)
            target_wall = 1.0 * max(1, n / 10_000) if n <= 10_000 else None
            results += [
                Result("concurrency", f"{n:,} runs waiting 1 s, wall, {loop}", eng_wall, "s", "asyncio tasks sleeping 1 s",
                       bare_wall, "about 1 s" if target_wall else None, eng_wall <= 1.5 if target_wall else None,
                       higher_is_better=False, note=f"VM alone, no store: {vm_wall:.2f} s"),
                Result("concurrency", f"memory per waiting run, {loop}", eng_bytes / 1024, "KB", "asyncio task",
                       bare_bytes / 1024, "< 10 KB", eng_bytes < 10 * 1024, higher_is_better=False,
                       note=f"VM alone: {vm_bytes / 1024:.2f} KB per run (tracemalloc)"),
            ]  # fmt: skip
    core_s, core_bytes = _core_load(n_sched)
    sample = min(n_sched, 1_000 if quick else 10_000)
    cron_per = _croniter_load(sample)
    results.append(Result(
        "concurrency", f"load {n_sched:,} schedules (Schedule+Timer)", core_s, "s", "croniter (scaled from a sample)",
        cron_per * n_sched, None, None, higher_is_better=False, note=f"{core_s / n_sched * 1e6:.1f} us each",
    ))  # fmt: skip
    results.append(Result("concurrency", "bytes per loaded schedule", core_bytes, "B", target="< 2 KB",
                          met=core_bytes < 2048, higher_is_better=False))
    with runner(loops()[0]) as r:
        open_s, open_bytes = r.run(_engine_load(n_engine))
    results.append(Result(
        "concurrency", f"Engine.open with {n_engine:,} scheduled tasks", open_s, "s",
        note=f"{open_bytes / 1024:.2f} KB per task incl. compiled stack", higher_is_better=False,
    ))  # fmt: skip
    return results


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv, __doc__.splitlines()[0])
    report(run(args.quick), args.json)


if __name__ == "__main__":
    main()
