"""Durable runs per second, end to end, against APScheduler 3 in memory.

An ``Engine`` on an SQLite file in a temporary folder holds ``TASKS`` tasks of
a 10-step compute stack. A batch of runs is fired at once (every run row
inserted as ``running``, executed by the VM, its final row written, all
through the store's group commit) and the clock stops when every run's final
row is committed. Three ways of firing: ``trigger`` with request history off,
the same with history on (a trace row per run), and the scheduler itself
(every task on a per-second cron, a ``FakeClock`` advanced one second so that
all fire at once; wall time is real). Targets: >= 10,000 runs/s with history
off, >= 5,000 with history on.

Baseline in the same run: APScheduler 3.11's ``AsyncIOScheduler`` with its
in-memory job store, running the same computation as a Python coroutine for
the same number of one-shot jobs (no persistence at all: it is the cost of a
scheduler, not of durability). Both loops (asyncio, uvloop). Two more rows
(no target) run every task once before the clock starts, so that the first
runs' compiles of the 100 stacks are left out: the steady state.
Run: ``.venv/bin/python -m benchmarks.bench_runs [--quick] [--json PATH]``.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import loops, runner
from benchmarks._harness import Result, parse_args, report

TASKS = 100

#: ten steps of plain compute: variables, expressions, a short loop, a branch, a return
STACK10: list[dict[str, Any]] = [
    {"function": "create_variable", "name": "started", "value": "{{ now }}"},
    {"function": "create_variable", "name": "items", "value": [3, 1, 4, 1, 5, 9, 2, 6]},
    {"function": "create_variable", "name": "total", "value": 0},
    {"function": "create_variable", "name": "label", "value": "{{ 'run-' ~ task.name }}"},
    {"function": "loop", "array": "{{ items }}", "operations": [
        {"function": "update_variable", "name": "total", "operation": "increment", "value": "{{ item * 2 }}"},
    ]},
    {"function": "create_variable", "name": "big", "value": "{{ total > 40 }}"},
    {"function": "conditional", "condition": "big", "true_branch": [
        {"function": "update_variable", "name": "label", "operation": "set", "value": "{{ label ~ '-big' }}"},
    ], "false_branch": [
        {"function": "update_variable", "name": "label", "operation": "set", "value": "{{ label ~ '-small' }}"},
    ]},
    {"function": "create_variable", "name": "summary", "value": {"label": "{{ label }}", "total": "{{ total }}", "n": "{{ items|length }}"}},
    {"function": "update_variable", "name": "summary", "operation": "merge", "value": {"ok": True}},
    {"function": "return", "value": "{{ summary }}"},
]  # fmt: skip


def python_work(name: str) -> dict[str, Any]:
    """STACK10's computation as Python, the work APScheduler's jobs do."""
    time.time()
    items = [3, 1, 4, 1, 5, 9, 2, 6]
    total = 0
    label = "run-" + name
    for item in items:
        total += item * 2
    label += "-big" if total > 40 else "-small"
    summary = {"label": label, "total": total, "n": len(items)}
    summary.update(ok=True)
    return summary


def definitions(tasks: int, *, history: bool, schedule: str | None = None) -> list[dict[str, Any]]:
    return [
        {"name": f"task_{i:05d}", "schedule": schedule, "stack": STACK10,
         "request_history": {"enabled": history}}
        for i in range(tasks)
    ]  # fmt: skip


async def _wait_finished(engine: Any, target: int) -> None:
    """Until ``target`` runs have their final row committed (the engine counts them after the write)."""
    # the engine has no public "wait for every run" yet; a 1 ms poll costs < 0.1% here
    while sum(engine.runs_total.values()) < target:  # noqa: ASYNC110
        await asyncio.sleep(0.001)


async def engine_triggered(folder: Path, runs: int, *, history: bool, tasks: int = TASKS,
                           warm_all: bool = False) -> float:
    """Seconds to trigger ``runs`` runs at once and have every one completed and committed.

    ``warm_all`` runs every task once before the clock starts (not only the
    first): each task's first run finishes compiling its stack (about 1 ms
    per task, see docs/internals.md "Compile speed"), a one-time cost that
    the cold rows count inside their window (100 tasks: about 0.1 s of a
    0.5-0.8 s window) and the warm rows leave out: those are the engine's
    steady state.
    """
    from engine import Engine

    db = folder / f"runs-{time.monotonic_ns()}.db"
    async with Engine.open(definitions(tasks, history=history), database=f"sqlite:///{db}", env={}) as engine:
        names = engine.task_names()
        for name in names if warm_all else names[:1]:
            await engine.trigger(name, wait=True)  # warm the store and the tables (and the stacks)
        base = sum(engine.runs_total.values())
        t0 = time.perf_counter()
        await asyncio.gather(*(engine.trigger(names[i % len(names)]) for i in range(runs)))
        await _wait_finished(engine, base + runs)
        elapsed = time.perf_counter() - t0
        done = await engine.store.count_runs(status="completed")
        if done != base + runs:
            raise AssertionError(f"{done} completed runs in the store, expected {base + runs}")
        if history:
            last = await engine.runs(names[1], limit=1)
            trace = await engine.run(last[0]["id"])
            if not trace or not trace["trace"]:
                raise AssertionError("history is on but the run has no trace")
    return elapsed


async def engine_scheduled(folder: Path, tasks: int) -> float:
    """Seconds from the fire of ``tasks`` per-second cron tasks to all of them completed."""
    from engine import Engine, FakeClock

    clock = FakeClock(start=1_700_000_000.0)
    db = folder / f"sched-{time.monotonic_ns()}.db"
    defs = definitions(tasks, history=False, schedule="* * * * * *")
    async with Engine.open(defs, database=f"sqlite:///{db}", env={}, clock=clock) as engine:
        await engine.serve(api=False)
        await clock.run_until_idle()
        # The scheduler warms the stacks due soon in the background. On asyncio,
        # run_until_idle waits for that; on uvloop it cannot see the ready queue
        # and returns early, which put ~1,000 first-run compiles inside the
        # window. Finishing the warm-up here makes both loops measure the same.
        from compiler._warm import warm_program

        for task in engine.definitions.tasks.values():
            warm_program(task.program)
        t0 = time.perf_counter()
        await clock.advance(1.0)
        await _wait_finished(engine, tasks)
        elapsed = time.perf_counter() - t0
        done = await engine.store.count_runs(status="completed")
        if done != tasks:
            raise AssertionError(f"{done} scheduled runs completed, expected {tasks}")
    return elapsed


async def apscheduler_jobs(runs: int) -> float:
    """Seconds for APScheduler 3 (in memory) to run ``runs`` one-shot jobs doing the same work."""
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    done = 0
    finished = asyncio.Event()

    async def job(name: str) -> None:
        nonlocal done
        python_work(name)
        done += 1
        if done == runs:
            finished.set()

    sched = AsyncIOScheduler(job_defaults={"misfire_grace_time": None, "coalesce": False, "max_instances": runs})
    sched.start(paused=True)
    for i in range(runs):
        sched.add_job(job, args=(f"task_{i % TASKS:05d}",))
    t0 = time.perf_counter()
    sched.resume()
    await finished.wait()
    elapsed = time.perf_counter() - t0
    sched.shutdown(wait=False)
    await asyncio.sleep(0)
    return elapsed


def _median_rate(samples: list[float], n: int) -> tuple[float, str]:
    rates = [n / s for s in samples]
    return statistics.median(rates), f"median of {len(rates)}, spread {min(rates):,.0f}-{max(rates):,.0f}"


def run(quick: bool, *, runs: int | None = None, repeat: int | None = None) -> list[Result]:
    runs = runs or (5_000 if quick else 10_000)
    repeat = repeat or (3 if quick else 5)
    sched_tasks = min(runs, 1_000 if quick else 5_000)
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="cronstack-bench-") as tmp:
        folder = Path(tmp)
        for loop in loops():
            with runner(loop) as r:
                aps = [r.run(apscheduler_jobs(runs)) for _ in range(repeat)]
                off = [r.run(engine_triggered(folder, runs, history=False)) for _ in range(repeat)]
                on = [r.run(engine_triggered(folder, runs, history=True)) for _ in range(repeat)]
                off_warm = [r.run(engine_triggered(folder, runs, history=False, warm_all=True)) for _ in range(repeat)]
                on_warm = [r.run(engine_triggered(folder, runs, history=True, warm_all=True)) for _ in range(repeat)]
                sch = [r.run(engine_scheduled(folder, sched_tasks)) for _ in range(repeat)]
            aps_rate, _ = _median_rate(aps, runs)
            for label, samples, n, target in (
                ("trigger, history off", off, runs, 10_000),
                ("trigger, history on", on, runs, 5_000),
                ("scheduler fire, history off", sch, sched_tasks, None),
                ("trigger, history off, every task run once before", off_warm, runs, None),
                ("trigger, history on, every task run once before", on_warm, runs, None),
            ):
                rate, note = _median_rate(samples, n)
                results.append(Result(
                    "runs", f"{label}, {loop}", rate, "runs/s", "APScheduler 3 in memory", aps_rate,
                    f">= {target:,}" if target else None, rate >= target if target else None,
                    note=f"{n:,} runs at once; {note}",
                ))  # fmt: skip
    return results


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv, __doc__.splitlines()[0])
    report(run(args.quick), args.json)


if __name__ == "__main__":
    main()
