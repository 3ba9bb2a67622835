"""Misfires (fires missed while no engine served) and the scheduler loop, in virtual time.

A paused task catches nothing up; catch-up fires obey the overlap policy; the
misfire scan looks only within the grace (cheap however long the downtime)
and finds the latest missed fire; a reload landing as a fire is due loses no
other task's fires; a bad time zone is reported at ``timezone``.
"""

import json
import logging
from datetime import UTC, datetime

import anyio
import pytest

# the engine tests' helpers; quick_shutdown (autouse) cancels runs left waiting on the virtual clock
from test_engine import RET, WAIT, quick_shutdown, task  # noqa: F401

from compiler import load_definitions
from engine import CompileError, Engine, FakeClock, Schedule
from engine._scheduler import fires_between, last_fire_between, schedules_of
from tests.support import eventually

pytestmark = pytest.mark.anyio

T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC




async def settle(clock):
    for _ in range(3):
        await clock.run_until_idle()
        await anyio.sleep(0.003)


async def advance(clock, seconds, step):
    t = 0.0
    while t < seconds:
        d = min(step, seconds - t)
        await clock.advance(d)
        await settle(clock)
        t += d


def missed(expr, last, now, grace):
    """The fires after ``last`` up to ``now`` no older than ``grace``, walked one by one (the reference)."""
    sched, out = Schedule(expr), []
    t = sched.next_after(last)
    while t is not None and t <= now:
        if t >= now - grace:
            out.append(t)
        t = sched.next_after(t)
    return out


async def first_serve(defs, db, at):
    """An engine that serves once at ``at`` (it stores the tasks' last fire) and stops."""
    async with Engine.open(defs, database=db, clock=FakeClock(at)) as engine:
        await engine.serve(api=False)
        await settle(engine.clock)


def overlapping(runs):
    """The most runs (not skipped) that were running at one instant."""
    edges = []
    for r in runs:
        if r["started_at"] is not None:
            edges += [(r["started_at"], 1), (r["finished_at"] if r["finished_at"] is not None else float("inf"), -1)]
    most = now = 0
    for _t, step in sorted(edges, key=lambda e: (e[0], e[1])):  # an end before a start at the same instant
        now += step
        most = max(most, now)
    return most


# -- 1. a paused task does not fire after a restart --------------------------------------------------


async def test_paused_task_gets_no_catch_up_and_its_missed_fires_stay_dropped(tmp_path):
    db = f"sqlite:///{tmp_path / 'p.db'}"
    expr = "*/10 * * * *"
    defs = [task("m", [RET(1)], schedule=expr, misfire="run_once")]
    clock = FakeClock(T0)
    async with Engine.open(defs, database=db, clock=clock) as engine:
        await engine.serve(api=False)
        await advance(clock, 480, step=60)  # through the 22:20 fire
        assert [r["trigger"] for r in await engine.runs("m")] == ["schedule"]
        await engine.pause("m")
        last_fired = clock.time()
    down_until = T0 + 3000  # 23:03:20: the 22:30 ... 23:00 fires are missed while paused
    dropped = missed(expr, last_fired, down_until, 3600)
    assert dropped
    async with Engine.open(defs, database=db, clock=FakeClock(down_until)) as engine:
        await engine.serve(api=False)
        await settle(engine.clock)
        await anyio.sleep(0.05)
        await settle(engine.clock)
        assert [r["trigger"] for r in await engine.runs("m")] == ["schedule"]
        # a paused task's fires are dropped, so its last fire moves past them
        assert (await engine.store.get_task_state("m"))["last_fire"] == dropped[-1]
        await engine.resume("m")
    # resumed, then down again briefly: the fires dropped while paused are not caught up now
    async with Engine.open(defs, database=db, clock=FakeClock(down_until + 100)) as engine:
        await engine.serve(api=False)
        await settle(engine.clock)
        await anyio.sleep(0.05)
        assert [r["trigger"] for r in await engine.runs("m")] == ["schedule"]


# -- 2. run_all catch-ups follow the overlap policy ------------------------------------------------


@pytest.mark.parametrize(("overlap", "max_concurrency"), [("skip", 1), ("queue", 1), ("cancel_previous", 1),
                                                          ("allow", 2)])
