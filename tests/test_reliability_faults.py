"""External faults: misbehaving endpoints, a database locked by another process, a full disk.

Each test checks three things: the run records a clear error (type and
message), retries happen exactly as the task's policy says, and other tasks
keep running meanwhile.
"""

import sqlite3
import threading
import time

import anyio
import pytest

from engine import Engine, EngineConfig
from tests.reliability.faultserver import fault_server
from tests.reliability.faultstore import RECORD_WRITES, STATE_WRITES, FaultPlan, install
from tests.support import eventually as _eventually

pytestmark = pytest.mark.anyio


async def eventually(predicate, seconds=30.0):
    return await _eventually(predicate, seconds, poll=0.02)


def call(url, **fields):
    return {"function": "external_api_request", "url": url, "return_as": "r", **fields}


async def finished(engine, name, n):
    runs = [r for r in await engine.runs(name) if r["status"] not in ("queued", "running")]
    return runs if len(runs) >= n else None


@pytest.mark.parametrize(("path", "fields", "error_type", "words"), [
    ("/hang", {"timeout": 0.3}, "HttpTimeout", "0.3"),
    ("/reset", {}, "HttpConnectionError", ""),
    ("/500", {}, "HttpError", "500"),
    ("/429", {}, "HttpError", "429"),
    ("/badjson", {}, "HttpInvalidResponse", "JSON"),
    ("/big", {}, "HttpResponseTooLarge", ""),
])
async def test_bad_endpoints_fail_clearly_retry_by_policy_and_spare_other_tasks(path, fields, error_type, words, monkeypatch):
    monkeypatch.setattr("engine._engine.load_config",
                        lambda _d: EngineConfig(shutdown_grace=0.5, http_max_response_bytes=1024 * 1024))
    async with fault_server() as srv:
        defs = [
            {"name": "bad", "retry_policy": {"max_retries": 2, "retry_delay": 0}, "timeout": 20,
             "stack": [call(srv.url + path, **fields)]},
            {"name": "good", "stack": [call(srv.url + "/ok"), {"function": "return", "value": "{{ r.ok }}"}]},
        ]
        async with Engine.open(defs) as engine:
            await engine.serve(api=False)
            await engine.trigger("bad")
            good = await engine.trigger("good", wait=True)
            assert good["status"] == "completed" and good["result"] is True
            runs = await eventually(lambda: finished(engine, "bad", 3))
            assert sorted(r["attempt"] for r in runs) == [1, 2, 3], "max_retries 2 means three attempts"
            for r in runs:
                assert r["status"] == "failed" and r["error"]["type"] == error_type, r["error"]
                assert words in r["error"]["message"] and r["error"]["step"] == "stack[0]"
            if path in ("/500", "/429"):
                assert runs[0]["error"]["status"] == int(path[1:])
            await anyio.sleep(0.3)
            assert len(await engine.runs("bad")) == 3, "no fourth attempt"
            assert (await engine.trigger("good", wait=True))["status"] == "completed"


async def test_database_locked_by_another_process_for_a_while(tmp_path):
    """A writer holding BEGIN EXCLUSIVE for 1 s delays the engine; nothing fails or is lost."""
    db = tmp_path / "locked.db"
    defs = [{"name": "w", "stack": [{"function": "add_record", "table": "t", "data": {"n": 1}, "return_as": "x"},
                                    {"function": "return", "value": "{{ x.id }}"}]}]
    async with Engine.open(defs, database=f"sqlite:///{db}") as engine:
        await engine.trigger("w", wait=True)
        other = sqlite3.connect(db, check_same_thread=False)
        other.execute("BEGIN EXCLUSIVE")
        release = threading.Timer(1.0, lambda: (other.execute("COMMIT"), other.close()))
        release.start()
        t0 = time.monotonic()
        run = await engine.trigger("w", wait=True)
        waited = time.monotonic() - t0
        release.join()
        assert run["status"] == "completed", run["error"]
        print(f"a run started under a 1 s EXCLUSIVE lock finished after {waited:.2f} s")
        assert await engine.store.count("t") == 2


