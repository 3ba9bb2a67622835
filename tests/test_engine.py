"""The engine end to end with virtual time: fires, overlap, retries, timeouts, misfires."""

import datetime
import os
import time

import anyio
import msgspec
import pytest

from engine import CompileError, Engine, FakeClock, RunFailed, UnknownTask
from engine._store import StoreLocked
from tests.support import eventually

pytestmark = pytest.mark.anyio

T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC


async def settle(clock, engine):
    """Let every run that can make progress at the current virtual time do so."""
    for _ in range(3):
        await clock.run_until_idle()
        await anyio.sleep(0.003)


async def advance(clock, engine, seconds, step=1.0):
    t = 0.0
    while t < seconds:
        d = min(step, seconds - t)
        await clock.advance(d)
        await settle(clock, engine)
        t += d


@pytest.fixture(autouse=True)
def quick_shutdown(monkeypatch):
    """Runs still waiting on a virtual clock at the end of a test are cancelled at once."""
    from engine import EngineConfig

    monkeypatch.setattr("engine._engine.load_config", lambda _dir: EngineConfig(shutdown_grace=0.05))


def task(name, stack, **settings):
    return {"name": name, "stack": stack, **settings}


WAIT = lambda s: {"function": "wait", "duration": s}  # noqa: E731
RET = lambda v: {"function": "return", "value": v}  # noqa: E731
FAIL = {"function": "throw_error", "message": "nope", "type": "Boom"}


async def by_status(engine, name):
    return sorted((r["trigger"], r["status"], r["attempt"]) for r in await engine.runs(name))


async def test_trigger_wait_returns_the_run_and_unknown_task_is_lookup_error():
    async with Engine.open([task("alpha", [RET("{{ 6 * 7 }}")])]) as engine:
        run = await engine.trigger("alpha", wait=True)
        assert run["status"] == "completed" and run["result"] == 42 and run["trigger"] == "manual"
        assert run["duration"] is not None and run["attempt"] == 1
        with pytest.raises(UnknownTask, match="did you mean 'alpha'"):
            await engine.trigger("alpah")
        assert (await engine.run(run["id"]))["trace"][0]["kind"] == "return"


async def test_run_stack_results_and_errors():
    async with Engine.open([]) as engine:
        assert await engine.run_stack([RET("{{ x + 1 }}")], {"x": 1}) == 2
        with pytest.raises(CompileError, match="unknown step kind"):
            await engine.run_stack([{"function": "nope"}])
        with pytest.raises(RunFailed) as info:
            await engine.run_stack([FAIL])
        assert info.value.error["type"] == "Boom"
        with pytest.raises(CompileError, match="not defined"):
            await engine.run_stack([{"function": "custom_function", "name": "missing"}])


async def test_schedule_fires_on_time_in_virtual_time():
    clock = FakeClock(T0)
    async with Engine.open([task("tick", [RET(1)], schedule="* * * * *")], clock=clock) as engine:
        await engine.serve(api=False)
        await settle(clock, engine)
        await advance(clock, engine, 130, step=10)
        runs = await eventually(lambda: engine.runs("tick"))
        fires = sorted(r["scheduled_at"] for r in runs)
        assert fires == [1_700_000_040.0, 1_700_000_100.0]
        assert {r["trigger"] for r in runs} == {"schedule"} and {r["status"] for r in runs} == {"completed"}


@pytest.mark.parametrize(
    ("overlap", "expected"),
    [
        ("skip", [("schedule", "completed", 1), ("schedule", "running", 1), ("schedule", "skipped", 1)]),
        ("queue", [("schedule", "completed", 1), ("schedule", "running", 1)]),  # the third fire is not due yet
        ("allow", [("schedule", "completed", 1), ("schedule", "running", 1), ("schedule", "running", 1)]),
        ("cancel_previous", [("schedule", "cancelled", 1), ("schedule", "cancelled", 1), ("schedule", "running", 1)]),
    ],
)
async def test_overlap_policies(overlap, expected):
    clock = FakeClock(T0 - 20)  # fires at T0+40, +100, +160; each run waits 90 s
    defs = [task("slow", [WAIT(90)], schedule="* * * * *", overlap=overlap, max_concurrency=3)]
    async with Engine.open(defs, clock=clock) as engine:
        await engine.serve(api=False)
        await settle(clock, engine)
        if overlap == "queue":  # the fire at +100 waits and starts when the first run ends at +130
            await advance(clock, engine, 60 + 60 + 35, step=5)
            runs = sorted(await engine.runs("slow"), key=lambda r: r["scheduled_at"])
            assert runs[1]["scheduled_at"] == T0 + 100 and runs[1]["started_at"] == T0 + 130
        else:
            await advance(clock, engine, 60 + 60 + 60 + 5, step=5)  # just past the third fire
        assert await by_status(engine, "slow") == expected


