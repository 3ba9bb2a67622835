"""Runs across a reload and a shutdown: the functions a run started with, and work that never started."""

import json

import anyio
import pytest

from engine import Engine, EngineConfig, FakeClock
from engine._gate import FairGate, GateClosed
from tests.support import eventually

pytestmark = pytest.mark.anyio

T0 = 1_700_000_000.0


async def settle(clock):
    for _ in range(3):
        await clock.run_until_idle()
        await anyio.sleep(0.003)


def task(name, stack, **settings):
    return {"name": name, "stack": stack, **settings}


def function(name, stack):
    return {"name": name, "inputs": {}, "stack": stack}


WAIT = lambda s: {"function": "wait", "duration": s}  # noqa: E731
RET = lambda v: {"function": "return", "value": v}  # noqa: E731
CALL = {"function": "custom_function", "name": "helper", "inputs": {}, "return_as": "r"}
CALL_ASYNC = {**CALL, "execution_mode": "async"}
FAIL = {"function": "throw_error", "message": "nope", "type": "Boom"}


def write(folder, definition):
    (folder / f"{definition['name']}.json").write_text(json.dumps(definition))


async def finished(engine, run_id):
    run = await engine.run(run_id, trace=False)
    return run if run and run["status"] not in ("queued", "running") else None


# -- A: a run keeps the functions it started with --------------------------------------------


async def test_a_run_in_flight_keeps_the_functions_it_started_with_across_a_reload(tmp_path):
    write(tmp_path, task("t", [WAIT(10), CALL, RET("{{ r }}")]))
    write(tmp_path, task("u", [WAIT(10), CALL, RET("{{ r }}")]))
    write(tmp_path, function("helper", [RET("v1")]))
    clock = FakeClock(T0)
    async with Engine.open(tmp_path, database=f"sqlite:///{tmp_path / 'x.db'}", clock=clock) as engine:
        removed = await engine.trigger("t")  # its function is deleted by the reload
        changed = await engine.trigger("u")  # its function is changed by the reload
        await settle(clock)
        write(tmp_path, task("t", [RET("new t")]))
        (tmp_path / "helper.json").unlink()
        await engine.reload()
        (tmp_path / "helper.json").write_text(json.dumps(function("helper", [RET("v2")])))
        await engine.reload()  # two reloads: the runs still hold the first set
        later = await engine.trigger("u")
        await settle(clock)
        await clock.advance(10)
        await settle(clock)
        for run_id in (removed, changed):
            run = await eventually(lambda run_id=run_id: finished(engine, run_id))
            assert (run["status"], run["result"], run["error"]) == ("completed", "v1", None)
        assert (await eventually(lambda: finished(engine, later)))["result"] == "v2"


async def test_a_run_whose_row_write_straddles_a_reload_uses_the_functions_of_its_definition(tmp_path):
    """trigger() reads the task, then awaits the row's write: a reload landing in between must not
    pair the old task with the new functions (the old task would call a function now gone)."""
    write(tmp_path, task("t", [CALL, RET("{{ r }}")]))
    write(tmp_path, function("helper", [RET("v1")]))
    async with Engine.open(tmp_path, database=f"sqlite:///{tmp_path / 'x.db'}") as engine:
        insert = engine.store.insert_run

        async def insert_during_a_reload(row):
            write(tmp_path, task("t", [RET("new t")]))
            (tmp_path / "helper.json").unlink()
            await engine.reload()
            await insert(row)

        engine.store.insert_run = insert_during_a_reload
        run_id = await engine.trigger("t")
        engine.store.insert_run = insert
        run = await eventually(lambda: finished(engine, run_id))
        assert (run["status"], run["result"]) == ("completed", "v1")
        assert (await engine.trigger("t", wait=True))["result"] == "new t"


