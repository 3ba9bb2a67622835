"""``Timer``: the heap of next fire times, and ``wait_next`` to sleep until one is due.

Keys (task names, run ids) each have at most one due time. Changing or
cancelling a key does not search the heap: the old entry stays and is skipped
when it surfaces (lazy deletion); the heap is rebuilt when stale entries
outnumber live ones, so memory stays proportional to the live keys.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Hashable
from typing import Any, Protocol

import anyio

__all__ = ("Timer", "wait_next")


class Timer:
    """Due times by key: schedule/cancel/reschedule in O(log n), pop what is due."""

    __slots__ = ("_heap", "_live", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Hashable]] = []
        self._live: dict[Hashable, tuple[float, int, Hashable]] = {}
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._live

    def due(self, key: Hashable) -> float | None:
        """The due time of ``key``, or None when it is not scheduled."""
        entry = self._live.get(key)
        return None if entry is None else entry[0]

    def schedule(self, key: Hashable, due: float) -> None:
        """Make ``key`` due at ``due``, replacing any earlier due time of it."""
        entry = (float(due), next(self._seq), key)
        self._live[key] = entry
        heapq.heappush(self._heap, entry)
        if len(self._heap) > 2 * len(self._live) + 64:
            self._compact()

    def reschedule(self, key: Hashable, due: float) -> bool:
        """Move an already scheduled ``key`` to ``due``; False (nothing done) when it is not."""
        if key not in self._live:
            return False
        self.schedule(key, due)
        return True

    def cancel(self, key: Hashable) -> bool:
        """Forget ``key``; False when it was not scheduled."""
        return self._live.pop(key, None) is not None

    def next_due(self) -> float | None:
        """The earliest due time, or None when nothing is scheduled."""
        heap, live = self._heap, self._live
        while heap and live.get(heap[0][2]) is not heap[0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def pop_due(self, now: float) -> list[Any]:
        """Remove and return the keys due at or before ``now``, earliest first (ties: FIFO)."""
        heap, live, out = self._heap, self._live, []
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            if live.get(entry[2]) is entry:
                del live[entry[2]]
                out.append(entry[2])
        return out

    def _compact(self) -> None:
        self._heap = list(self._live.values())
        heapq.heapify(self._heap)


class _Waitable(Protocol):
    async def wait(self) -> Any: ...


async def wait_next(clock: Any, timer: Timer, wakeup: _Waitable | None = None) -> bool:
    """Sleep until the timer's next due time or until ``wakeup`` is set.

    Returns True when woken by ``wakeup`` (an ``anyio.Event`` or
    ``asyncio.Event``: the schedule changed, look again), False when the due
    time came. With nothing scheduled it waits for ``wakeup`` alone. It never
    clears the event; the caller replaces or clears it.
    """
    due = timer.next_due()
    if due is not None and due <= clock.time():
        await anyio.lowlevel.checkpoint()
        return False
    if wakeup is None:
        if due is None:
            raise ValueError("wait_next with nothing scheduled and no wakeup would wait forever")
        await _sleep_until(clock, due)
        return False
    if due is None:
        await wakeup.wait()
        return True
    woken = False
    async with anyio.create_task_group() as tg:

        async def until_due() -> None:
            await _sleep_until(clock, due)
            tg.cancel_scope.cancel()

        async def until_woken() -> None:
            nonlocal woken
            await wakeup.wait()
            woken = True
            tg.cancel_scope.cancel()

        tg.start_soon(until_due)
        tg.start_soon(until_woken)
    return woken


async def _sleep_until(clock: Any, t: float) -> None:
    sleep_until = getattr(clock, "sleep_until", None)
    if sleep_until is not None:
        await sleep_until(t)
    else:  # a plain runtime.Clock
        while clock.time() < t:
            await clock.sleep(t - clock.time())