async def test_a_wave_of_fires_is_claimed_in_one_write_with_every_overlap_policy():
    """Tasks due at the same instant: one claim write per wave; each policy as when it fires alone."""
    clock = FakeClock(T0 - 20)  # fires at T0+40, +100, +160; each slow run waits 90 s
    policies = ("skip", "queue", "allow", "cancel_previous")
    defs = [task(f"slow_{p}", [WAIT(90)], schedule="* * * * *", overlap=p, max_concurrency=3) for p in policies]
    defs += [task("quick", [RET(1)], schedule="* * * * *"), task("paused", [RET(1)], schedule="* * * * *")]
    async with Engine.open(defs, clock=clock) as engine:
        waves = []
        claim_fires = engine.store.claim_fires

        async def spy(rows):
            waves.append(sorted(r["task"] for r in rows))
            return await claim_fires(rows)

        engine.store.claim_fires = spy
        await engine.pause("paused")
        await engine.serve(api=False)
        await settle(clock, engine)
        await advance(clock, engine, 60 + 60 + 60 + 5, step=5)
        expected = {
            "skip": [("schedule", "completed", 1), ("schedule", "running", 1), ("schedule", "skipped", 1)],
            # the third fire is the pending one, stored queued
            "queue": [("schedule", "completed", 1), ("schedule", "queued", 1), ("schedule", "running", 1)],
            "allow": [("schedule", "completed", 1), ("schedule", "running", 1), ("schedule", "running", 1)],
            "cancel_previous": [("schedule", "cancelled", 1), ("schedule", "cancelled", 1), ("schedule", "running", 1)],
        }
        for p in policies:
            assert await by_status(engine, f"slow_{p}") == expected[p], p
        assert await by_status(engine, "quick") == [("schedule", "completed", 1)] * 3
        assert await engine.runs("paused") == []
        # the first wave holds every unpaused task; later ones leave out the paused task and
        # cancel_previous (its fire goes alone, after the running runs are cancelled)
        assert len(waves) == 3 and waves[0] == sorted(["quick"] + [f"slow_{p}" for p in policies])
        assert all("paused" not in w and "slow_cancel_previous" not in w for w in waves[1:])
        assert engine._gate.holders == len(engine._active)


async def test_a_wave_the_database_refuses_is_tried_fire_by_fire():
    from engine._store import StoreError

    clock = FakeClock(T0)
    defs = [task(f"t{i}", [RET(i)], schedule="* * * * * *") for i in range(3)]
    async with Engine.open(defs, clock=clock) as engine:
        calls = []

        async def refuse(rows):
            calls.append(len(rows))
            raise StoreError("database or disk is full")

        engine.store.claim_fires = refuse
        await engine.serve(api=False)
        await settle(clock, engine)
        await advance(clock, engine, 1)
        assert calls == [3] and engine._gate.holders == 0
        for i in range(3):
            runs = await eventually(lambda i=i: engine.runs(f"t{i}"))
            assert [(r["status"], r["result"]) for r in runs] == [("completed", i)]


async def test_retries_with_backoff_are_stored_rows():
    clock = FakeClock(T0)
    defs = [task("flaky", [FAIL], retry_policy={"max_retries": 2, "retry_delay": 10, "backoff": 2})]
    async with Engine.open(defs, clock=clock) as engine:
        await engine.serve(api=False)
        await engine.trigger("flaky", wait=True)
        await advance(clock, engine, 40, step=1)
        runs = sorted(await engine.runs("flaky"), key=lambda r: r["attempt"])
        assert [(r["trigger"], r["status"], r["attempt"]) for r in runs] == [
            ("manual", "failed", 1), ("retry", "failed", 2), ("retry", "failed", 3)]
        assert runs[1]["started_at"] - runs[0]["finished_at"] == pytest.approx(10, abs=1)
        assert runs[2]["started_at"] - runs[1]["finished_at"] == pytest.approx(20, abs=1)
        assert runs[1]["parent_id"] == runs[0]["id"]


