"""The paths a burst of triggers takes: the run row, the run's task, its slot, its timeout.

Each test pins one shortcut of the launch (the trigger recording its row
without a coroutine of its own, runs' tasks made without the loop's
``create_task``, new rows inserted without their empty columns) to the
behaviour of the long way round.
"""

from __future__ import annotations

import asyncio

import anyio
import pytest

from engine import Engine, FakeClock
from engine._store import StoreError, open_store
from tests.support import eventually

pytestmark = pytest.mark.anyio

T0 = 1_700_000_000.0
WAIT = lambda s: {"function": "wait", "duration": s}  # noqa: E731
RET = lambda v: {"function": "return", "value": v}  # noqa: E731


def task(name, stack, **settings):
    return {"name": name, "stack": stack, **settings}


async def test_a_runs_task_is_named_after_the_run():
    async with Engine.open([task("w", [WAIT(30)])]) as engine:
        run_id = await engine.trigger("w")
        handle = engine._active[run_id].handle
        assert handle.get_name() == run_id
        assert handle in asyncio.all_tasks()  # registered like any task, so a shutdown finds it
        await engine.cancel(run_id)
        assert (await engine.run(run_id, trace=False))["status"] == "cancelled"


async def test_runs_go_through_the_loops_task_factory_when_there_is_one():
    loop = asyncio.get_running_loop()
    made = []

    def factory(loop, coro, **kwargs):
        made.append(asyncio.Task(coro, loop=loop, **kwargs))
        return made[-1]

    loop.set_task_factory(factory)
    try:
        async with Engine.open([task("t", [RET("{{ 6 * 7 }}")])]) as engine:
            made.clear()
            run = await engine.trigger("t", wait=True)
            assert run["status"] == "completed" and run["result"] == 42
            runs = [t for t in made if t.get_coro().__qualname__.endswith("._execute")]
            assert [t.get_name() for t in runs] == [run["id"]]
    finally:
        loop.set_task_factory(None)


async def test_a_trigger_the_database_refuses_raises_and_frees_its_slot():
    async with Engine.open([task("t", [RET(1)])]) as engine:
        insert_run = engine.store.insert_run

        def refuse(row):
            fut = asyncio.get_running_loop().create_future()
            fut.set_exception(StoreError("disk on fire"))
            return fut

        engine.store.insert_run = refuse
        with pytest.raises(StoreError, match="disk on fire"):
            await engine.trigger("t")
        assert engine._gate.holders == 0 and not engine._active and engine._launching == 0
        engine.store.insert_run = insert_run
        assert (await engine.trigger("t", wait=True))["status"] == "completed"


async def test_triggers_cancelled_while_their_rows_are_written_still_run_what_they_recorded():
    """The writer commits a queued row even when its caller gives up: each such run starts
    and finishes, so that no row is left `running` with no task behind it."""
    async with Engine.open([task("t", [RET(1)])]) as engine:
        triggers = [asyncio.ensure_future(engine.trigger("t")) for _ in range(5)]
        await asyncio.sleep(0)  # every trigger has queued its row and awaits the commit
        for t in triggers:
            t.cancel()
        await asyncio.gather(*triggers, return_exceptions=True)
        assert all(t.cancelled() for t in triggers)
        runs = await eventually(lambda: _all_finished(engine, 5))
        assert sorted(r["status"] for r in runs) == ["completed"] * 5
        assert engine._gate.holders == 0 and not engine._active and engine._launching == 0
        with anyio.fail_after(5):
            await engine.stop(grace=0)


async def _all_finished(engine, n):
    runs = await engine.store.list_runs("t", limit=50)
    return runs if len(runs) == n and all(r["status"] != "running" for r in runs) else None


async def test_a_trigger_beyond_max_running_queues_and_starts_when_a_slot_frees():
    from engine import EngineConfig

    config = EngineConfig(max_running=1)
    async with Engine.open([task("w", [WAIT(0.2), RET(1)])], config=config) as engine:
        first, second = await asyncio.gather(engine.trigger("w"), engine.trigger("w"))
        assert (await engine.run(first, trace=False))["status"] == "running"
        assert (await engine.run(second, trace=False))["status"] == "queued"
        with anyio.fail_after(5):
            await engine._active[second].done().wait()
        a, b = [await engine.run(i, trace=False) for i in (first, second)]
        assert a["status"] == b["status"] == "completed"
        assert b["started_at"] >= a["finished_at"]
        assert engine._gate.holders == 0


