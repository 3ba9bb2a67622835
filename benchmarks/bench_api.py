"""Latency of the seed dashboard's poll, GET /api/admin/active-tasks, on a loaded engine.

Workload: an engine on an SQLite file with 10,000 scheduled tasks (1,000 with
--quick) while 1,000 runs (100) execute (each waits 600 s, so all stay
running during the measurement), serving (scheduler and admin API, as ``cronstack run``,
on uvloop) on a real socket. A client in the same process sends sequential requests (200; 50
with --quick) and records each latency. Baseline: GET /healthz on the same
server at the same moment, which reads only ``engine.stats()``. Reported: p50
and p99 of each; the ratio says how much the per-task listing costs compared
with the cheapest route.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402

from benchmarks._harness import Result, parse_args, report  # noqa: E402
from engine import Engine  # noqa: E402


def _definitions(tasks: int, running: int) -> list[dict]:
    defs = []
    for i in range(tasks):
        stack = [{"function": "wait", "duration": 600}] if i < running else [{"function": "return", "value": i}]
        defs.append({"name": f"task_{i:05d}", "schedule": f"{i % 60} {i % 24} * * *", "stack": stack})
    return defs


async def _latencies(session: aiohttp.ClientSession, url: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        async with session.get(url) as resp:
            await resp.read()
            assert resp.status == 200, resp.status
        out.append(time.perf_counter() - t0)
    return out


def _p(samples: list[float], q: float) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[int(q) - 1] if len(samples) > 1 else samples[0]


async def _measure(tasks: int, running: int, requests: int) -> dict[str, list[float]]:
    with tempfile.TemporaryDirectory() as tmp:
        async with Engine.open(_definitions(tasks, running), database=f"sqlite:///{tmp}/bench.db") as engine:
            for i in range(running):
                await engine.trigger(f"task_{i:05d}")
            for _ in range(1200):  # up to 60 s for every run to start
                if engine.stats()["running"] >= running:
                    break
                await asyncio.sleep(0.05)
            await engine.serve(host="127.0.0.1", port=0)  # scheduler + admin API, as `cronstack run`
            try:
                async with aiohttp.ClientSession() as session:
                    base = engine.api_url
                    await _latencies(session, f"{base}/api/admin/active-tasks", 3)  # warm-up
                    health = await _latencies(session, f"{base}/healthz", requests)
                    active = await _latencies(session, f"{base}/api/admin/active-tasks", requests)
                    health += await _latencies(session, f"{base}/healthz", requests)
                    assert engine.stats()["running"] == running
            finally:
                await engine.stop(grace=0)
    return {"active": active, "health": health}


def run(quick: bool) -> list[Result]:
    import uvloop

    tasks, running, requests = (1_000, 100, 50) if quick else (10_000, 1_000, 200)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        got = runner.run(_measure(tasks, running, requests))
    note = f"{tasks:,} tasks, {running:,} running, {requests} sequential requests"
    results = []
    for q in (50, 99):
        results.append(Result(
            "api", f"active-tasks p{q}", _p(got["active"], q) * 1000, "ms",
            baseline_name=f"healthz p{q}", baseline=_p(got["health"], q) * 1000,
            higher_is_better=False, note=note,
        ))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv, __doc__.splitlines()[0])
    report(run(args.quick), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