async def test_timeout_of_a_wait_in_virtual_time():
    clock = FakeClock(T0)
    async with Engine.open([task("w", [WAIT(100)], timeout=5)], clock=clock) as engine:
        run_id = await engine.trigger("w")
        await settle(clock, engine)
        await advance(clock, engine, 6)
        run = await eventually(lambda: _finished(engine, run_id))
        assert run["status"] == "timed_out" and run["error"]["type"] == "Timeout"
        assert run["finished_at"] - run["started_at"] == pytest.approx(5, abs=1)


async def _finished(engine, run_id):
    run = await engine.run(run_id, trace=False)
    return run if run and run["status"] not in ("queued", "running") else None


async def test_timeout_of_a_compute_loop_with_the_real_clock():
    stack = [{"function": "create_variable", "name": "i", "value": 0},
             {"function": "loop", "condition": "true", "operations": [
                 {"function": "update_variable", "name": "i", "operation": "increment"}]}]
    async with Engine.open([task("spin", stack, timeout=0.2)]) as engine:
        run = await engine.trigger("spin", wait=True)
        assert run["status"] == "timed_out"


def test_timeout_slices_are_one_percent_of_the_limit_between_1_and_16_ms():
    from engine._runs import timeout_slice_ms

    assert [timeout_slice_ms(s) for s in (0, 0.01, 0.1, 0.3, 1.0, 1.59, 1.6, 30, 1e306)] == [
        1, 1, 1, 3, 10, 15, 16, 16, 16]


async def test_real_clock_timeouts_share_a_timer_per_slice_and_are_never_early():
    """Runs started together share one loop timer: it times out the ones still running, not
    before their limit, and leaves the loop's heap when its last run ends."""
    import asyncio
    import time

    defs = [task("slow", [WAIT(5)], timeout=0.3), task("fast", [WAIT(0.05)], timeout=0.3)]
    async with Engine.open(defs) as engine:
        t0 = time.monotonic()
        ids = await asyncio.gather(*(engine.trigger(n) for n in ["slow", "fast"] * 20))
        assert 1 <= len(engine._timeouts) <= 40
        assert sum(len(g.runs) for g in engine._timeouts.values()) == 40
        assert all(key % 3 == 0 for key in engine._timeouts)  # 0.3 s: 3 ms slices
        with anyio.fail_after(5):
            for run_id in ids:
                active = engine._active.get(run_id)
                if active is not None:
                    await active.done().wait()
        elapsed = time.monotonic() - t0
        by_task = {}
        for run_id in ids:
            run = await engine.run(run_id, trace=False)
            by_task.setdefault(run["task"], set()).add(run["status"])
            if run["status"] == "timed_out":
                assert run["finished_at"] - run["started_at"] >= 0.3
        assert by_task == {"slow": {"timed_out"}, "fast": {"completed"}}
        assert elapsed >= 0.3 and engine._timeouts == {}
        assert not any(h for h in asyncio.get_running_loop()._scheduled if not h.cancelled()
                       and getattr(h._callback, "__self__", None).__class__.__name__ == "_TimeoutGroup")


async def test_cancel_and_shutdown_record_cancelled_runs():
    clock = FakeClock(T0)
    async with Engine.open([task("w", [WAIT(1000)])], clock=clock) as engine:
        a = await engine.trigger("w")
        b = await engine.trigger("w")
        await settle(clock, engine)
        assert await engine.cancel(a) is True
        cancelled = await engine.run(a)
        assert cancelled["status"] == "cancelled" and cancelled["error"]["message"].startswith("cancelled on request")
        assert await engine.cancel(a) is False
        await engine.stop(grace=0.05)
        run = await engine.run(b)
        assert run["status"] == "cancelled" and "stopped" in run["error"]["message"]


async def test_a_run_cancelled_before_its_task_starts_still_records_its_outcome():
    """Cancel and stop right after trigger (the run's task has not taken a step): never a hang."""
    clock = FakeClock(T0)
    async with Engine.open([task("w", [WAIT(1000)])], clock=clock) as engine:
        a = await engine.trigger("w")
        with anyio.fail_after(5):
            assert await engine.cancel(a) is True
        run = await engine.run(a)
        assert run["status"] == "cancelled" and run["finished_at"] is not None
        b = await engine.trigger("w")
        with anyio.fail_after(5):
            await engine.stop(grace=0)
        assert (await engine.run(b))["status"] == "cancelled"
        assert engine._gate.holders == 0 and not engine._active and not engine._tasks


