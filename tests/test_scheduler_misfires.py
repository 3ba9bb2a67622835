"""The scheduler loop, in virtual time: a reload landing as a fire is due loses no
other task's fires; a bad time zone is reported at ``timezone``.
"""

import json

import anyio
import pytest

from compiler import load_definitions
from engine import CompileError, Engine, FakeClock, Schedule
from engine._scheduler import schedules_of

pytestmark = pytest.mark.anyio

T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC


@pytest.fixture(autouse=True)
def quick_shutdown(monkeypatch):
    """Runs still waiting on a virtual clock at the end of a test are cancelled at once."""
    from engine import EngineConfig

    monkeypatch.setattr("engine._engine.load_config", lambda _dir: EngineConfig(shutdown_grace=0.05))


def task(name, stack, **settings):
    return {"name": name, "stack": stack, **settings}


WAIT = lambda s: {"function": "wait", "duration": s}  # noqa: E731
RET = lambda v: {"function": "return", "value": v}  # noqa: E731


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
