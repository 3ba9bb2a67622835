"""RealClock and FakeClock: virtual time wakes sleepers in deadline order, cancellation works."""

from __future__ import annotations

import time

import anyio
import anyio.lowlevel
import pytest

from engine._schedule import FakeClock, RealClock
from runtime import Clock

pytestmark = pytest.mark.anyio


def test_both_clocks_satisfy_the_runtime_protocol():
    for clock in (RealClock(), FakeClock()):
        assert isinstance(clock.time(), float)
        assert callable(clock.sleep) and callable(clock.sleep_until)
    _: Clock = FakeClock()  # static check: the protocol is structural


async def test_fake_clock_starts_where_told_and_does_not_move_by_itself():
    clock = FakeClock(start=100.0)
    assert clock.time() == 100.0
    await anyio.sleep(0.01)
    assert clock.time() == 100.0


async def test_sleepers_wake_in_deadline_order_at_their_deadline():
    clock = FakeClock(start=0.0)
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append((name, clock.time()))

    async with anyio.create_task_group() as tg:
        for name, seconds in [("c", 30), ("a", 10), ("b", 20), ("a2", 10), ("late", 100)]:
            tg.start_soon(sleeper, name, seconds)
        await clock.run_until_idle()
        assert clock.sleepers == 5
        await clock.advance(25)
        assert woke == [("a", 10.0), ("a2", 10.0), ("b", 20.0)]
        assert clock.time() == 25.0
        await clock.advance(100)
    assert woke[3:] == [("c", 30.0), ("late", 100.0)]
    assert clock.time() == 125.0


async def test_a_task_sleeping_again_inside_the_window_is_woken_again():
    clock = FakeClock(start=0.0)
    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            await clock.sleep(1)
            ticks.append(clock.time())

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        await clock.advance(5.5)
        assert ticks == [1.0, 2.0, 3.0, 4.0, 5.0]
        tg.cancel_scope.cancel()


async def test_work_between_sleeps_runs_before_time_moves_on():
    clock = FakeClock(start=0.0)
    seen: list[float] = []

    async def worker() -> None:
        await clock.sleep(1)
        for _ in range(20):  # several loop turns of work after waking
            await anyio.lowlevel.checkpoint()
        seen.append(clock.time())
        await clock.sleep(1)
        seen.append(clock.time())

    async with anyio.create_task_group() as tg:
        tg.start_soon(worker)
        await clock.advance(3)
    assert seen == [1.0, 2.0]


async def test_cancelled_sleeper_leaves_the_queue():
    clock = FakeClock(start=0.0)
    woke: list[str] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append(name)

    async with anyio.create_task_group() as tg:
        async with anyio.create_task_group() as inner:
            inner.start_soon(sleeper, "cancelled", 5)
            await clock.run_until_idle()
            assert clock.next_deadline() == 5.0
            inner.cancel_scope.cancel()
        assert clock.sleepers == 0 and clock.next_deadline() is None
        tg.start_soon(sleeper, "kept", 7)
        await clock.advance(10)
    assert woke == ["kept"]


async def test_timeout_around_a_fake_sleep_cancels_it():
    clock = FakeClock(start=0.0)
    with anyio.move_on_after(0.05) as scope:
        await clock.sleep(3600)
    assert scope.cancelled_caught and clock.sleepers == 0


async def test_sleep_until_past_or_zero_returns_at_once():
    clock = FakeClock(start=50.0)
    await clock.sleep_until(10.0)
    await clock.sleep(0)
    await clock.sleep(-3)
    assert clock.time() == 50.0


async def test_concurrent_sleepers_on_the_same_deadline_wake_together_fifo():
    clock = FakeClock(start=0.0)
    order: list[int] = []

    async def sleeper(i: int) -> None:
        await clock.sleep_until(60.0)
        order.append(i)

    async with anyio.create_task_group() as tg:
        for i in range(50):
            tg.start_soon(sleeper, i)
        await clock.run_until_idle()
        await clock.advance(59.999)
        assert order == []
        await clock.advance(0.001)
    assert order == list(range(50))


async def test_advance_refuses_to_go_back():
    clock = FakeClock()
    with pytest.raises(ValueError, match="cannot go back"):
        await clock.advance(-1)
    await clock.advance_to(clock.time() - 10)  # advance_to never moves backwards
    assert clock.time() == 1_700_000_000.0


async def test_real_clock_sleeps_until_wall_time():
    clock = RealClock(max_nap=0.01)
    assert abs(clock.time() - time.time()) < 1.0
    target = clock.time() + 0.05
    await clock.sleep_until(target)
    assert time.time() >= target
    t0 = time.monotonic()
    await clock.sleep(0.02)
    assert time.monotonic() - t0 >= 0.015
    await clock.sleep_until(0)  # long past: returns at once


@pytest.mark.anyio
async def test_fake_clock_timers_fire_in_order_and_are_not_sleepers():
    from engine._schedule import FakeClock

    clock = FakeClock(100.0)
    fired = []
    clock.call_at(105.0, lambda: fired.append(("b", clock.time())))
    clock.call_at(103.0, lambda: fired.append(("a", clock.time())))
    dropped = clock.call_at(104.0, lambda: fired.append(("x", clock.time())))
    dropped.cancel()
    assert clock.sleepers == 0
    assert clock.next_deadline() == 103.0
    await clock.advance(10)
    assert fired == [("a", 103.0), ("b", 105.0)]


async def test_real_clock_sleep_waits_is_cancellable_and_takes_negative_as_zero():
    clock = RealClock()
    t0 = time.monotonic()
    await clock.sleep(0.03)
    assert time.monotonic() - t0 >= 0.029
    await clock.sleep(-1)  # a deadline already past: returns at once
    with anyio.move_on_after(0.02) as scope:
        await clock.sleep(10)
    assert scope.cancelled_caught and time.monotonic() - t0 < 5