async def test_finished_runs_store_outcome_and_trace_in_one_write():
    stack = [{"function": "create_variable", "name": "x", "value": 2}, RET("{{ x * 21 }}")]
    async with Engine.open([task("t", stack)]) as engine:
        writes = []
        finish_run = engine.store.finish_run

        async def spy(run_id, fields, trace=None):
            writes.append((run_id, fields["status"], len(msgspec.json.decode(trace)) if trace else 0))
            await finish_run(run_id, fields, trace)

        engine.store.finish_run = spy
        run = await engine.run((await engine.trigger("t", wait=True))["id"])
        assert run["result"] == 42 and [e["kind"] for e in run["trace"]] == ["create_variable", "return"]
        assert writes == [(run["id"], "completed", 2)]


async def test_paused_task_does_not_fire_until_resumed():
    clock = FakeClock(T0 - 20)
    async with Engine.open([task("p", [RET(1)], schedule="* * * * *")], clock=clock) as engine:
        await engine.pause("p")
        await engine.serve(api=False)
        await advance(clock, engine, 70, step=10)
        assert await engine.runs("p") == []
        assert (await engine.tasks())[0]["status"] == "paused"
        await engine.resume("p")
        await advance(clock, engine, 60, step=10)
        assert len(await engine.runs("p")) == 1


async def test_inactive_and_requires_env_tasks_never_fire():
    clock = FakeClock(T0 - 20)
    defs = [task("off", [RET(1)], schedule="* * * * *", active=False),
            task("needs", [RET(1)], schedule="* * * * *", requires_env=["HOOK_URL_FOR_TEST"])]
    async with Engine.open(defs, clock=clock, env={}) as engine:
        await engine.serve(api=False)
        await advance(clock, engine, 70, step=10)
        assert await engine.runs() == []
        info = {t["name"]: t for t in await engine.tasks()}
        assert info["needs"]["status"] == "inactive" and info["needs"]["missing_env"] == ["HOOK_URL_FOR_TEST"]


@pytest.mark.parametrize(("policy", "expected"), [("run_once", 1), ("run_all", 6), ("skip", 0)])
async def test_misfires_after_downtime(tmp_path, policy, expected):
    db = f"sqlite:///{tmp_path / 'm.db'}"
    defs = [task("m", [RET(1)], schedule="*/10 * * * *", misfire=policy, misfire_grace=3600)]
    clock = FakeClock(T0)
    async with Engine.open(defs, database=db, clock=clock) as engine:
        await engine.serve(api=False)
        await settle(clock, engine)
    # down from 22:13:20 to 23:43:20: nine fires missed (22:20 ... 23:40), six within the hour of grace
    later = FakeClock(T0 + 5400)
    async with Engine.open(defs, database=db, clock=later) as engine:
        await engine.serve(api=False)
        await settle(later, engine)
        runs = await eventually(lambda: _all_done(engine, "m", expected)) if expected else await engine.runs("m")
        assert [r["trigger"] for r in runs] == ["catchup"] * expected
        if policy == "run_once":
            assert runs[0]["scheduled_at"] == 1_700_005_200.0  # 23:40, the latest missed fire


async def _all_done(engine, name, n):
    runs = await engine.runs(name)
    if len(runs) == n and all(r["status"] == "completed" for r in runs):
        return runs
    return None


async def test_misfire_grace_drops_old_fires(tmp_path):
    db = f"sqlite:///{tmp_path / 'g.db'}"
    defs = [task("m", [RET(1)], schedule="*/10 * * * *", misfire="run_all", misfire_grace=1500)]
    async with Engine.open(defs, database=db, clock=FakeClock(T0)) as engine:
        await engine.serve(api=False)
    later = FakeClock(T0 + 5400)
    async with Engine.open(defs, database=db, clock=later) as engine:
        await engine.serve(api=False)
        runs = await eventually(lambda: _all_done(engine, "m", 3))
        # 25 minutes of grace before 23:43:20 keeps 23:20, 23:30 and 23:40
        assert sorted(r["scheduled_at"] for r in runs) == [1_700_004_000.0, 1_700_004_600.0, 1_700_005_200.0]


