"""Stored queued runs against the rest of the engine: one execution per row, cancel against
claim, overlap and pause for retries, pending fires of ``overlap: queue`` stored, config counts."""

import asyncio

import anyio
import pytest

from compiler import CompileError
from engine import Engine, EngineConfig, FakeClock
from engine._config import load_config
from tests.support import eventually
from tests.test_engine import T0, WAIT, advance, quick_shutdown, settle, task  # noqa: F401

pytestmark = pytest.mark.anyio

WORK = {"function": "custom_function", "name": "work", "inputs": {"run": "{{ task.run_id }}"}}


class Work:
    """A registered function that records each call and its concurrency, and blocks until released."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.finished: list[str] = []
        self.now = self.most = 0
        self.release = asyncio.Event()

    async def __call__(self, inputs):
        self.calls.append(inputs["run"])
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            await self.release.wait()
        finally:
            self.now -= 1
        self.finished.append(inputs["run"])
        return "done"


async def status(engine, run_id):
    return (await engine.run(run_id, trace=False))["status"]


def due(engine, run_id, when):
    """Have the serving engine's queue loop start stored queued run ``run_id`` at ``when``."""
    engine._queued_due[run_id] = when
    engine._queue_wake.set()


def queued_retry(engine, name):
    """A stored retry of ``name``'s first attempt, as ``_maybe_retry`` makes it (not yet due)."""
    return engine._row(name, "task", "retry", scheduled_at=engine.clock.time(), attempt=2)


# -- 1: a run waiting for a slot when serve() starts runs once -------------------------------------
async def test_a_run_waiting_for_a_slot_when_serving_starts_runs_once(tmp_path):
    work = Work()
    cfg = EngineConfig(max_running=1, tune_gc=False, shutdown_grace=0.05)
    async with Engine.open([task("t", [WORK])], database=f"sqlite:///{tmp_path}/x.db", config=cfg) as engine:
        engine.register_function("work", work)
        a = await engine.trigger("t")
        b = await engine.trigger("t")  # waits for the only slot: stored queued, its task in memory
        await eventually(lambda: work.calls == [a])
        await engine.serve(api=False)  # loads every stored queued row: b's is already in memory
        await eventually(lambda: not engine._queued_due)  # the queue loop has looked at them
        work.release.set()
        # every copy of a run has ended: none running, every slot free
        await eventually(lambda: not engine._active and engine._gate.holders == 0)
        assert sorted(work.calls) == sorted([a, b])  # b once, not twice
        assert await status(engine, b) == "completed"


# -- 2: cancel of a stored queued run against the claim that starts it ------------------------------
async def test_cancel_losing_to_the_claim_cancels_the_started_run_instead(tmp_path):
    """The queue loop claims the row between cancel's look at it and its write: the run started
    is cancelled (never left running, never reported cancelled while it runs to completion)."""
    work = Work()
    async with Engine.open([task("t", [WORK])], database=f"sqlite:///{tmp_path}/x.db") as engine:
        engine.register_function("work", work)
        await engine.serve(api=False)
        row = queued_retry(engine, "t")
        await engine.store.insert_run(row)
        rid = row["id"]
        claimed = asyncio.Event()
        canceller: list[asyncio.Task] = []
        get_run, claim_run = engine.store.get_run, engine.store.claim_run

        async def let_the_queue_loop_claim_first():
            due(engine, rid, 0.0)
            await claimed.wait()
            await eventually(lambda: rid in work.calls)

        async def slow_get(run_id):
            out = await get_run(run_id)
            if asyncio.current_task() in canceller and run_id == rid and not claimed.is_set():
                await let_the_queue_loop_claim_first()
            return out

        async def slow_claim(run_id, *args):
            if asyncio.current_task() in canceller and run_id == rid and not claimed.is_set():
                await let_the_queue_loop_claim_first()
            ok = await claim_run(run_id, *args)
            if ok and asyncio.current_task() not in canceller:
                claimed.set()
            return ok

        engine.store.get_run, engine.store.claim_run = slow_get, slow_claim
        with anyio.fail_after(10):
            cancelling = asyncio.ensure_future(engine.cancel(rid))
            canceller.append(cancelling)
            ok = await cancelling
        engine.store.get_run, engine.store.claim_run = get_run, claim_run
        run = await eventually(lambda: engine.run(rid, trace=False))
        await eventually(lambda: not engine._active)
        run = await engine.run(rid, trace=False)
        assert (ok, run["status"], work.finished) == (True, "cancelled", [])