async def test_virtual_clock_timeouts_are_timers_that_cancel_the_run():
    clock = FakeClock(T0)
    async with Engine.open([task("w", [WAIT(100)], timeout=5)], clock=clock) as engine:
        run_id = await engine.trigger("w")
        for _ in range(3):
            await clock.run_until_idle()
            await anyio.sleep(0.003)
        assert engine._active[run_id].watchdog is not None
        await clock.advance(6)
        run = await eventually(lambda: _finished(engine, run_id))
        assert run["status"] == "timed_out" and run["error"]["type"] == "Timeout"


async def test_a_function_run_gets_its_inputs_over_the_functions_defaults():
    defs = [
        {"name": "f", "inputs": {"a": 1, "b": 2}, "stack": [RET("{{ inputs.a * 10 + inputs.b }}")]},
        task("t", [RET(0)]),
    ]
    async with Engine.open(defs) as engine:
        run_id = await engine.start_function_run("f", {"b": 5}, None)
        run = await eventually(lambda: _finished(engine, run_id))
        assert run["status"] == "completed" and run["result"] == 15


async def test_a_python_function_run_gets_its_inputs():
    async with Engine.open([task("t", [RET(0)])]) as engine:
        engine.register_function("double", lambda inputs, ctx=None: inputs["x"] * 2)
        run_id = await engine.start_function_run("double", {"x": 21}, None)
        run = await eventually(lambda: _finished(engine, run_id))
        assert run["status"] == "completed" and run["result"] == 42


async def _finished(engine, run_id):
    run = await engine.run(run_id, trace=False)
    return run if run and run["status"] not in ("queued", "running") else None


# -- new rows without their empty columns ------------------------------------------------


async def test_a_batch_of_new_runs_keeps_the_values_only_some_rows_have(tmp_path):
    """One write batch of rows of one shape, where the optional columns are set in a few
    rows only: those are stored, the others read back empty."""
    async with open_store(f"sqlite:///{tmp_path}/s.db") as store:
        rows = [{"id": f"r{i:03d}", "task": "t", "status": "queued", "started_at": None,
                 "finished_at": None, "result": None, "error": None, "parent_id": None,
                 "inputs": None} for i in range(300)]  # fmt: skip
        rows[7]["parent_id"] = "r000"
        rows[100]["inputs"] = {"k": [1, 2]}
        rows[299].update(status="running", started_at=5.0)
        rows[150].update(status="failed", finished_at=6.0, error={"message": "x"}, result=0)
        await asyncio.gather(*(store.insert_run(r) for r in rows))
        stored = {r["id"]: r for r in await store.list_runs("t", limit=1000)}
        assert len(stored) == 300
        assert stored["r007"]["parent_id"] == "r000"
        assert stored["r100"]["inputs"] == {"k": [1, 2]}
        assert stored["r299"]["started_at"] == 5.0 and stored["r299"]["status"] == "running"
        r150 = stored["r150"]
        assert (r150["finished_at"], r150["error"], r150["result"]) == (6.0, {"message": "x"}, 0)
        plain = stored["r001"]
        assert [
            plain[c]
            for c in ("started_at", "finished_at", "result", "error", "parent_id", "inputs")
        ] == [None] * 6
        assert plain["kind"] == "task" and plain["attempt"] == 1 and plain["not_before"] is not None


async def test_a_batch_whose_rows_leave_every_optional_column_empty(tmp_path):
    async with open_store(f"sqlite:///{tmp_path}/s.db") as store:
        await asyncio.gather(*(store.insert_run({"id": f"r{i}", "task": "t"}) for i in range(20)))
        runs = await store.list_runs("t", limit=100)
        assert len(runs) == 20
        assert all(
            r["result"] is None and r["inputs"] is None and r["started_at"] is None for r in runs
        )
        with pytest.raises(StoreError, match="unique"):  # a bad row still fails alone
            await asyncio.gather(store.insert_run({"id": "new", "task": "t"}),
                                 store.insert_run({"id": "r3", "task": "t"}))  # fmt: skip
        assert (await store.get_run("new"))["task"] == "t"