async def test_an_async_call_after_a_reload_is_a_new_run_of_the_current_definitions(tmp_path):
    write(tmp_path, task("gone", [WAIT(10), CALL_ASYNC, RET("{{ r }}")]))
    write(tmp_path, task("kept", [WAIT(10), CALL_ASYNC, RET("{{ r }}")]))
    write(tmp_path, function("helper", [RET("v1")]))
    clock = FakeClock(T0)
    async with Engine.open(tmp_path, database=f"sqlite:///{tmp_path / 'x.db'}", clock=clock) as engine:
        await engine.serve(api=False)
        gone = await engine.trigger("gone")
        await settle(clock)
        (tmp_path / "helper.json").unlink()
        write(tmp_path, task("gone", [RET(1)]))
        write(tmp_path, task("kept", [RET(1)]))
        await engine.reload()
        await clock.advance(10)
        await settle(clock)
        caller = await eventually(lambda: finished(engine, gone))
        assert caller["status"] == "completed"  # the caller goes on with the new run's id
        child = await eventually(lambda: finished(engine, caller["result"]))
        assert child["kind"] == "function" and child["parent_id"] == gone
        assert child["status"] == "failed" and child["error"]["type"] == "UnknownFunction"
        assert "no function named 'helper'" in child["error"]["message"]
        assert "reloaded" in child["error"]["message"]
        # the function comes back changed: a caller started before that reload starts the new body
        write(tmp_path, function("helper", [RET("v1")]))
        write(tmp_path, task("kept", [WAIT(10), CALL_ASYNC, RET("{{ r }}")]))
        await engine.reload()
        kept = await engine.trigger("kept")
        await settle(clock)
        write(tmp_path, function("helper", [RET("v2")]))
        await engine.reload()
        await clock.advance(10)
        await settle(clock)
        caller = await eventually(lambda: finished(engine, kept))
        child = await eventually(lambda: finished(engine, caller["result"]))
        assert (child["status"], child["result"]) == ("completed", "v2")


# -- B: a stopping engine starts nothing new, and what never started stays queued -------------


async def _stop_in_background(engine, tg, grace):
    done = anyio.Event()

    async def stop():
        await engine.stop(grace=grace)
        done.set()

    tg.start_soon(stop)
    await anyio.sleep(0.01)
    return done


async def test_stop_starts_no_queued_run_and_leaves_them_queued_for_the_next_start(tmp_path):
    db = f"sqlite:///{tmp_path / 'x.db'}"
    clock = FakeClock(T0)
    cfg = EngineConfig(max_running=1, shutdown_grace=0.05, tune_gc=False)
    async with Engine.open([task("t", [WAIT(10), RET("done")])], database=db, clock=clock, config=cfg) as engine:
        ids = [await engine.trigger("t") for _ in range(4)]
        await settle(clock)
        async with anyio.create_task_group() as tg:
            done = await _stop_in_background(engine, tg, grace=60)  # real seconds: never reached
            await clock.advance(10)  # the running run ends inside the grace and frees its slot
            with anyio.fail_after(10):
                await done.wait()  # stop() ends with the runs that started, not the grace
        runs = [await engine.run(i, trace=False) for i in ids]
        assert [r["status"] for r in runs] == ["completed", "queued", "queued", "queued"]
        assert all(r["started_at"] is None and r["error"] is None for r in runs[1:])
        assert engine._gate.holders == 0 and not engine._active
    # the next start runs each of them, once
    clock = FakeClock(T0 + 100)
    async with Engine.open([task("t", [WAIT(10), RET("done")])], database=db, clock=clock, config=cfg) as engine:
        await engine.serve(api=False)
        for _ in range(3):
            await settle(clock)
            await clock.advance(10)
        await settle(clock)
        runs = await eventually(lambda: _all_finished(engine, 4))
        assert sorted(r["id"] for r in runs) == sorted(ids)  # no new rows: the same runs
        assert {r["status"] for r in runs} == {"completed"}


async def _all_finished(engine, n):
    runs = await engine.runs("t", limit=100)
    return runs if len(runs) == n and all(r["status"] == "completed" for r in runs) else None