async def test_cancel_of_a_stored_queued_run_and_of_a_finished_one(tmp_path):
    work = Work()
    async with Engine.open([task("t", [WORK])], database=f"sqlite:///{tmp_path}/x.db") as engine:
        engine.register_function("work", work)
        await engine.serve(api=False)
        row = queued_retry(engine, "t")
        row["not_before"] = engine.clock.time() + 3600
        await engine.store.insert_run(row)
        due(engine, row["id"], row["not_before"])
        assert await engine.cancel(row["id"]) is True
        run = await engine.run(row["id"], trace=False)
        assert (run["status"], run["started_at"], run["error"]["message"]) == (
            "cancelled", None, "cancelled before it started")
        assert row["id"] not in engine._queued_due
        assert await engine.cancel(row["id"]) is False  # finished
        assert await engine.cancel("nope") is False  # unknown
        # counted as a run cancelled while it waited for a slot is
        assert engine.runs_total.get(("t", "cancelled")) == 1


# -- 3: retries meet the task's overlap policy ----------------------------------------------------
@pytest.mark.parametrize("overlap", ["skip", "queue", "cancel_previous"])
async def test_a_due_retry_waits_while_its_task_has_a_run_going(tmp_path, overlap):
    work = Work()
    defs = [task("t", [WORK], overlap=overlap)]
    async with Engine.open(defs, database=f"sqlite:///{tmp_path}/x.db") as engine:
        engine.register_function("work", work)
        await engine.serve(api=False)
        first = await engine.trigger("t")
        await eventually(lambda: work.calls == [first])
        row = queued_retry(engine, "t")
        await engine.store.insert_run(row)
        due(engine, row["id"], 0.0)
        await eventually(lambda: row["id"] in getattr(engine, "_deferred", {}).get("t", ()) or len(work.calls) > 1)
        assert work.calls == [first] and await status(engine, row["id"]) == "queued"
        assert await status(engine, first) == "running"  # not superseded by a retry
        work.release.set()
        await eventually(lambda: len(work.finished) == 2)
        assert work.most == 1
        await eventually(lambda: not engine._active)
        assert await status(engine, row["id"]) == "completed"


async def test_a_retry_under_overlap_allow_waits_for_max_concurrency(tmp_path):
    work = Work()
    defs = [task("t", [WORK], overlap="allow", max_concurrency=2)]
    async with Engine.open(defs, database=f"sqlite:///{tmp_path}/x.db") as engine:
        engine.register_function("work", work)
        await engine.serve(api=False)
        one, two = await engine.trigger("t"), await engine.trigger("t")
        await eventually(lambda: len(work.calls) == 2)
        row = queued_retry(engine, "t")
        await engine.store.insert_run(row)
        due(engine, row["id"], 0.0)
        await eventually(lambda: row["id"] in getattr(engine, "_deferred", {}).get("t", ()) or len(work.calls) > 2)
        assert work.most == 2 and len(work.calls) == 2
        work.release.set()
        await eventually(lambda: len(work.finished) == 3)
        assert work.most == 2 and {one, two, row["id"]} == set(work.calls)