async def test_crashed_runs_are_marked_and_retried(tmp_path):
    db = f"sqlite:///{tmp_path / 'c.db'}"
    defs = [task("c", [RET(1)], retry_policy={"max_retries": 1, "retry_delay": 0})]
    async with Engine.open(defs, database=db) as engine:
        await engine.store.insert_run({"id": "dead1", "task": "c", "kind": "task", "trigger": "manual",
                                       "status": "running", "attempt": 1, "started_at": 1.0,
                                       "engine_id": "someone-else"})
    async with Engine.open(defs, database=db) as engine:
        assert (await engine.run("dead1"))["status"] == "crashed"
        await engine.serve(api=False)
        runs = await eventually(lambda: _retry_done(engine))
        assert runs["trigger"] == "retry" and runs["attempt"] == 2 and runs["parent_id"] == "dead1"


async def _retry_done(engine):
    for r in await engine.runs("c"):
        if r["trigger"] == "retry" and r["status"] == "completed":
            return r
    return None


async def test_second_engine_on_same_database_is_refused(tmp_path):
    db = f"sqlite:///{tmp_path / 'x.db'}"
    async with Engine.open([], database=db):
        with pytest.raises(StoreLocked, match="another cronstack engine"):
            async with Engine.open([], database=db):
                pass


async def test_async_function_call_is_a_durable_run():
    defs = [task("parent", [{"function": "custom_function", "name": "child", "inputs": {"x": 2},
                             "execution_mode": "async", "return_as": "rid"}, RET("{{ rid }}")]),
            {"name": "child", "inputs": {"x": 0}, "stack": [RET("{{ inputs.x * 10 }}")]}]
    async with Engine.open(defs) as engine:
        parent = await engine.trigger("parent", wait=True)
        child = await eventually(lambda: _finished(engine, parent["result"]))
        assert child["kind"] == "function" and child["trigger"] == "async_call"
        assert child["parent_id"] == parent["id"] and child["result"] == 20


async def test_endless_recursion_is_refused_at_the_depth_limit():
    rec = {"name": "rec", "inputs": {"n": 0},
           "stack": [{"function": "custom_function", "name": "rec", "inputs": {"n": "{{ inputs.n + 1 }}"}}]}
    async with Engine.open([task("t", [{"function": "custom_function", "name": "rec"}]), rec]) as engine:
        run = await engine.trigger("t", wait=True)
    assert run["status"] == "failed" and run["error"]["type"] == "LimitExceeded"
    assert "nested deeper than" in run["error"]["message"]
    # one "stack[0]" per call level; the refused call itself adds no "None"
    assert run["error"]["step"].split(" > ") == ["stack[0]"] * 65


async def test_pruning_also_removes_old_runs_of_functions_and_of_removed_tasks(tmp_path):
    db = f"sqlite:///{tmp_path / 'prune.db'}"
    child = {"name": "child", "inputs": {"x": 0}, "stack": [RET("{{ inputs.x }}")]}
    parent = task("parent", [{"function": "custom_function", "name": "child", "inputs": {"x": 1},
                              "execution_mode": "async", "return_as": "rid"}, RET("{{ rid }}")],
                  request_history={"retention_days": 1})
    async with Engine.open([parent, child, task("gone", [RET(1)])], clock=FakeClock(T0), database=db) as engine:
        run = await engine.trigger("parent", wait=True)
        await engine.trigger("gone", wait=True)
        await eventually(lambda: _finished(engine, run["result"]))
    # "gone" is no longer defined; the function's run and the removed task's are kept
    # as long as the longest-kept task's history (here 1 day), then pruned with it
    for days, left in ((0.5, 3), (2, 0)):
        clock = FakeClock(T0 + days * 86400)
        async with Engine.open([parent, child], clock=clock, database=db) as engine:
            await engine.serve(api=False)
            await settle(clock, engine)
            assert await eventually(lambda n=left: _count_is(engine, n)), days


async def _count_is(engine, n):
    return await engine.store.count_runs() == n


