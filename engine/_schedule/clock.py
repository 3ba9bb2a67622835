"""Clocks for the scheduler: the real one, and a virtual one that makes tests exact.

Both satisfy ``runtime.Clock`` (``time()`` and ``async sleep()``) and add
``sleep_until(t)``, which is what a scheduler waiting for a fire wants.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time as _time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.lowlevel

__all__ = ("RealClock", "FakeClock")


class RealClock:
    """Wall-clock time (``time.time()``) with sleeps on the event loop.

    ``sleep_until`` sleeps at most ``max_nap`` seconds at a time and re-reads
    the wall clock, so a system clock that is stepped (NTP, a suspended
    laptop) delays a fire by at most ``max_nap`` and never fires it early.
    """

    __slots__ = ("max_nap",)

    def __init__(self, max_nap: float = 1.0) -> None:
        self.max_nap = max_nap

    #: ``time.time`` itself, not a method around it: a run reads the clock several
    #: times, and a C function called through the instance skips a Python frame
    time = staticmethod(_time.time)

    def sleep(self, seconds: float) -> Awaitable[None]:
        """Every ``wait`` step of a run sleeps here: on asyncio straight through ``asyncio.sleep``
        (anyio's dispatch costs a third more per sleep), through anyio on other backends. Its
        awaitable is returned, not awaited in a coroutine of this method's: one frame less
        for each of the thousands of runs that may be parked in a wait."""
        if asyncio._get_running_loop() is not None:
            return asyncio.sleep(max(0.0, seconds))
        return anyio.sleep(max(0.0, seconds))

    async def sleep_until(self, t: float) -> None:
        while True:
            remaining = t - _time.time()
            if remaining <= 0:
                await anyio.lowlevel.checkpoint()
                return
            await anyio.sleep(min(remaining, self.max_nap))


class FakeClock:
    """Virtual time for tests: nothing really sleeps, ``advance`` moves time.

    Sleepers wait on an event keyed by their deadline. ``advance(s)`` wakes
    them in deadline order (ties in the order they went to sleep), setting the
    time to each deadline in turn and letting the woken tasks run until the
    loop is idle before moving on, so a task that sleeps again inside the
    window is woken again in the same ``advance``. A cancelled sleeper simply
    leaves the queue.
    """

    def __init__(self, start: float = 1_700_000_000.0, settle_rounds: int = 5) -> None:
        self._now = float(start)
        self._settle_rounds = settle_rounds
        self._heap: list[tuple[float, int, anyio.Event]] = []
        self._seq = itertools.count()
        self._waiting = 0

    def time(self) -> float:
        return self._now

    @property
    def sleepers(self) -> int:
        """How many tasks are currently sleeping on this clock."""
        return self._waiting

    def next_deadline(self) -> float | None:
        """The earliest deadline of a sleeping task, or None."""
        self._drop_finished()
        return self._heap[0][0] if self._heap else None

    async def sleep(self, seconds: float) -> None:
        await self.sleep_until(self._now + max(0.0, seconds))

    async def sleep_until(self, t: float) -> None:
        if t <= self._now:
            await anyio.lowlevel.checkpoint()
            return
        event = anyio.Event()
        heapq.heappush(self._heap, (t, next(self._seq), event))
        self._waiting += 1
        try:
            await event.wait()
        finally:
            self._waiting -= 1
            if not event.is_set():
                event.set()  # cancelled: mark the entry so advance() skips it

    def call_at(self, t: float, callback: Callable[[], Any]) -> _TimerHandle:
        """Call ``callback()`` when virtual time reaches ``t`` (like ``loop.call_at``).

        A timer is not a sleeper: ``sleepers`` counts only tasks that wait, so
        a test can tell "a run is in a ``wait`` step" from "a run has a
        timeout pending". ``handle.cancel()`` removes it.
        """
        handle = _TimerHandle(callback)
        heapq.heappush(self._heap, (t, next(self._seq), handle))
        return handle

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, waking every sleeper due in deadline order."""
        if seconds < 0:
            raise ValueError(f"a FakeClock cannot go back in time (advance({seconds}))")
        await self.advance_to(self._now + seconds)

    async def advance_to(self, t: float) -> None:
        """Move time forward to ``t`` (never backwards), waking sleepers due on the way."""
        await self.run_until_idle()
        while True:
            self._drop_finished()
            if not self._heap or self._heap[0][0] > t:
                break
            deadline = self._heap[0][0]
            self._now = max(self._now, deadline)
            while self._heap and self._heap[0][0] == deadline:
                heapq.heappop(self._heap)[2].set()
            await self.run_until_idle()
        self._now = max(self._now, t)
        await self.run_until_idle()

    async def run_until_idle(self, max_rounds: int = 10_000) -> None:
        """Yield to the event loop until no callback is ready (at most ``max_rounds`` times).

        On asyncio's own loop this watches its ready queue; on other loops it
        yields ``settle_rounds`` times, enough for tasks that wake, do a few
        non-blocking steps and go back to sleep.
        """
        for _ in range(self._settle_rounds):
            await anyio.lowlevel.checkpoint()
        ready = _ready_queue()
        if ready is None:
            return
        for _ in range(max_rounds):
            if not ready:
                return
            await anyio.lowlevel.checkpoint()

    def _drop_finished(self) -> None:
        heap = self._heap
        while heap and heap[0][2].is_set():
            heapq.heappop(heap)


class _TimerHandle:
    """A ``call_at`` entry of the fake clock's heap; quacks like the sleepers' events."""

    __slots__ = ("_callback", "_done")

    def __init__(self, callback: Callable[[], Any]) -> None:
        self._callback = callback
        self._done = False

    def cancel(self) -> None:
        self._done = True

    def is_set(self) -> bool:
        return self._done

    def set(self) -> None:
        if not self._done:
            self._done = True
            self._callback()


def _ready_queue():
    """asyncio's queue of ready callbacks when running on its own loop, else None."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    return getattr(loop, "_ready", None)