async def test_a_fire_while_a_queued_run_is_being_claimed_meets_the_overlap_policy(tmp_path):
    """A stored queued run counts as running from before its claim commits: a fire meanwhile is skipped."""
    work = Work()
    defs = [task("t", [WORK], overlap="skip", schedule="* * * * *")]
    async with Engine.open(defs, database=f"sqlite:///{tmp_path}/x.db") as engine:
        engine.register_function("work", work)
        await engine.serve(api=False)
        row = queued_retry(engine, "t")
        await engine.store.insert_run(row)
        entered, go = asyncio.Event(), asyncio.Event()
        claim_run = engine.store.claim_run

        async def slow_claim(run_id, *args):
            entered.set()
            await go.wait()
            return await claim_run(run_id, *args)

        engine.store.claim_run = slow_claim
        due(engine, row["id"], 0.0)
        with anyio.fail_after(10):
            await entered.wait()
        fire_at = float(int(engine.clock.time()) - 7)
        await engine._fire_once("t", fire_at, "schedule")  # the fire comes during the claim
        go.set()
        engine.store.claim_run = claim_run
        await eventually(lambda: row["id"] in work.calls)
        runs = {r["scheduled_at"]: r for r in await engine.runs("t") if r["trigger"] == "schedule"}
        assert runs[fire_at]["status"] == "skipped"
        work.release.set()
        await eventually(lambda: not engine._active)
        assert work.most == 1


# -- 4: a stored queued async call of a registered Python function --------------------------------
async def test_a_queued_async_call_of_a_python_function_runs_after_a_restart(tmp_path):
    db = f"sqlite:///{tmp_path}/x.db"
    async with Engine.open([task("t", [])], database=db) as engine:  # the engine before the restart
        row = engine._row("notify", "function", "async_call", scheduled_at=engine.clock.time(),
                          attempt=1, inputs={"x": 1})
        await engine.store.insert_run(row)
    seen = []

    async def notify(inputs):
        seen.append(inputs)
        return "sent"

    async with Engine.open([task("t", [])], database=db) as engine:
        engine.register_function("notify", notify)
        await engine.serve(api=False)
        run = await eventually(lambda: _finished(engine, row["id"]))
        assert (run["status"], run["result"], seen) == ("completed", "sent", [{"x": 1}])


async def _finished(engine, run_id):
    run = await engine.run(run_id, trace=False)
    return run if run and run["status"] not in ("queued", "running") else None


# -- 5: whole-number settings ----------------------------------------------------------------------
def _project(tmp_path, toml):
    d = tmp_path / "p"
    d.mkdir()
    (d / "cronstack.toml").write_text(toml)
    return d


@pytest.mark.parametrize("key", ["max_running", "http_connections", "http_connections_per_host",
                                 "http_max_response_bytes"])
@pytest.mark.parametrize("value", ["0.5", "0", "-1", "2.5", "true", '"10"', "inf"])
def test_count_settings_must_be_whole_numbers_of_at_least_one(tmp_path, key, value):
    with pytest.raises(CompileError) as info:
        load_config(_project(tmp_path, f"[engine]\n{key} = {value}\n"))
    [diag] = info.value.diagnostics
    assert (diag.file, diag.path) == ("cronstack.toml", f"engine.{key}")
    assert diag.message.startswith(f"{key} must be a whole number of at least 1")


def test_count_settings_accept_whole_numbers_and_durations_fractions(tmp_path):
    cfg = load_config(_project(tmp_path, "[engine]\nmax_running = 3.0\nhttp_connections = 1\n"
                                         "shutdown_grace = 0.5\nprune_interval = 1.5\n"))
    assert (cfg.max_running, type(cfg.max_running), cfg.http_connections) == (3, int, 1)
    assert (cfg.shutdown_grace, cfg.prune_interval) == (0.5, 1.5)