async def test_a_claimed_retry_that_never_got_a_slot_goes_back_to_queued(tmp_path):
    db = f"sqlite:///{tmp_path / 'x.db'}"
    clock = FakeClock(T0)
    cfg = EngineConfig(max_running=1, shutdown_grace=0.05, tune_gc=False)
    defs = [task("busy", [WAIT(100)]), task("flaky", [FAIL], retry_policy={"max_retries": 1, "retry_delay": 5})]
    async with Engine.open(defs, database=db, clock=clock, config=cfg) as engine:
        await engine.serve(api=False)
        first = await engine.trigger("flaky", wait=True)
        await engine.trigger("busy")  # holds the only slot
        await settle(clock)
        await clock.advance(6)  # the retry is due: claimed from the store, it waits for the slot
        await settle(clock)
        retry = await eventually(lambda: _retry_of(engine, first["id"], "running"))
        assert retry["id"] in engine._active and not engine._active[retry["id"]].admitted
        await engine.stop(grace=0)
        stored = await engine.store.get_run(retry["id"])
        assert (stored["status"], stored["started_at"]) == ("queued", None)
    async with Engine.open(defs, database=db, clock=FakeClock(T0 + 50), config=cfg) as engine:
        assert (await engine.run(retry["id"], trace=False))["status"] == "queued"  # not taken for a crash
        await engine.serve(api=False)
        run = await eventually(lambda: finished(engine, retry["id"]))
        assert (run["status"], run["attempt"], run["error"]["type"]) == ("failed", 2, "Boom")


async def _retry_of(engine, parent_id, status):
    for run in await engine.store.list_runs("flaky"):
        if run["parent_id"] == parent_id and run["status"] == status:
            return run
    return None


async def test_serving_again_after_a_stop_admits_runs_and_starts_what_was_left_queued(tmp_path):
    clock = FakeClock(T0)
    cfg = EngineConfig(max_running=1, shutdown_grace=0.05, tune_gc=False)
    async with Engine.open([task("t", [WAIT(10)])], database=f"sqlite:///{tmp_path / 'x.db'}",
                           clock=clock, config=cfg) as engine:
        ids = [await engine.trigger("t") for _ in range(2)]
        await settle(clock)
        async with anyio.create_task_group() as tg:
            done = await _stop_in_background(engine, tg, grace=60)
            await clock.advance(10)
            with anyio.fail_after(10):
                await done.wait()
        assert not engine._stopping and (await engine.run(ids[1]))["status"] == "queued"
        await engine.serve(api=False)
        again = await engine.trigger("t")
        for _ in range(3):
            await settle(clock)
            await clock.advance(10)
        for run_id in (*ids, again):
            assert (await eventually(lambda run_id=run_id: finished(engine, run_id)))["status"] == "completed"


async def test_a_trigger_after_stop_runs_and_what_the_stop_left_queued_stays_queued(tmp_path):
    """stop() used to leave the engine stopping for good: a later trigger (not serving) was stored
    queued and never ran, and trigger(wait=True) returned it at once, still queued."""
    clock = FakeClock(T0)
    cfg = EngineConfig(max_running=1, shutdown_grace=0.05, tune_gc=False)
    async with Engine.open([task("t", [WAIT(10), RET("done")])], database=f"sqlite:///{tmp_path / 'x.db'}",
                           clock=clock, config=cfg) as engine:
        await engine.serve(api=False)
        running, waiting = await engine.trigger("t"), await engine.trigger("t")
        await settle(clock)
        async with anyio.create_task_group() as tg:
            done = await _stop_in_background(engine, tg, grace=60)
            await clock.advance(10)
            with anyio.fail_after(10):
                await done.wait()
        assert (await engine.run(waiting, trace=False))["status"] == "queued"
        async with anyio.create_task_group() as tg:
            answer = {}

            async def trigger():
                answer["run"] = await engine.trigger("t", wait=True)

            tg.start_soon(trigger)
            await eventually(lambda: engine._active or None)
            await settle(clock)
            await clock.advance(10)
        assert (answer["run"]["status"], answer["run"]["result"]) == ("completed", "done")
        # reopening started nothing behind the user's back: the run the stop left queued waits
        # for the next serve() (or start)
        assert (await engine.run(waiting, trace=False))["status"] == "queued"
        assert (await engine.run(running, trace=False))["status"] == "completed"