async def test_run_all_catch_ups_obey_the_overlap_policy(tmp_path, overlap, max_concurrency):
    db = f"sqlite:///{tmp_path / 'o.db'}"
    expr, grace, duration = "*/10 * * * *", 3600, 200  # each run takes a third of the time between fires
    defs = [task("sync", [WAIT(duration)], schedule=expr, misfire="run_all", misfire_grace=grace,
                 overlap=overlap, max_concurrency=max_concurrency)]
    await first_serve(defs, db, T0)
    now = T0 + 5400
    expected = missed(expr, T0, now, grace)
    assert len(expected) > max_concurrency
    clock = FakeClock(now)
    async with Engine.open(defs, database=db, clock=clock) as engine:
        await engine.serve(api=False)
        await settle(clock)
        limit = max_concurrency
        # long enough for every catch-up to run after one another, and then some
        for _ in range(len(expected) * duration // 30 + 20):
            await advance(clock, 30, step=30)
            running = [r for r in await engine.runs("sync", limit=1000) if r["status"] == "running"]
            assert len(running) <= limit, running
        runs = await engine.runs("sync", limit=1000)
    catch_ups = sorted((r for r in runs if r["trigger"] == "catchup"), key=lambda r: r["scheduled_at"])
    # every missed fire ran, in the order of its fires: in full, or (cancel_previous) until a newer fire came
    assert [r["scheduled_at"] for r in catch_ups] == expected
    for r in catch_ups:
        if overlap == "cancel_previous" and r["status"] == "cancelled":
            assert "newer fire" in r["error"]["message"]
        else:
            assert r["status"] == "completed", r
    assert [r["started_at"] for r in catch_ups] == sorted(r["started_at"] for r in catch_ups)
    # never more runs at once than the policy allows, catch-ups and scheduled fires together
    assert overlapping(runs) == limit


async def test_run_all_stopped_midway_catches_up_the_rest_at_the_next_start(tmp_path):
    db = f"sqlite:///{tmp_path / 'h.db'}"
    expr, grace, duration = "*/10 * * * *", 3600, 250
    defs = [task("sync", [WAIT(duration)], schedule=expr, misfire="run_all", misfire_grace=grace)]
    await first_serve(defs, db, T0)
    now = T0 + 5400
    expected = missed(expr, T0, now, grace)
    clock = FakeClock(now)
    async with Engine.open(defs, database=db, clock=clock) as engine:
        await engine.serve(api=False)
        # the first catch-up ends, the second runs, and a scheduled fire comes meanwhile (skipped)
        await advance(clock, duration + 200, step=30)
        runs = await engine.runs("sync", limit=1000)
        assert sorted(r["scheduled_at"] for r in runs if r["trigger"] == "catchup") == expected[:2]
        assert [r["status"] for r in runs if r["trigger"] == "schedule"] == ["skipped"]
    # the stored last fire stayed at the last catch-up claimed, not at the scheduled fire after it
    async with Engine.open(defs, database=db, clock=FakeClock(clock.time())) as engine:
        assert (await engine.store.get_task_state("sync"))["last_fire"] == expected[1]
        await engine.serve(api=False)
        await advance(engine.clock, len(expected) * duration, step=30)
        runs = await engine.runs("sync", limit=1000)
    catch_ups = sorted(r["scheduled_at"] for r in runs if r["trigger"] == "catchup")
    assert catch_ups == expected  # each missed fire once, none lost to the restart


# -- 3. the misfire scan: within the grace, the latest fire, a logged cap --------------------------


@pytest.mark.parametrize(("down", "grace"), [(5 * 3600, 86400), (30 * 86400, 3600)])
async def test_run_once_runs_the_latest_missed_fire_and_looks_only_within_the_grace(
        tmp_path, monkeypatch, down, grace):
    db = f"sqlite:///{tmp_path / 'c.db'}"
    expr = "* * * * * *"  # every second: tens of thousands of fires missed
    defs = [task("s", [RET(1)], schedule=expr, misfire="run_once", misfire_grace=grace)]
    await first_serve(defs, db, T0)
    now = T0 + down
    sched = Schedule(expr)
    latest = last_fire_between(sched, now - 1, now)  # the fire at `now` itself (it falls on a second)
    assert latest == now
    calls = 0
    real = Schedule.next_after

    def counting(self, ts):
        nonlocal calls
        calls += 1
        return real(self, ts)

    monkeypatch.setattr(Schedule, "next_after", counting)
    clock = FakeClock(now)
    async with Engine.open(defs, database=db, clock=clock) as engine:
        await engine.serve(api=False)
        runs = await eventually(lambda: _done(engine, "s", 1))
        scan = calls
    assert [(r["trigger"], r["scheduled_at"]) for r in runs] == [("catchup", latest)]
    # a bisection, not a walk over every fire since the last one (or within the grace)
    assert scan < 500, scan


async def test_run_all_cap_is_logged_and_the_dropped_fires_are_not_redone(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr("engine._scheduler.CATCHUP_MAX", 5)
    db = f"sqlite:///{tmp_path / 'a.db'}"
    expr, grace = "* * * * * *", 60
    defs = [task("s", [RET(1)], schedule=expr, misfire="run_all", misfire_grace=grace)]
    await first_serve(defs, db, T0)
    now = T0 + 100
    expected = missed(expr, T0, now, grace)
    assert len(expected) > 5
    caplog.set_level(logging.WARNING, logger="cronstack.engine")
    async with Engine.open(defs, database=db, clock=FakeClock(now)) as engine:
        await engine.serve(api=False)
        runs = await eventually(lambda: _done(engine, "s", 5))
        await anyio.sleep(0.05)
        await settle(engine.clock)
        runs = await engine.runs("s", limit=1000)
    assert sorted(r["scheduled_at"] for r in runs) == expected[:5]
    assert "dropped" in caplog.text and "5 missed fires" in caplog.text
    async with Engine.open(defs, database=db, clock=FakeClock(now)) as engine:
        assert (await engine.store.get_task_state("s"))["last_fire"] == expected[-1]


async def _done(engine, name, n):
    runs = await engine.runs(name, limit=1000)
    if len(runs) >= n and all(r["status"] == "completed" for r in runs):
        return runs
    return None


@pytest.mark.parametrize(("expr", "zone"), [
    ("*/7 * * * * *", "UTC"),
    ("30 2 * * *", "America/New_York"),  # skipped by spring-forward
    ("*/30 * * * *", "America/New_York"),  # repeated on fall-back
    ("0 1-3 * * *", "America/New_York"),
    ("0 9 1-7 * 1", "Europe/Berlin"),
    ("0 0 30 2 *", "UTC"),  # never fires
])
def test_last_fire_between_is_the_last_of_the_fires_walked_one_by_one(expr, zone):
    sched = Schedule(expr, zone)
    points = [datetime(2024, 3, 10, 6, 59, 59, tzinfo=UTC).timestamp(),
              datetime(2024, 11, 3, 5, 45, tzinfo=UTC).timestamp(),
              datetime(2024, 11, 3, 6, 15, 30, tzinfo=UTC).timestamp(),
              datetime(2024, 1, 8, 8, 0, 1, tzinfo=UTC).timestamp() + 0.5]
    for now in points:
        for span in (1, 59, 3600, 2 * 86400, 40 * 86400):
            after = now - span
            walked = list(fires_between(sched, after, now))
            reference = []
            t = sched.next_after(after)
            while t is not None and t <= now:
                reference.append(t)
                t = sched.next_after(t)
            assert walked == reference
            assert last_fire_between(sched, after, now) == (reference[-1] if reference else None)


# -- 4. a bad time zone is reported at `timezone` ------------------------------------------------------


@pytest.mark.parametrize(("settings", "paths"), [
    ({"schedule": "0 1 * * *", "timezone": "Europe/Berln"}, ["timezone"]),
    ({"schedule": "0 25 * * *", "timezone": "Europe/Berlin"}, ["schedule"]),
    ({"schedule": "0 25 * * *", "timezone": "Europe/Berln"}, ["schedule", "timezone"]),
])
def test_schedule_problems_name_the_field_at_fault(settings, paths):
    defs = load_definitions([task("t", [RET(1)], **settings)])
    with pytest.raises(CompileError) as info:
        schedules_of(defs)
    assert [d.path for d in info.value.diagnostics] == paths
    assert ("Europe/Berln" in str(info.value)) == ("timezone" in paths)


async def test_engine_open_reports_a_bad_timezone_at_timezone(tmp_path):
    (tmp_path / "b.json").write_text(json.dumps(task("b", [RET(1)], schedule="0 1 * * *", timezone="Europe/Berln")))
    with pytest.raises(CompileError, match="b.json: timezone: timezone 'Europe/Berln'"):
        async with Engine.open(tmp_path, database=f"sqlite:///{tmp_path / 'x.db'}"):
            pass


# -- 5. a reload landing as a fire is due -------------------------------------------------------------


async def test_reload_removing_a_task_as_it_fires_keeps_the_scheduler_going(tmp_path):
    """The fire's task runs while the scheduler yields; a reload that lands there removes the task."""
    (tmp_path / "gone.json").write_text(json.dumps(task("gone", [RET(1)], schedule="0 * * * * *")))
    (tmp_path / "kept.json").write_text(json.dumps(task("kept", [RET(2)], schedule="15 * * * * *")))
    clock = FakeClock(T0 - 20)  # 22:13:00: 'gone' is due at 22:13:00+60, 'kept' at 22:13:15
    async with Engine.open(tmp_path, database=f"sqlite:///{tmp_path / 'r.db'}", clock=clock) as engine:
        await engine.serve(api=False)
        await advance(clock, 30, step=5)
        assert len(await engine.runs("kept")) == 1
        fire = engine._fire
        reloaded = []

        async def fire_then_reload(name, due, trigger):
            if name == "gone" and not reloaded:
                # what reload() does once its compile is done, landing while the scheduler yields
                (tmp_path / "gone.json").unlink()
                defs = load_definitions(tmp_path)
                engine.definitions, engine.functions.stacks = defs, defs.functions
                engine.schedules = schedules_of(defs)
                engine._reschedule = True
                engine._wake.set()
                reloaded.append(due)
            await fire(name, due, trigger)

        engine._fire = fire_then_reload
        await advance(clock, 120, step=5)
        assert reloaded  # the race was taken
        assert await engine.store.list_runs("gone") == []
        # 'kept' went on firing: 22:13:15, 22:14:15, 22:15:15
        assert [r["status"] for r in await engine.runs("kept")] == ["completed"] * 3