# -- 6: a paused task's stored retries wait for resume -------------------------------------------
async def test_a_paused_tasks_retries_stay_queued_until_resume(tmp_path):
    work = Work()
    work.release.set()
    db = f"sqlite:///{tmp_path}/x.db"
    async with Engine.open([task("t", [WORK])], database=db) as engine:
        engine.register_function("work", work)
        await engine.serve(api=False)
        await engine.pause("t")
        row = queued_retry(engine, "t")
        await engine.store.insert_run(row)
        due(engine, row["id"], 0.0)
        await eventually(lambda: row["id"] in getattr(engine, "_parked", {}).get("t", ()) or work.calls)
        assert work.calls == [] and await status(engine, row["id"]) == "queued"
        assert engine.stats()["queued"] == 1
    async with Engine.open([task("t", [WORK])], database=db) as engine:  # still paused after a restart
        engine.register_function("work", work)
        await engine.serve(api=False)
        await eventually(lambda: row["id"] in getattr(engine, "_parked", {}).get("t", ()) or work.calls)
        assert work.calls == []
        await engine.resume("t")
        run = await eventually(lambda: _finished(engine, row["id"]))
        assert run["status"] == "completed" and work.calls == [row["id"]]


# -- 7: the pending fire of overlap: queue is a stored queued run ----------------------------------
async def test_the_pending_fire_of_overlap_queue_is_stored_and_survives_a_restart(tmp_path):
    db = f"sqlite:///{tmp_path}/x.db"
    defs = [task("slow", [WAIT(90)], schedule="* * * * *", overlap="queue")]
    clock = FakeClock(T0 - 20)  # fires at T0+40 (runs 90 s), T0+100 (waits), T0+160 (skipped)
    async with Engine.open(defs, clock=clock, database=db) as engine:
        await engine.serve(api=False)
        await settle(clock, engine)
        await advance(clock, engine, 125, step=5)
        runs = {r["scheduled_at"]: r for r in await engine.runs("slow")}
        assert runs[T0 + 100]["status"] == "queued" and runs[T0 + 100]["trigger"] == "schedule"
        assert engine._queued_fire == {"slow": runs[T0 + 100]["id"]}
    # the running run was cancelled by the shutdown; the pending fire is still queued
    clock = FakeClock(T0 + 126)
    async with Engine.open(defs, clock=clock, database=db) as engine:
        await engine.serve(api=False)
        await settle(clock, engine)
        pending = await eventually(lambda: _started(engine, T0 + 100))
        assert pending["started_at"] == T0 + 126
        await advance(clock, engine, 95, step=5)
        runs = {r["scheduled_at"]: r["status"] for r in await engine.runs("slow")}
        assert runs[T0 + 40] == "cancelled" and runs[T0 + 100] == "completed"


async def _started(engine, scheduled_at):
    for run in await engine.runs("slow"):
        if run["scheduled_at"] == scheduled_at and run["status"] == "running":
            return run
    return None


async def test_one_pending_fire_at_a_time_and_it_starts_when_the_run_ends():
    clock = FakeClock(T0 - 20)
    defs = [task("slow", [WAIT(90)], schedule="* * * * *", overlap="queue")]
    async with Engine.open(defs, clock=clock) as engine:
        await engine.serve(api=False)
        await settle(clock, engine)
        await advance(clock, engine, 185, step=5)  # +40 ran to +130, +100 started then, +160 waits
        runs = sorted(await engine.runs("slow"), key=lambda r: r["scheduled_at"])
        assert [(r["scheduled_at"] - T0, r["status"]) for r in runs] == [
            (40, "completed"), (100, "running"), (160, "queued")]
        assert runs[1]["started_at"] == T0 + 130
        pending = runs[2]["id"]
        assert await engine.cancel(pending) is True  # a pending fire can be cancelled like any queued run
        assert engine._queued_fire == {}
        await advance(clock, engine, 120, step=5)  # +305: +220 found it idle and runs, +280 waits in its place
        runs = sorted(await engine.runs("slow"), key=lambda r: r["scheduled_at"])
        assert [(r["scheduled_at"] - T0, r["status"]) for r in runs][-3:] == [
            (160, "cancelled"), (220, "running"), (280, "queued")]


# -- 8: the API names the missing variables missing_env -------------------------------------------
async def test_task_info_lists_missing_env():
    defs = [task("needs", [], requires_env=["CRONSTACK_TEST_A", "CRONSTACK_TEST_B"])]
    async with Engine.open(defs, env={"CRONSTACK_TEST_A": "x"}) as engine:
        [info] = await engine.tasks()
        assert info["missing_env"] == ["CRONSTACK_TEST_B"] and "requires_env" not in info
        assert info["active"] is False and info["status"] == "inactive"
        assert (await engine.task("needs"))["missing_env"] == ["CRONSTACK_TEST_B"]