async def test_shutdown_now_cancels_running_runs_at_once_and_keeps_queued_ones(tmp_path):
    clock = FakeClock(T0)
    cfg = EngineConfig(max_running=1, shutdown_grace=0.05, tune_gc=False)
    async with Engine.open([task("t", [WAIT(1000)])], database=f"sqlite:///{tmp_path / 'x.db'}",
                           clock=clock, config=cfg) as engine:
        running, waiting = await engine.trigger("t"), await engine.trigger("t")
        await settle(clock)
        async with anyio.create_task_group() as tg:
            done = await _stop_in_background(engine, tg, grace=600)
            engine._shutdown_now()  # what a second SIGTERM does
            with anyio.fail_after(10):
                await done.wait()
        run = await engine.run(running, trace=False)
        assert run["status"] == "cancelled" and "stopped" in run["error"]["message"]
        assert (await engine.run(waiting, trace=False))["status"] == "queued"


async def test_a_trigger_while_stopping_is_stored_queued_and_not_started(tmp_path):
    clock = FakeClock(T0)
    cfg = EngineConfig(shutdown_grace=0.05, tune_gc=False)
    async with Engine.open([task("t", [WAIT(1000)])], database=f"sqlite:///{tmp_path / 'x.db'}",
                           clock=clock, config=cfg) as engine:
        busy = await engine.trigger("t")
        await settle(clock)
        async with anyio.create_task_group() as tg:
            done = await _stop_in_background(engine, tg, grace=600)
            late = await engine.trigger("t")
            await eventually(lambda: late not in engine._active)
            assert (await engine.run(late, trace=False))["status"] == "queued"
            engine._shutdown_now()
            with anyio.fail_after(10):
                await done.wait()
        assert (await engine.run(busy, trace=False))["status"] == "cancelled"
        assert (await engine.run(late, trace=False))["status"] == "queued"


async def test_a_closed_gate_lets_its_waiters_go_and_hands_out_no_slot():
    gate = FairGate(1)
    assert gate.try_acquire()
    outcomes = []

    async def wait(task):
        try:
            await gate.acquire(task)
            outcomes.append((task, "slot"))
        except GateClosed:
            outcomes.append((task, "closed"))

    async with anyio.create_task_group() as tg:
        for name in ("a", "b"):
            tg.start_soon(wait, name)
        await anyio.sleep(0.01)
        assert gate.queued == 2
        gate.close()
        gate.release()  # frees the slot: handed to nobody
    assert sorted(outcomes) == [("a", "closed"), ("b", "closed")]
    assert gate.holders == 0 and gate.queued == 0 and not gate.try_acquire()
    with pytest.raises(GateClosed):
        await gate.acquire("c")
    gate.open()
    assert gate.try_acquire() and gate.holders == 1


async def test_a_waiter_let_go_and_cancelled_at_once_gives_back_no_slot():
    gate = FairGate(1)
    assert gate.try_acquire()

    async def wait():
        try:
            await gate.acquire("a")
        except GateClosed:
            pass

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait)
        await anyio.sleep(0.01)
        gate.close()
        tg.cancel_scope.cancel()  # cancelled as it is let go
    assert gate.holders == 1  # the holder's slot is untouched, whichever came first
    gate.release()
    assert gate.holders == 0


async def test_a_waiting_api_request_is_answered_with_the_run_the_shutdown_cancelled(tmp_path):
    """stop() closes the API's socket at once but lets a trigger?wait=true request finish with
    the runs' grace: it gets the cancelled run. (The API used to be stopped first, with its own
    5 s grace, after which the request was cut off without an answer.)"""
    import aiohttp

    config = EngineConfig(shutdown_grace=0.1, tune_gc=False)
    defs = [task("slow", [{"function": "wait", "duration": 1000}])]
    async with Engine.open(defs, database=f"sqlite:///{tmp_path}/e.db", config=config) as engine:
        await engine.serve(host="127.0.0.1", port=0)
        async with aiohttp.ClientSession() as http:
            answer = {}

            async def wait_for_run():
                async with http.post(f"{engine.api_url}/api/tasks/slow/trigger?wait=true") as resp:
                    answer["status"], answer["body"] = resp.status, await resp.json()

            async with anyio.create_task_group() as tg:
                tg.start_soon(wait_for_run)
                await eventually(lambda: engine.runs_total or engine._active)
                await engine.stop()
    assert answer["status"] == 200 and answer["body"]["status"] == "cancelled", answer
