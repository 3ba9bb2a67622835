"""Admission of runs: a global limit on running runs, fair across tasks.

Waiters queue per task and freed slots go round-robin over the tasks that
wait, so one task's backlog of thousands of runs cannot starve the others.
"""

from __future__ import annotations

from collections import OrderedDict, deque

import anyio

__all__ = ("FairGate",)


class FairGate:
    """At most ``limit`` holders at once; waiters served one task at a time in turn."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.holders = 0
        self._waiting: OrderedDict[str, deque[anyio.Event]] = OrderedDict()

    @property
    def queued(self) -> int:
        return sum(len(q) for q in self._waiting.values())

    def try_acquire(self) -> bool:
        """Take a slot now if one is free and nobody is waiting for it."""
        if self.holders < self.limit and not self._waiting:
            self.holders += 1
            return True
        return False

    async def acquire(self, task: str) -> None:
        if self.try_acquire():
            await anyio.lowlevel.checkpoint()
            return
        event = anyio.Event()
        self._waiting.setdefault(task, deque()).append(event)
        try:
            await event.wait()
        except anyio.get_cancelled_exc_class():
            queue = self._waiting.get(task)
            if queue is not None and event in queue:
                queue.remove(event)
                if not queue:
                    del self._waiting[task]
            elif event.is_set():  # the slot was handed to us as we were cancelled
                self.release()
            raise

    def release(self) -> None:
        """Give the slot to the next task in turn, or free it."""
        if self._waiting:
            task, queue = next(iter(self._waiting.items()))
            event = queue.popleft()
            del self._waiting[task]
            if queue:  # the task goes to the back of the line
                self._waiting[task] = queue
            event.set()  # the slot passes on: holders stays the same
        else:
            self.holders -= 1