# -- a run waiting in memory for a slot claims its stored queued row conditionally ----------------
async def test_a_waiting_run_cancelled_is_recorded_cancelled_and_never_runs(tmp_path):
    work = Work()
    cfg = EngineConfig(max_running=1, tune_gc=False, shutdown_grace=0.05)
    async with Engine.open([task("t", [WORK])], database=f"sqlite:///{tmp_path}/x.db", config=cfg) as engine:
        engine.register_function("work", work)
        a = await engine.trigger("t")
        await eventually(lambda: work.calls == [a])
        b = await engine.trigger("t")  # waits in memory for the only slot
        assert await engine.cancel(b) is True
        run = await engine.run(b, trace=False)
        assert (run["status"], run["started_at"], run["error"]["message"]) == (
            "cancelled", None, "cancelled before it started")
        work.release.set()
        await eventually(lambda: not engine._active and engine._gate.holders == 0)
        assert work.calls == [a] and await status(engine, a) == "completed"


async def test_a_waiting_run_whose_row_was_taken_meanwhile_gives_its_slot_back_and_records_nothing(tmp_path):
    """As when another engine on a shared database claims (or cancels) the row first."""
    work = Work()
    cfg = EngineConfig(max_running=1, tune_gc=False, shutdown_grace=0.05)
    async with Engine.open([task("t", [WORK])], database=f"sqlite:///{tmp_path}/x.db", config=cfg) as engine:
        engine.register_function("work", work)
        a = await engine.trigger("t")
        await eventually(lambda: work.calls == [a])
        b = await engine.trigger("t")
        error = {"message": "elsewhere", "type": "Cancelled", "step": None}
        assert await engine.store.cancel_queued(b, engine.clock.time(), error) is True
        work.release.set()
        await eventually(lambda: not engine._active and engine._gate.holders == 0)
        assert work.calls == [a]  # b's copy here never ran
        run = await engine.run(b, trace=False)
        assert (run["status"], run["error"]["message"]) == ("cancelled", "elsewhere")  # left as it was
        assert ("t", "cancelled") not in engine.runs_total
        c = await engine.trigger("t", wait=True)  # the slot came back
        assert c["status"] == "completed"


async def test_a_cancel_during_the_waiting_runs_claim_waits_for_it_and_records_cancelled(tmp_path):
    work = Work()
    cfg = EngineConfig(max_running=1, tune_gc=False, shutdown_grace=0.05)
    async with Engine.open([task("t", [WORK])], database=f"sqlite:///{tmp_path}/x.db", config=cfg) as engine:
        engine.register_function("work", work)
        a = await engine.trigger("t")
        await eventually(lambda: work.calls == [a])
        b = await engine.trigger("t")
        claim_run, in_claim, go_on = engine.store.claim_run, asyncio.Event(), asyncio.Event()

        async def slow_claim(*args):
            in_claim.set()
            await go_on.wait()
            return await claim_run(*args)

        engine.store.claim_run = slow_claim
        work.release.set()  # a ends: b gets the slot and claims its row
        await in_claim.wait()
        cancelling = asyncio.ensure_future(engine.cancel(b))
        await asyncio.sleep(0.01)
        assert not cancelling.done()  # the claim is in flight: the cancel waits for its outcome
        go_on.set()
        assert await cancelling is True
        run = await engine.run(b, trace=False)
        assert run["status"] == "cancelled" and run["started_at"] is not None  # claimed, then cancelled
        assert work.calls == [a]
        await eventually(lambda: not engine._active and engine._gate.holders == 0)