async def test_database_locked_past_the_busy_timeout_fails_the_step_clearly(tmp_path, monkeypatch):
    """Held past SQLite's busy timeout, the write fails with a catchable error naming the lock."""
    db = tmp_path / "locked2.db"
    defs = [{"name": "w", "stack": [{"function": "add_record", "table": "t", "data": {"n": 1}}]},
            {"name": "other", "stack": [{"function": "return", "value": 7}]}]
    async with Engine.open(defs, database=f"sqlite:///{db}") as engine:
        await engine.trigger("w", wait=True)
        await engine.store._writer.call(lambda: engine.store._conn.execute("PRAGMA busy_timeout = 200"))
        other = sqlite3.connect(db, check_same_thread=False)
        other.execute("BEGIN EXCLUSIVE")
        try:
            run = await engine.trigger("w", wait=True)
        except Exception as exc:  # the run row itself could not be written: a clear store error
            assert "locked" in str(exc), exc
            run = None
        finally:
            other.execute("ROLLBACK")
            other.close()
        if run is not None:
            assert run["status"] == "failed" and "locked" in run["error"]["message"], run
        assert (await engine.trigger("other", wait=True))["result"] == 7


@pytest.mark.parametrize("ops", [RECORD_WRITES, STATE_WRITES], ids=["records", "engine-state"])
async def test_full_disk_fails_clearly_and_the_engine_keeps_running(tmp_path, monkeypatch, ops):
    """Every write refused with SQLite's 'database or disk is full' for a while, then space comes back."""
    plan = FaultPlan(seed=1, fail_rate=1.0, fail_ops=frozenset(ops))
    install(monkeypatch, plan)
    monkeypatch.setattr("engine._runs.FINAL_WRITE_BACKOFF", (0.01,))
    db = f"sqlite:///{tmp_path / 'full.db'}"
    defs = [{"name": "w", "retry_policy": {"max_retries": 1, "retry_delay": 0},
             "stack": [{"function": "add_record", "table": "t", "data": {"n": 1}}]},
            {"name": "pure", "stack": [{"function": "return", "value": 1}]}]
    async with Engine.open(defs, database=db) as engine:
        await engine.serve(api=False)
        if ops is RECORD_WRITES:
            run = await engine.trigger("w", wait=True)
            assert run["status"] == "failed" and "database or disk is full" in run["error"]["message"]
            assert (await engine.trigger("pure", wait=True))["status"] == "completed"
        else:
            with pytest.raises(Exception, match="database or disk is full"):
                await engine.trigger("pure")
        plan.fail_rate = 0.0  # space is back
        assert (await engine.trigger("w", wait=True))["status"] == "completed"
        assert (await engine.trigger("pure", wait=True))["status"] == "completed"
    print(f"full disk: {plan.failures} writes refused")


async def test_a_refused_fire_claim_frees_its_admission_slot(monkeypatch):
    """Fires whose claim the database refuses are lost (logged) but never hold a run slot."""
    from engine import FakeClock

    plan = FaultPlan(seed=2, fail_rate=1.0, fail_ops=frozenset({"claim_fire"}))
    install(monkeypatch, plan)
    clock = FakeClock(1_700_000_000.0)
    defs = [{"name": "tick", "schedule": "* * * * * *", "stack": []}]
    async with Engine.open(defs, clock=clock) as engine:
        await engine.serve(api=False)
        for _ in range(5):
            await clock.advance(1)
            await anyio.sleep(0.01)
        await eventually(lambda: plan.failures >= 5)
        assert engine._gate.holders == 0, "every refused claim gave its slot back"
        plan.fail_rate = 0.0
        await clock.advance(1)
        runs = await eventually(lambda: finished(engine, "tick", 1))
        assert runs[0]["status"] == "completed", "the scheduler kept going"
