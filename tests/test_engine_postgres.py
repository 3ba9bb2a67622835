"""Several engines on one PostgreSQL database: each fire runs once, live engines keep their runs."""

from __future__ import annotations

import anyio
import pytest

from engine import Engine, EngineConfig
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
