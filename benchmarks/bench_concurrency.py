"""Many runs waiting at once, and many loaded schedules: time and memory per item.

Waiting runs: N durable runs (10,000 quick, 100,000 full) of a stack whose
first step is ``wait 1`` are triggered at once on an ``Engine`` (SQLite file,
history off). Figures: wall time from the first trigger to every final row
committed (target about 1 s for 10,000: the runs overlap), and Python memory
per waiting run (target < 10 KB): a separate pass where the stack waits an
hour, so that no run ends however slowly tracemalloc lets the burst start;
one run of each task is parked first (its first run's compile is the task's
memory, not the run's), then tracemalloc counts the bytes held once every
one of the ``N`` runs is seen suspended in its ``asyncio.sleep``; the runs are
cancelled afterwards. Same-run baselines: bare asyncio tasks sleeping (time
and bytes per task), and ``runtime.execute`` of the same stack without the
engine (what the VM alone costs).

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
#: the memory pass: long enough that no run ends while the burst starts under tracemalloc
PARK_STACK = [
    {"function": "wait", "duration": 3600},
    {"function": "return", "value": "{{ task.name }}"},
]


def _engine_config(max_running: int) -> Any:
    from engine import EngineConfig

    return EngineConfig(max_running=max_running)


async def _engine_waiting(folder: Path, n: int) -> float:
    """Trigger ``n`` waiting runs at once; seconds until all are committed."""
    from engine import Engine

    db = folder / f"wait-{time.monotonic_ns()}.db"
    async with Engine.open(_sleepers(WAIT_STACK), database=f"sqlite:///{db}", env={},
                           config=_engine_config(n + 100)) as engine:  # fmt: skip
        names = engine.task_names()
        await engine.trigger(names[0], wait=True)
        base = sum(engine.runs_total.values())
        t0 = time.perf_counter()
        await asyncio.gather(*(engine.trigger(names[i % 100]) for i in range(n)))
        # the engine has no public "wait for every run"; a 5 ms poll is noise against 1 s
        while sum(engine.runs_total.values()) < base + n:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        elapsed = time.perf_counter() - t0
        done = await engine.store.count_runs(status="completed")
        if done != base + n:
            raise AssertionError(f"{done} runs completed, expected {base + n}")
    return elapsed


async def _vm_waiting(n: int) -> float:
    from compiler import lower_stack
    from runtime import execute

    program = lower_stack(WAIT_STACK, "sleeper").program
    t0 = time.perf_counter()
    await asyncio.gather(*(execute(program) for _ in range(n)))
    return time.perf_counter() - t0


async def _bare_waiting(n: int) -> float:
    t0 = time.perf_counter()
    await asyncio.gather(*(asyncio.sleep(1) for _ in range(n)))
    return time.perf_counter() - t0


def _sleepers(stack: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"name": f"sleeper_{i:03d}", "stack": stack, "request_history": {"enabled": False}}
        for i in range(100)
    ]


def _in_sleep(task: asyncio.Task[Any]) -> bool:
    """Whether ``task`` is suspended in ``asyncio.sleep``, at any depth of awaits."""
    coro: Any = task.get_coro()
    while coro is not None:
        if getattr(coro, "cr_code", None) is _SLEEP_CODE:
            return True
        coro = getattr(coro, "cr_await", None)
    return False


_SLEEP_CODE = asyncio.sleep.__code__


async def _held_per_item(start: Callable[[], Awaitable[Any]], n: int) -> float:
    """Traced bytes per item held once the ``n`` tasks ``start()`` makes are all parked in a sleep.

    Only tasks created by ``start`` count: a sleeping background task of the
    engine must not end the wait early.
    """
    old = asyncio.all_tasks()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        await start()
        # nothing signals "parked": a 50 ms poll of the tasks' await chains
        while sum(_in_sleep(t) for t in asyncio.all_tasks() - old) < n:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        gc.collect()
        return (tracemalloc.get_traced_memory()[0] - before) / n
    finally:
        tracemalloc.stop()


async def _cancelled(tasks: list[asyncio.Task[Any]]) -> None:
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _burst(engine: Any, names: list[str], n: int) -> None:
    """Trigger ``n`` runs at once, keeping nothing of the triggers (``gather`` would hold
    a finished task and a run id per run: harness memory, counted as the runs')."""
    async with asyncio.TaskGroup() as tg:
        for i in range(n):
            tg.create_task(engine.trigger(names[i % len(names)]))


async def _engine_parked_bytes(folder: Path, n: int) -> float:
    """Bytes per run of ``n`` runs parked in an hour's wait, one run of each task parked before."""
    from engine import Engine

    db = folder / f"park-{time.monotonic_ns()}.db"
    async with Engine.open(_sleepers(PARK_STACK), database=f"sqlite:///{db}", env={},
                           config=_engine_config(n + 100)) as engine:  # fmt: skip
        names = engine.task_names()
        # each task's first run compiles its stack: the task's memory, not a run's
        await _held_per_item(lambda: _burst(engine, names, len(names)), len(names))
        per_run = await _held_per_item(lambda: _burst(engine, names, n), n)
        await engine.stop(grace=0)
    return per_run


async def _vm_parked_bytes(n: int) -> float:
    from compiler import lower_stack
    from runtime import execute

    program = lower_stack(PARK_STACK, "sleeper").program
    tasks: list[asyncio.Task[Any]] = []

    async def start(count: int) -> None:
        tasks.extend(asyncio.ensure_future(execute(program)) for _ in range(count))

    await _held_per_item(lambda: start(1), 1)  # the first run compiles the stack
    per_run = await _held_per_item(lambda: start(n), n)
    await _cancelled(tasks)
    return per_run


async def _bare_parked_bytes(n: int) -> float:
    tasks: list[asyncio.Task[Any]] = []

    async def start() -> None:
        tasks.extend(asyncio.ensure_future(asyncio.sleep(3600)) for _ in range(n))

    per_task = await _held_per_item(start, n)
    await _cancelled(tasks)
    return per_task


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
                gc.collect()
                bare_wall, vm_wall, eng_wall = (r.run(_bare_waiting(n)), r.run(_vm_waiting(n)),
                                                r.run(_engine_waiting(Path(tmp), n)))  # fmt: skip
                bare_bytes, vm_bytes = r.run(_bare_parked_bytes(n)), r.run(_vm_parked_bytes(n))
                eng_bytes = r.run(_engine_parked_bytes(Path(tmp), n))
            target_wall = 1.0 * max(1, n / 10_000) if n <= 10_000 else None
            results += [
                Result("concurrency", f"{n:,} runs waiting 1 s, wall, {loop}", eng_wall, "s", "asyncio tasks sleeping 1 s",
                       bare_wall, "about 1 s" if target_wall else None, eng_wall <= 1.5 if target_wall else None,
                       higher_is_better=False, note=f"VM alone, no store: {vm_wall:.2f} s"),
                Result("concurrency", f"memory per waiting run, {loop}", eng_bytes / 1024, "KB", "asyncio task sleeping",
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
    results.append(
        Result(
            "concurrency",
            "bytes per loaded schedule",
            core_bytes,
            "B",
            target="< 2 KB",
            met=core_bytes < 2048,
            higher_is_better=False,
        )
    )
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