async def test_registered_python_functions_sync_and_async():
    async def add(inputs):
        return inputs["a"] + inputs["b"]

    def boom(inputs):
        raise ValueError("bad input")

    defs = [task("t", [{"function": "custom_function", "name": "add", "inputs": {"a": 1, "b": 2}, "return_as": "s"},
                       {"function": "try_catch", "try_block": [{"function": "custom_function", "name": "boom"}],
                        "catch_block": [{"function": "update_variable", "name": "s", "value": "{{ s }}:{{ error.type }}"}]},
                       RET("{{ s }}")])]
    async with Engine.open(defs) as engine:
        engine.register_function("add", add)
        engine.register_function("boom", boom)
        run = await engine.trigger("t", wait=True)
        assert run["result"] == "3:FunctionError"


@pytest.mark.parametrize(("returned", "where"), [
    ({"score": float("nan")}, "nan (NaN and infinities are not JSON numbers) at result.score"),
    ([1, {"x": float("inf")}], "inf (NaN and infinities are not JSON numbers) at result[1].x"),
    ({"when": datetime.datetime(2024, 1, 2)}, "a datetime at result.when"),
    ({"raw": b"ab"}, "a bytes at result.raw"),
    ({1: "one"}, "a key 1 that is not text at result"),
])
@pytest.mark.parametrize("is_async", [False, True], ids=["def", "async def"])
async def test_a_python_function_must_return_json_data(returned, where, is_async):
    stack = [{"function": "custom_function", "name": "f", "return_as": "r"},
             {"function": "add_record", "table": "m", "data": {"v": "{{ r }}"}}]

    async def coroutine_function(inputs):
        return returned

    async with Engine.open([task("t", stack)]) as engine:
        engine.register_function("f", coroutine_function if is_async else (lambda inputs: returned))
        run = await engine.trigger("t", wait=True)
        assert run["status"] == "failed" and run["error"]["type"] == "FunctionError", run
        assert where in run["error"]["message"] and "JSON cannot hold" in run["error"]["message"]
        assert await engine.store.count("m") == 0


async def test_a_python_functions_result_is_a_plain_json_copy():
    import enum

    class Colour(enum.StrEnum):
        RED = "red"

    kept = {"items": (1, 2), "colour": Colour.RED, "n": True}
    stack = [{"function": "custom_function", "name": "f", "return_as": "r"},
             {"function": "update_variable", "name": "r", "operation": "merge", "value": {"n": False}},
             # inside the run the values are plain JSON: a list that + extends, a text
             RET({"r": "{{ r }}", "more": "{{ r['items'] + [3] }}", "upper": "{{ r.colour|upper }}"})]
    async def coroutine_function(inputs):
        return kept

    async with Engine.open([task("t", stack)]) as engine:
        for fn in (lambda inputs: kept, coroutine_function):
            engine.register_function("f", fn)
            run = await engine.trigger("t", wait=True)
            assert run["status"] == "completed", run["error"]
            assert run["result"] == {"r": {"items": [1, 2], "colour": "red", "n": False}, "more": [1, 2, 3],
                                     "upper": "RED"}
            assert kept == {"items": (1, 2), "colour": Colour.RED, "n": True}  # the function's own object untouched


async def test_serve_refuses_unresolved_function_calls():
    async with Engine.open([task("t", [{"function": "custom_function", "name": "later"}])]) as engine:
        with pytest.raises(CompileError, match="later"):
            await engine.serve(api=False)


async def test_history_redacts_env_and_can_be_disabled():
    stack = [{"function": "create_variable", "name": "k", "value": "key={{ env.SECRET_KEY_X }}"}, RET("{{ k }}")]
    defs = [task("on", stack), task("off", stack, request_history={"enabled": False})]
    async with Engine.open(defs, env={"SECRET_KEY_X": "hunter2hunter2"}) as engine:
        on = await engine.run((await engine.trigger("on", wait=True))["id"])
        assert on["result"] == "key=hunter2hunter2"  # the run's own result is the user's data
        assert "hunter2" not in str(on["trace"]) and "***" in str(on["trace"])
        off = await engine.run((await engine.trigger("off", wait=True))["id"])
        assert off["trace"] == []


async def test_a_runs_error_is_redacted_with_history_on_and_off():
    stack = [{"function": "throw_error", "message": "key={{ env.SECRET_KEY_X }}"}]
    defs = [task("on", stack), task("off", stack, request_history={"enabled": False})]
    async with Engine.open(defs, env={"SECRET_KEY_X": "hunter2hunter2"}) as engine:
        for name in ("on", "off"):
            run = await engine.trigger(name, wait=True)
            assert run["status"] == "failed" and run["error"]["message"] == "key=***", name