@pytest.mark.parametrize("how", ["stop", "shutdown_now"])
async def test_a_shutdown_during_the_waiting_runs_claim_leaves_it_queued(tmp_path, how):
    """A run whose claim (queued -> running) was in flight when the shutdown began used to start
    anyway and end cancelled with a started_at: it never got to run, so it stays queued."""
    work = Work()
    cfg = EngineConfig(max_running=1, tune_gc=False, shutdown_grace=0.05)
    async with Engine.open([task("t", [WORK])], database=f"sqlite:///{tmp_path}/x.db", config=cfg) as engine:
        engine.register_function("work", work)
        a = await engine.trigger("t")
        await eventually(lambda: work.calls == [a])
        b = await engine.trigger("t")
        claim_run, claimed, go_on = engine.store.claim_run, asyncio.Event(), asyncio.Event()

        async def claim_then_pause(*args):
            won = await claim_run(*args)  # the claim commits...
            claimed.set()
            await go_on.wait()  # ...and its answer is late
            return won

        engine.store.claim_run = claim_then_pause
        work.release.set()  # a ends: b gets the slot and claims its row
        await claimed.wait()
        stopping = asyncio.ensure_future(engine.stop(grace=600))
        await eventually(lambda: engine._stopping)
        if how == "shutdown_now":
            engine._shutdown_now()
        await asyncio.sleep(0.01)
        go_on.set()
        with anyio.fail_after(10):
            await stopping
        run = await engine.run(b, trace=False)
        assert (run["status"], run["started_at"], run["error"]) == ("queued", None, None)
        assert work.calls == [a] and engine._gate.holders == 0 and not engine._active
        assert await status(engine, a) == "completed"


async def test_cancel_while_the_queue_loop_claims_a_stored_async_function_run_cancels_it(tmp_path):
    """The queue loop's claim of a function run registered no hold: a cancel landing between the
    claim and the run's start returned False and the run then completed."""
    clock = FakeClock(T0)
    defs = [{"name": "f", "inputs": {}, "stack": [WAIT(10), {"function": "return", "value": 2}]}]
    cfg = EngineConfig(tune_gc=False, shutdown_grace=0.05)
    async with Engine.open(defs, database=f"sqlite:///{tmp_path}/x.db", clock=clock, config=cfg) as engine:
        claim_run, claimed, go_on = engine.store.claim_run, asyncio.Event(), asyncio.Event()

        async def claim_then_pause(*args):
            won = await claim_run(*args)  # the claim commits...
            claimed.set()
            await go_on.wait()  # ...and the queue loop is between it and the run's start
            return won

        engine.store.claim_run = claim_then_pause
        row = engine._row("f", "function", "async_call", scheduled_at=T0, attempt=1)
        await engine.store.insert_run(row)
        await engine.serve(api=False)
        await claimed.wait()
        cancelling = asyncio.ensure_future(engine.cancel(row["id"]))
        await asyncio.sleep(0.01)
        waited = not cancelling.done()  # it waits for the claimed run's start
        go_on.set()
        with anyio.fail_after(10):
            assert (waited, await cancelling) == (True, True)
        await advance(clock, engine, 11)
        run = await engine.run(row["id"], trace=False)
        assert run["status"] == "cancelled" and run["result"] is None
        assert not any(engine._running.values()) and not engine._holds


async def finished(engine, run_id):
    run = await engine.run(run_id, trace=False)
    return run if run["status"] not in ("queued", "running") else None


