"""Several engines on one PostgreSQL database: each fire runs once, live engines keep their runs,
a queued run runs once, pause and overlap (skip, allow) hold across engines."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from engine import Engine, EngineConfig, FakeClock
from engine._scheduler import PAUSE_SYNC_INTERVAL
from tests.support import eventually

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def quick_shutdown(monkeypatch):
    monkeypatch.setattr("engine._engine.load_config", lambda _dir: EngineConfig(shutdown_grace=0.05))


def task(name, stack, **settings):
    return {"name": name, "stack": stack, **settings}


RET = {"function": "return", "value": 1}
WAIT = lambda s: {"function": "wait", "duration": s}  # noqa: E731


async def test_two_engines_run_every_per_second_fire_exactly_once(pg_url):
    defs = [task("tick", [RET], schedule="* * * * * *")]
    async with Engine.open(defs, database=pg_url) as a, Engine.open(defs, database=pg_url) as b:
        assert a.engine_id != b.engine_id
        await a.serve(api=False)
        await b.serve(api=False)
        await anyio.sleep(4.2)
        await a.stop()
        await b.stop()
        runs = await a.store.list_runs("tick", limit=1000)
    fires = sorted(r["scheduled_at"] for r in runs)
    assert len(fires) >= 3
    assert len(set(fires)) == len(fires)  # no fire twice
    assert fires == [fires[0] + i for i in range(len(fires))]  # and none missed in between
    assert {r["trigger"] for r in runs} == {"schedule"}
    assert {r["status"] for r in runs} <= {"completed", "cancelled"}
    assert {r["engine_id"] for r in runs} <= {a.engine_id, b.engine_id}


async def test_a_live_engines_running_run_is_not_crashed_by_another_starting(pg_url):
    defs = [task("slow", [WAIT(30), RET], retry_policy={"max_retries": 1, "retry_delay": 0})]
    async with Engine.open(defs, database=pg_url) as a:
        await a.serve(api=False)
        run_id = await a.trigger("slow")
        await eventually(lambda: _status(a, run_id, "running"))
        # a run left by an engine that is gone (registered once, its session ended)
        await a.store.insert_run({"id": "ghost-run", "task": "slow", "status": "running", "engine_id": "ghost"})
        async with Engine.open(defs, database=pg_url) as b:
            assert (await b.store.get_run(run_id))["status"] == "running"  # a is alive: left alone
            assert (await b.store.get_run("ghost-run"))["status"] == "crashed"
            assert await b.store.recover_running(b.engine_id) == []
        assert (await a.store.get_run(run_id))["status"] == "running"


async def test_an_engine_that_dies_while_another_serves_has_its_runs_recovered(pg_url, monkeypatch):
    monkeypatch.setattr("engine._scheduler.RECOVER_INTERVAL", 0.2)
    defs = [task("slow", [WAIT(30), RET], retry_policy={"max_retries": 1, "retry_delay": 0})]
    async with Engine.open(defs, database=pg_url) as a:
        await a.serve(api=False)
        async with Engine.open(defs, database=pg_url) as b:
            await b.serve(api=False)
            run_id = await b.trigger("slow")
            await eventually(lambda: _status(b, run_id, "running"))
            await anyio.sleep(0.5)
            assert (await a.store.get_run(run_id))["status"] == "running"  # b is alive
            # b "dies": its liveness session ends (and b will not take the lock again, as a dead
            # process would not) while its run is still marked running
            b.store._live_id = None
            await b.store._live_conn.close()
            crashed = await eventually(lambda: _status(a, run_id, "crashed"))
            assert crashed["error"]["type"] == "EngineCrashed"
            retry = await eventually(lambda: _retry_of(a, run_id))
            assert retry["attempt"] == 2 and retry["trigger"] == "retry"


async def _status(engine, run_id, status):
    run = await engine.store.get_run(run_id)
    return run if run is not None and run["status"] == status else None


async def _retry_of(engine, run_id):
    for r in await engine.store.list_runs("slow", limit=100):
        if r.get("parent_id") == run_id:
            return r
    return None


# -- a run two engines could both start: the in-memory waiter claims its row conditionally ---------
class Work:
    """A registered function (on every engine) that records each call and blocks until released."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.release = asyncio.Event()

    async def __call__(self, inputs):
        self.calls.append(inputs["run"])
        await self.release.wait()
        return "done"


WORK = {"function": "custom_function", "name": "work", "inputs": {"run": "{{ task.run_id }}"}}


async def test_a_run_waiting_for_a_slot_on_one_engine_and_claimed_by_another_runs_once(pg_url):
    work = Work()
    defs = [task("t", [WORK])]
    one_slot = EngineConfig(max_running=1, shutdown_grace=0.05, tune_gc=False)
    async with Engine.open(defs, database=pg_url, config=one_slot) as a:
        a.register_function("work", work)
        first = await a.trigger("t")
        await eventually(lambda: work.calls == [first])  # holds a's only slot
        second = await a.trigger("t")  # stored queued; a waits in memory for its slot
        assert (await a.store.get_run(second))["status"] == "queued"
        async with Engine.open(defs, database=pg_url) as b:
            b.register_function("work", work)
            await b.serve(api=False)  # b's queue loads the stored queued row and claims it
            await eventually(lambda: second in work.calls)
            assert (await b.store.get_run(second))["engine_id"] == b.engine_id
            work.release.set()  # a's slot frees: its waiting copy of `second` must not run it again
            await eventually(lambda: not a._active and a._gate.holders == 0)
            await eventually(lambda: _status(b, second, "completed"))
            assert sorted(work.calls) == sorted([first, second])  # `second` once, on b
            assert (await a.store.get_run(first))["status"] == "completed"


