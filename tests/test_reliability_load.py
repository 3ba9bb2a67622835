"""Load: 10,000 runs waiting at once, 100,000 schedules loaded, memory flat across runs.

Correctness only (everything completes, the API answers); the wall times and
memory figures are printed for docs/reliability.md, never asserted.
"""

import gc
import os
import time
import tracemalloc

import aiohttp
import anyio
import pytest

from engine import Engine, EngineConfig

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

SOAK = bool(os.environ.get("CRONSTACK_SOAK"))


async def test_ten_thousand_waiting_runs_finish_while_the_api_answers(monkeypatch):
    monkeypatch.setattr("engine._engine.load_config", lambda _d: EngineConfig(max_running=20_000))
    n = 10_000
    defs = [{"name": "sleeper", "request_history": {"enabled": False},
             "stack": [{"function": "wait", "duration": 1}, {"function": "return", "value": 1}]}]
    async with Engine.open(defs) as engine:
        await engine.serve(port=0)
        answered = {"/healthz": 0, "/api/admin/active-tasks": 0}
        done = anyio.Event()

        async def poll():
            async with aiohttp.ClientSession() as http:
                while not done.is_set():
                    for path in answered:
                        async with http.get(engine.api_url + path) as r:
                            assert r.status == 200, (path, r.status)
                            answered[path] += 1
                    await anyio.sleep(0.05)

        t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:
            tg.start_soon(poll)
            ids = [await engine.trigger("sleeper") for _ in range(n)]
            with anyio.fail_after(110):
                while await engine.store.count_runs("sleeper", status="completed") < n:  # noqa: ASYNC110 - polls the database
                    await anyio.sleep(0.2)
            done.set()
        wall = time.perf_counter() - t0
        assert len(set(ids)) == n
        assert await engine.store.count_runs("sleeper") == n
        print(f"{n} runs of a 1 s wait: all completed in {wall:.2f} s wall; API answered {answered}")
        assert all(v > 0 for v in answered.values())


async def test_many_schedules_load():
    n = 100_000 if SOAK else 20_000
    defs = [{"name": f"t{i}", "schedule": f"{i % 60} {i % 24} * * {i % 7}", "stack": []} for i in range(n)]
    gc.collect()
    tracemalloc.start()
    t0 = time.perf_counter()
    async with Engine.open(defs) as engine:
        loaded = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
        current, _ = tracemalloc.get_traced_memory()
        assert len(engine.schedules) == n
        assert engine.next_execution(f"t{n - 1}") is not None
    tracemalloc.stop()
    print(f"{n} scheduled tasks loaded in {loaded:.1f} s; traced memory {current / 1e6:.0f} MB "
          f"({current / n:.0f} B/task), peak {peak / 1e6:.0f} MB")


async def test_memory_does_not_grow_per_run_once_history_is_pruned():
    defs = [{"name": "tiny", "request_history": {"enabled": True, "retention_days": 0},
             "stack": [{"function": "create_variable", "name": "x", "value": "{{ uuid }}"},
                       {"function": "return", "value": "{{ x }}"}]}]
    async with Engine.open(defs) as engine:
        async def batch(k):
            for _ in range(k):
                await engine.trigger("tiny", wait=True)
            await engine.store.prune_history("tiny", time.time() + 1)

        await batch(500)  # warm caches
        gc.collect()
        tracemalloc.start()
        first = tracemalloc.take_snapshot()
        await batch(2000)
        gc.collect()
        mid = tracemalloc.take_snapshot()
        await batch(2000)
        gc.collect()
        last = tracemalloc.take_snapshot()
        tracemalloc.stop()
        grow1 = sum(s.size_diff for s in mid.compare_to(first, "filename"))
        grow2 = sum(s.size_diff for s in last.compare_to(mid, "filename"))
        print(f"memory after 2,000 runs: {grow1 / 1024:+.0f} KiB; after 2,000 more: {grow2 / 1024:+.0f} KiB "
              f"({grow2 / 2000:+.0f} B/run)")
        assert await engine.store.count_runs("tiny") == 0, "history was pruned"
        assert grow2 < 2000 * 200, "more than 200 bytes kept per pruned run"
