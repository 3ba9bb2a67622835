"""Timer (heap of next fires with lazy deletion) and wait_next on a fake clock."""

from __future__ import annotations

import random

import anyio
import pytest

from engine._schedule import FakeClock, Timer, wait_next

pytestmark = pytest.mark.anyio


def test_schedule_pop_due_in_order_with_fifo_ties():
    t = Timer()
    t.schedule("b", 20)
    t.schedule("a", 10)
    t.schedule("a2", 10)
    t.schedule("c", 30)
    assert len(t) == 4 and t.next_due() == 10
    assert t.pop_due(9.99) == []
    assert t.pop_due(20) == ["a", "a2", "b"]
    assert len(t) == 1 and "c" in t and "a" not in t
    assert t.next_due() == 30


def test_reschedule_cancel_and_lazy_deletion():
    t = Timer()
    t.schedule("x", 10)
    t.schedule("y", 20)
    assert t.reschedule("x", 25) is True
    assert t.reschedule("missing", 5) is False and "missing" not in t
    assert t.due("x") == 25 and t.next_due() == 20
    assert t.cancel("y") is True and t.cancel("y") is False
    assert t.next_due() == 25
    t.schedule("x", 5)  # schedule replaces, earlier too
    assert t.pop_due(100) == ["x"]
    assert t.next_due() is None and len(t) == 0 and t.due("x") is None


def test_heap_stays_proportional_to_live_keys():
    t = Timer()
    for i in range(1000):
        t.schedule("k", i)
    assert len(t) == 1 and len(t._heap) <= 2 * 1 + 65
    assert t.pop_due(10_000) == ["k"]


def test_matches_a_dict_model_under_random_operations():
    rng = random.Random(7)
    t, model = Timer(), {}
    now = 0.0
    for _ in range(20_000):
        op = rng.random()
        key = rng.randrange(200)
        if op < 0.5:
            due = now + rng.uniform(0, 100)
            t.schedule(key, due)
            model[key] = due
        elif op < 0.6:
            assert t.cancel(key) == (model.pop(key, None) is not None)
        elif op < 0.7:
            due = now + rng.uniform(0, 100)
            assert t.reschedule(key, due) == (key in model)
            if key in model:
                model[key] = due
        else:
            now += rng.uniform(0, 5)
            due_keys = sorted((d, k) for k, d in model.items() if d <= now)
            popped = t.pop_due(now)
            assert sorted(popped) == sorted(k for _, k in due_keys)
            assert [model[k] for k in popped] == sorted(model[k] for k in popped)
            for k in popped:
                del model[k]
        assert t.next_due() == (min(model.values()) if model else None)
        assert len(t) == len(model)


def test_scales_to_100k_keys():
    t = Timer()
    n = 100_000
    for i in range(n):
        t.schedule(f"task{i}", (i * 7919) % n)
    for i in range(0, n, 2):
        t.cancel(f"task{i}")
    popped = t.pop_due(n)
    assert len(popped) == n // 2
    dues = [(int(k[4:]) * 7919) % n for k in popped]
    assert dues == sorted(dues)


async def test_wait_next_returns_when_the_first_key_is_due():
    clock = FakeClock(start=0.0)
    timer = Timer()
    timer.schedule("t", 30.0)
    result: list[bool] = []

    async def loop() -> None:
        result.append(await wait_next(clock, timer, anyio.Event()))

    async with anyio.create_task_group() as tg:
        tg.start_soon(loop)
        await clock.advance(29)
        assert result == []
        await clock.advance(1)
    assert result == [False] and timer.pop_due(clock.time()) == ["t"]


async def test_wait_next_is_woken_by_a_change():
    clock = FakeClock(start=0.0)
    timer = Timer()
    timer.schedule("t", 3600.0)
    wakeup = anyio.Event()
    result: list[bool] = []

    async def loop() -> None:
        result.append(await wait_next(clock, timer, wakeup))

    async with anyio.create_task_group() as tg:
        tg.start_soon(loop)
        await clock.run_until_idle()
        timer.schedule("sooner", 5.0)
        wakeup.set()
    assert result == [True]
    assert clock.sleepers == 0  # the losing sleep was cancelled
    assert clock.time() == 0.0


async def test_wait_next_with_nothing_scheduled_waits_for_the_wakeup():
    clock, timer = FakeClock(start=0.0), Timer()
    wakeup = anyio.Event()
    with anyio.move_on_after(0.05):
        await wait_next(clock, timer, wakeup)
        pytest.fail("returned with nothing scheduled and no wakeup")
    wakeup.set()
    assert await wait_next(clock, timer, wakeup) is True
    with pytest.raises(ValueError, match="would wait forever"):
        await wait_next(clock, timer)


async def test_wait_next_returns_at_once_when_already_due():
    clock, timer = FakeClock(start=100.0), Timer()
    timer.schedule("late", 50.0)
    assert await wait_next(clock, timer, anyio.Event()) is False


async def test_a_scheduler_loop_fires_schedules_in_virtual_time():
    """A minimal loop on Timer + Schedule + FakeClock: one hour, exact fire times."""
    from engine._schedule import Schedule

    clock = FakeClock(start=1_704_067_200.0)  # 2024-01-01T00:00:00Z
    schedules = {"five": Schedule("*/5 * * * *"), "hourly": Schedule("0 * * * *")}
    timer = Timer()
    for name, s in schedules.items():
        timer.schedule(name, s.next_after(clock.time()))
    fired: list[tuple[str, float]] = []

    async def scheduler() -> None:
        while True:
            await wait_next(clock, timer)
            for name in timer.pop_due(clock.time()):
                fired.append((name, clock.time() - 1_704_067_200.0))
                timer.schedule(name, schedules[name].next_after(clock.time()))

    async with anyio.create_task_group() as tg:
        tg.start_soon(scheduler)
        await clock.advance(3600)
        tg.cancel_scope.cancel()
    assert [t for n, t in fired if n == "five"] == [300.0 * i for i in range(1, 13)]
    assert [t for n, t in fired if n == "hourly"] == [3600.0]