async def test_cancelling_a_waiting_run_another_engine_claimed_leaves_that_run_alone(pg_url):
    work = Work()
    defs = [task("t", [WORK])]
    one_slot = EngineConfig(max_running=1, shutdown_grace=0.05, tune_gc=False)
    async with Engine.open(defs, database=pg_url, config=one_slot) as a:
        a.register_function("work", work)
        first = await a.trigger("t")
        await eventually(lambda: work.calls == [first])
        second = await a.trigger("t")
        async with Engine.open(defs, database=pg_url) as b:
            b.register_function("work", work)
            await b.serve(api=False)
            await eventually(lambda: second in work.calls)
            # a still holds its waiting copy: cancelling it must not overwrite b's running row
            assert await a.cancel(second) is False  # it runs on b
            assert (await a.store.get_run(second))["status"] == "running"
            work.release.set()
            await eventually(lambda: _status(b, second, "completed"))
            assert work.calls.count(second) == 1


# -- pause and overlap across engines (one virtual clock for both) ---------------------------------
T0 = 1_700_000_000.0


async def test_a_pause_made_on_one_engine_stops_the_fires_of_another_at_once(pg_url, monkeypatch):
    monkeypatch.setattr("engine._scheduler.PAUSE_SYNC_INTERVAL", 1e9)  # the claim alone must see it
    clock = FakeClock(T0 - 20)  # a fire at T0 + 40
    defs = [task("tick", [RET], schedule="* * * * *")]
    async with Engine.open(defs, database=pg_url, clock=clock) as a, \
            Engine.open(defs, database=pg_url, clock=clock) as b:
        await a.serve(api=False)
        await b.serve(api=False)
        await a.pause("tick")
        assert "tick" not in b._paused
        await clock.advance(60)
        # b's claim of the fire read the stored pause: nothing ran, and b knows the task is paused
        await eventually(lambda: "tick" in b._paused)
        assert await a.store.list_runs("tick") == []
        assert b.task_status("tick") == "paused"


async def test_pause_and_resume_made_on_one_engine_reach_another_within_the_sync_interval(pg_url):
    clock = FakeClock(T0 - 20)
    defs = [task("tick", [RET], schedule="* * * * *"), task("manual", [RET])]
    async with Engine.open(defs, database=pg_url, clock=clock) as a, \
            Engine.open(defs, database=pg_url, clock=clock) as b:
        await b.serve(api=False)  # only b serves: every fire is b's
        await a.pause("tick")
        await a.pause("manual")
        await clock.advance(PAUSE_SYNC_INTERVAL)
        await eventually(lambda: {"tick", "manual"} <= b._paused)
        assert b.next_execution("tick") is None
        await a.resume("tick")
        await clock.advance(PAUSE_SYNC_INTERVAL)
        await eventually(lambda: "tick" not in b._paused)
        assert "manual" in b._paused
        await clock.advance(60)  # the fire at T0 + 40 runs on b
        runs = await eventually(lambda: b.store.list_runs("tick"))
        assert [r["engine_id"] for r in runs] == [b.engine_id]


@pytest.mark.parametrize("overlap, running", [("skip", 1), ("allow", 2)])
async def test_overlap_counts_the_running_runs_of_every_engine(pg_url, overlap, running):
    clock = FakeClock(T0 - 20)  # a fire at T0 + 40
    defs = [task("slow", [WAIT(90), RET], schedule="* * * * *", overlap=overlap, max_concurrency=2)]
    async with Engine.open(defs, database=pg_url, clock=clock) as a, \
            Engine.open(defs, database=pg_url, clock=clock) as b:
        manual = [await b.trigger("slow") for _ in range(running)]  # running on b (until T0 + 70)
        await a.serve(api=False)  # only a fires: its own memory sees nothing running
        await clock.advance(60)
        fired = await eventually(lambda: _fire_of(a, "slow"))
        assert fired["status"] == "skipped" and fired["error"]["type"] == "Skipped"
        assert fired["engine_id"] == a.engine_id and fired["started_at"] is None
        assert a.runs_total.get(("slow", "skipped")) == 1
        for run_id in manual:
            assert (await a.store.get_run(run_id))["status"] == "running"


async def test_allow_runs_a_fire_while_fewer_than_max_concurrency_run_on_other_engines(pg_url):
    clock = FakeClock(T0 - 20)
    defs = [task("slow", [WAIT(90), RET], schedule="* * * * *", overlap="allow", max_concurrency=2)]
    async with Engine.open(defs, database=pg_url, clock=clock) as a, \
            Engine.open(defs, database=pg_url, clock=clock) as b:
        await b.trigger("slow")
        await a.serve(api=False)
        await clock.advance(60)
        fired = await eventually(lambda: _fire_of(a, "slow"))
        assert fired["status"] == "running" and fired["engine_id"] == a.engine_id


async def _fire_of(engine, name):
    runs = [r for r in await engine.store.list_runs(name) if r["trigger"] == "schedule"]
    return runs[0] if runs else None