async def test_fair_admission_under_a_global_limit():
    from engine import EngineConfig

    clock = FakeClock(T0)
    cfg = EngineConfig(max_running=2, shutdown_grace=0.05)
    defs = [task("busy", [WAIT(10)]), task("other", [RET(1)])]
    async with Engine.open(defs, clock=clock, config=cfg) as engine:
        for _ in range(6):
            await engine.trigger("busy")
        other = await engine.trigger("other")
        await settle(clock, engine)
        assert engine.stats()["running"] == 7 and engine.stats()["queued"] >= 5
        await advance(clock, engine, 10)
        # after the first two busy runs finish, 'other' gets the next slot before the busy backlog
        assert (await engine.run(other))["status"] == "completed"
        statuses = [r["status"] for r in await engine.runs("busy")]
        assert statuses.count("completed") == 2


async def test_reload_switches_definitions_and_keeps_history(tmp_path):
    import json

    (tmp_path / "a.json").write_text(json.dumps(task("a", [RET("a")], schedule="* * * * *")))
    clock = FakeClock(T0 - 20)  # 22:13:00; fires at 22:14:00, 22:15:00...
    async with Engine.open(tmp_path, database=f"sqlite:///{tmp_path / 'r.db'}", clock=clock) as engine:
        await engine.serve(api=False)
        await advance(clock, engine, 70, step=10)
        assert len(await engine.runs("a")) == 1
        # a broken edit is refused and changes nothing
        (tmp_path / "b.json").write_text('{"name": "b", "stack": [{"function": "nope"}]}')
        with pytest.raises(CompileError, match="unknown step kind"):
            await engine.reload()
        assert engine.task_names() == ["a"]
        # a good edit: 'a' goes away, 'b' arrives with its own schedule
        (tmp_path / "a.json").unlink()
        (tmp_path / "b.json").write_text(json.dumps(task("b", [RET("b")], schedule="*/2 * * * *")))
        assert await engine.reload() == {"tasks": 1, "functions": 0}
        await settle(clock, engine)
        await advance(clock, engine, 130, step=10)
        assert [r["result"] for r in await engine.runs("b")] == ["b"]  # 22:16 only
        assert len(await engine.store.list_runs("a")) == 1  # history of 'a' is kept
        with pytest.raises(UnknownTask):
            await engine.trigger("a")


async def test_crashed_attempt_left_without_retry_gets_one_at_the_next_start(tmp_path):
    """An engine that died after marking a run crashed but before storing its retry loses nothing."""
    db = f"sqlite:///{tmp_path / 'c2.db'}"
    defs = [task("c", [RET(1)], retry_policy={"max_retries": 2, "retry_delay": 0})]
    async with Engine.open(defs, database=db) as engine:
        await engine.store.insert_run({"id": "lost1", "task": "c", "kind": "task", "trigger": "manual",
                                       "status": "crashed", "attempt": 1, "started_at": 1.0, "engine_id": "x"})
        await engine.store.insert_run({"id": "spent", "task": "c", "kind": "task", "trigger": "retry",
                                       "status": "crashed", "attempt": 3, "started_at": 1.0, "engine_id": "x"})
    async with Engine.open(defs, database=db) as engine:
        retries = [r for r in await engine.runs("c") if r["trigger"] == "retry" and r["status"] == "queued"]
        assert [(r["parent_id"], r["attempt"]) for r in retries] == [("lost1", 2)]
    async with Engine.open(defs, database=db) as engine:  # and only once
        retries = [r for r in await engine.runs("c") if r["parent_id"] == "lost1"]
        assert len(retries) == 1


async def test_a_timeout_beyond_any_timer_runs_and_stops_cleanly():
    # the real clock arms a loop timer per millisecond of deadlines; 1e306 s once overflowed it
    # outside the attempt, which left the run `running`, its slot taken and stop() hanging
    with anyio.fail_after(10):
        async with Engine.open([task("forever", [RET(1)], timeout=1e306)]) as engine:
            run = await engine.trigger("forever", wait=True)
            assert run["status"] == "completed" and run["result"] == 1


