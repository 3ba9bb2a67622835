"""Admission of runs: a global limit on running runs, fair across tasks.

Waiters queue per task and freed slots go round-robin over the tasks that
wait, so one task's backlog of thousands of runs cannot starve the others.
A stopping engine closes the gate: no slot is handed out any more and the
runs still waiting are let go (``GateClosed``), so they never start.
"""

from __future__ import annotations

from collections import OrderedDict, deque

import anyio

__all__ = ("FairGate", "GateClosed")


class GateClosed(Exception):
    """The gate closed (the engine is stopping) while the run waited: it never got a slot."""


class FairGate:
    """At most ``limit`` holders at once; waiters served one task at a time in turn."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.holders = 0
        #: no slot is handed out while closed (see ``close``)
        self.closed = False
        self._waiting: OrderedDict[str, deque[anyio.Event]] = OrderedDict()
        #: events of waiters woken by ``close`` without a slot
        self._let_go: set[anyio.Event] = set()

    @property
    def queued(self) -> int:
        return sum(len(q) for q in self._waiting.values())

    def try_acquire(self) -> bool:
        """Take a slot now if one is free, nobody is waiting for it and the gate is open."""
        if self.holders < self.limit and not self._waiting and not self.closed:
            self.holders += 1
            return True
        return False

    async def acquire(self, task: str) -> None:
        """Wait for a slot; ``GateClosed`` when the gate is (or gets) closed first."""
        if self.try_acquire():
            await anyio.lowlevel.checkpoint()
            return
        if self.closed:
            raise GateClosed
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
            elif event in self._let_go:  # let go by close(): it held no slot
                self._let_go.discard(event)
            elif event.is_set():  # the slot was handed to us as we were cancelled
                self.release()
            raise
        if event in self._let_go:
            self._let_go.discard(event)
            raise GateClosed

    def release(self) -> None:
        """Give the slot to the next task in turn, or free it (always, once the gate is closed)."""
        if self._waiting and not self.closed:
            task, queue = next(iter(self._waiting.items()))
            event = queue.popleft()
            del self._waiting[task]
            if queue:  # the task goes to the back of the line
                self._waiting[task] = queue
            event.set()  # the slot passes on: holders stays the same
        else:
            self.holders -= 1

    def close(self) -> None:
        """Hand out no slot from now on; every waiter is let go (its ``acquire`` raises ``GateClosed``).

        Holders keep their slots and release them as usual. Idempotent.
        """
        if self.closed:
            return
        self.closed = True
        waiting, self._waiting = self._waiting, OrderedDict()
        for queue in waiting.values():
            for event in queue:
                self._let_go.add(event)
                event.set()

    def open(self) -> None:
        """Admit again after ``close`` (an engine serving again after a stop)."""
        self.closed = False