async def test_a_stored_queued_run_no_longer_defined_fails_once_counted_and_a_cancel_meanwhile_stands(tmp_path):
    """The queue loop marked such a row failed with an unconditional write (overwriting a cancel
    that landed after its read) and did not count it in runs_total."""
    async with Engine.open([task("t", [WAIT(1)])], database=f"sqlite:///{tmp_path}/x.db") as engine:
        gone, cancelled = (engine._row(n, "task", "retry", scheduled_at=T0, attempt=2) for n in ("gone", "gone2"))
        for row in (gone, cancelled):
            await engine.store.insert_run(row)
        get_run = engine.store.get_run
        error = {"message": "cancelled elsewhere", "type": "Cancelled", "step": None}

        async def get_then_cancel(run_id):
            out = await get_run(run_id)
            if run_id == cancelled["id"]:  # a cancel lands between the queue loop's read and its write
                assert await engine.store.cancel_queued(run_id, engine.clock.time(), error)
            return out

        engine.store.get_run = get_then_cancel
        await engine.serve(api=False)
        await eventually(lambda: not engine._queued_due and not engine._launching)
        await eventually(lambda: finished(engine, gone["id"]))
        engine.store.get_run = get_run
        run = await engine.run(gone["id"], trace=False)
        assert (run["status"], run["error"]["type"]) == ("failed", "UnknownTask")
        run = await engine.run(cancelled["id"], trace=False)
        assert (run["status"], run["error"]["message"]) == ("cancelled", "cancelled elsewhere")
        assert engine.runs_total == {("gone", "failed"): 1}


async def test_a_skip_whose_fire_another_engine_has_is_not_counted(tmp_path):
    clock = FakeClock(T0)
    cfg = EngineConfig(tune_gc=False, shutdown_grace=0.05)
    async with Engine.open([task("t", [WAIT(100)], schedule="* * * * *", overlap="skip")],
                           database=f"sqlite:///{tmp_path}/x.db", clock=clock, config=cfg) as engine:
        await engine.trigger("t")
        await settle(clock, engine)
        due_at = T0 + 60
        theirs = engine._row("t", "task", "schedule", scheduled_at=due_at, attempt=1)
        assert await engine.store.claim_fire("t", due_at, theirs)  # another engine's fire
        await engine._fire_once("t", due_at, "schedule")  # "skip" here, but the claim is "taken"
        assert ("t", "skipped") not in engine.runs_total
        await engine._fire_once("t", due_at + 60, "schedule")  # a real skip
        assert engine.runs_total[("t", "skipped")] == 1


async def test_serving_while_a_trigger_stores_its_queued_row_leaves_that_row_to_the_trigger(tmp_path):
    """serve() read the queued row of a trigger still between its insert and its start: the queue
    loop claimed it too, two copies of one run here, and the loser's drop removed the winner's
    entry from _active. Now the queue loop leaves a row this engine is storing to its trigger."""
    work = Work()
    cfg = EngineConfig(max_running=1, tune_gc=False, shutdown_grace=0.05)
    defs = [task("busy", [WORK]), task("t", [WORK])]
    async with Engine.open(defs, database=f"sqlite:///{tmp_path}/x.db", config=cfg) as engine:
        engine.register_function("work", work)
        a = await engine.trigger("busy")  # of another task: t's overlap policy defers nothing
        await eventually(lambda: work.calls == [a])  # holds the only slot: t's row is stored queued
        insert_run, claim_run = engine.store.insert_run, engine.store.claim_run
        stored, go_on, claims, answer = asyncio.Event(), asyncio.Event(), [], {}

        async def insert_then_pause(row):
            answer["id"] = row["id"]
            await insert_run(row)  # committed: serve() can read it...
            stored.set()
            await go_on.wait()  # ...while the trigger has not started its copy yet

        async def counted_claim(run_id, *args):
            claims.append(run_id)
            return await claim_run(run_id, *args)

        engine.store.insert_run, engine.store.claim_run = insert_then_pause, counted_claim

        async def trigger():
            answer["run"] = await engine.trigger("t", wait=True)

        async with anyio.create_task_group() as tg:
            tg.start_soon(trigger)
            await stored.wait()
            b = answer["id"]
            await engine.serve(api=False)
            # the queue loop has had its turn at the rows serve() read (none here, or b)
            await eventually(lambda: not engine._queued_due and engine._launching == 1)
            go_on.set()
            await eventually(lambda: b in engine._active)
            work.release.set()
        assert (answer["run"]["id"], answer["run"]["status"]) == (b, "completed")
        assert claims == [b]  # claimed once: by the trigger's copy
        assert work.calls == [a, b] and not engine._active and engine._gate.holders == 0