async def test_a_defect_around_the_attempt_still_records_the_outcome(monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("broken context")

    with anyio.fail_after(10):
        async with Engine.open([task("alpha", [RET(1)])]) as engine:
            monkeypatch.setattr("engine._runs.RunContext", broken)
            run = await engine.trigger("alpha", wait=True)
            assert run["status"] == "failed"
            assert run["error"]["type"] == "InternalError" and "broken context" in run["error"]["message"]
    assert "internal error in the engine: RuntimeError" in caplog.text


def test_run_ids_do_not_repeat_after_a_user_seeds_random():
    import random

    from engine._runs import new_run_id

    random.seed(42)
    first = new_run_id(T0)
    random.seed(42)
    assert new_run_id(T0) != first


async def test_a_runs_trace_has_its_log_step_and_its_logs_have_the_line_once():
    stack = [{"function": "log", "message": "hello"}, RET(1)]
    async with Engine.open([task("t", stack)]) as engine:
        done = await engine.trigger("t", wait=True)
        run = await engine.run(done["id"])
    assert [(e["path"], e["kind"]) for e in run["trace"]] == [("stack[0]", "log"), ("stack[1]", "return")]
    assert [(e["path"], e["level"], e["output"]) for e in run["logs"]] == [("stack[0]", "info", "hello")]


def test_run_ids_of_one_millisecond_never_repeat_and_keep_their_order():
    from engine._runs import new_run_id

    now = time.time() + 1  # later than any id made so far in this process
    ids = [new_run_id(now) for _ in range(200_000)]  # a stopped virtual clock: one millisecond
    assert len(set(ids)) == len(ids) and ids == sorted(ids)
    assert ids[0].startswith(f"{int(now * 1000):012x}")
    assert new_run_id(T0) > ids[-1]  # a clock stepped back still gives a new, later id


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_does_not_make_its_parents_run_ids():
    from engine._runs import new_run_id

    now = time.time() + 2
    [new_run_id(now) for _ in range(1000)]  # the parent counts up within one millisecond
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its ids through the pipe, then out without pytest's teardown
        os.close(read)
        os.write(write, " ".join(new_run_id(now) for _ in range(100)).encode())
        os._exit(0)
    os.close(write)
    mine = {new_run_id(now) for _ in range(100)}
    with os.fdopen(read, "rb") as pipe:
        child = set(pipe.read().decode().split())
    os.waitpid(pid, 0)
    assert len(child) == 100 and not mine & child


async def test_native_code_follows_the_stack_as_loaded_not_later_edits():
    stack = [RET(2)]
    async with Engine.open([task("alpha", stack, request_history={"enabled": False})]) as engine:
        stack[0] = RET(7)  # the caller's dict changes after loading, before the first run
        run = await engine.trigger("alpha", wait=True)
        assert run["result"] == 2


async def test_warm_up_compiles_the_variant_each_task_will_run():
    """Before their first fire, a task with request history on gets its traced native code and
    one without it the plain one; neither pays for the variant it never runs."""
    clock = FakeClock(T0)
    defs = [task("traced", [RET(1)], schedule="* * * * *", request_history={"enabled": True}),
            task("plain", [RET(2)], schedule="* * * * *", request_history={"enabled": False})]
    async with Engine.open(defs, clock=clock) as engine:
        await engine.serve(api=False)
        await settle(clock, engine)
        traced = engine.definitions.tasks["traced"].program.native
        plain = engine.definitions.tasks["plain"].program.native
        assert traced.traced_fn is not None and traced.fn is None
        assert plain.fn is not None and plain.traced_fn is None


@pytest.mark.parametrize("history", [True, False])
async def test_an_outcome_holding_a_lone_surrogate_is_still_recorded(history):
    """UTF-8 cannot hold a lone surrogate, which an expression can build: the run's outcome is
    stored anyway (the surrogate written out as text), never left 'running'."""
    bad = "{{ 'x\ud800y' }}"
    defs = [task("throws", [{"function": "throw_error", "message": bad, "type": "Boom"}],
                 request_history={"enabled": history}),
            task("returns", [RET({"text": bad})], request_history={"enabled": history})]
    async with Engine.open(defs, env={"API_KEY": "sk-live-0123456789"}) as engine:
        failed = await engine.trigger("throws", wait=True)
        done = await engine.trigger("returns", wait=True)
    assert failed["status"] == "failed"
    assert failed["error"]["type"] == "Boom" and failed["error"]["message"] == "x\\ud800y"
    assert done["status"] == "completed" and done["result"] == {"text": "x\\ud800y"}
