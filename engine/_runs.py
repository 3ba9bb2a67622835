"""The life of one run: admission, a durable row, the VM, the outcome, the retry.

Every run goes through ``_launch``: a slot from the fair gate, its row
written (durable before anything runs), a plain asyncio task executing the
program under the run's timeout, then the final write and, when the policy
says so, a stored retry. ``RunLifecycle`` is a part of ``Engine``; it reads
the engine's store, clock, gate and bookkeeping.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio

from compiler import Function, Task
from compiler._lower import lower_stack
from engine._functions import FunctionSet
from engine._gate import GateClosed
from engine._trace import RunTrace
from runtime import CronstackError, RunContext, RunFailed
from runtime._vm import execute

__all__ = ("RunLifecycle", "new_run_id", "FINISHED", "RETRYABLE")

db_log = logging.getLogger("cronstack.engine")
#: one line per run start and finish: ``run started id=... task=... trigger=... attempt=...``
run_log = logging.getLogger("cronstack.runs")

#: real seconds between attempts at a run's final write when the database refuses it
FINAL_WRITE_BACKOFF = (0.05, 0.25, 1.0)
#: longest run timeout a loop timer is armed for (about 10 years; beyond it, never)
MAX_TIMER_SECONDS = 3.2e8
#: the most a run's timeout fires late, in milliseconds (see ``_TimeoutGroup``)
TIMEOUT_SLICE_MS = 16


def timeout_slice_ms(limit: float) -> int:
    """The width of the timer slices of runs timing out after ``limit`` seconds:
    1% of the limit, at least 1 ms and at most TIMEOUT_SLICE_MS."""
    if limit >= TIMEOUT_SLICE_MS / 10:
        return TIMEOUT_SLICE_MS
    return max(1, int(limit * 10))


#: runs' tasks are made directly when the loop has no task factory (see ``_spawn_run``)
_Task = asyncio.Task
FINISHED = frozenset({"completed", "failed", "timed_out", "cancelled", "skipped", "crashed"})
RETRYABLE = frozenset({"failed", "timed_out", "crashed"})


#: milliseconds that fit the id's 12 hex digits
_MS_LIMIT = 1 << 48


def new_run_id(now: float | None = None) -> str:
    """Run ids sort by creation time: 12 hex digits of milliseconds, then 8 random ones.

    The random part keeps apart the ids of engines that share a database
    (ids are not secrets: the admin API that shows them is behind its
    token), so it comes from a generator of the engine's own (seeded from
    the OS, reseeded in a forked child) rather than a system call per run:
    the process-wide ``random`` would repeat ids after a user's
    ``random.seed(k)``. Within the process, ids strictly increase: an id that
    would not (the same millisecond, as every run of a burst in a stopped
    virtual clock; a clock stepped back) is the last one plus one, so a burst
    of any size cannot draw the same id twice.
    """
    global _last_id
    ms = int((time.time() if now is None else now) * 1000)
    if 0 <= ms < _MS_LIMIT:  # one integer to hex: about half the cost of two format specs
        value = ms << 32 | _ids.getrandbits(32)
        if value <= _last_id:
            value = _last_id + 1
            if value >> 80:  # past the year 10889: the text form below
                return f"{ms:012x}{_ids.getrandbits(32):08x}"
        _last_id = value
        return value.to_bytes(10, "big").hex()
    return f"{ms:012x}{_ids.getrandbits(32):08x}"  # a clock before 1970 or after the year 10889


_last_id = 0
_ids = random.Random()  # seeded from os.urandom


def _after_fork() -> None:
    """A forked child draws its own ids: reseeded, and no longer counting up from the
    parent's last id (both would then make the same ids, one after the other)."""
    global _last_id
    _ids.seed()
    _last_id = 0


os.register_at_fork(after_in_child=_after_fork)


# compared (and hashed) by identity: timeout groups hold them in sets
@dataclass(slots=True, eq=False)
class _Active:
    """A run that is executing: its task, and why it was cancelled (if it was).

    Runs are plain asyncio tasks: creating an anyio task and cancel scope per
    run cost more than the rest of a short run. Every cancellation of a run
    goes through ``cancel`` with a reason, which is how the run tells a
    timeout, a user's cancel, a newer fire and a shutdown apart. A run whose
    task has not taken its first step yet is not cancelled through the task
    (a coroutine cancelled before it starts never runs its ``finally``, so
    its outcome would never be written): it sees the reason as it starts.
    """

    task: str
    row: dict[str, Any]
    handle: asyncio.Task[Any] | None = None
    reason: str | None = None
    #: the run's task has taken its first step (see ``cancel``)
    started: bool = False
    #: the outcome is being written: too late to cancel
    finishing: bool = False
    finished: bool = False
    #: a queued run got its slot from the gate (the slot is released when it ends)
    admitted: bool = False
    #: its stored queued row is being claimed (``_wait_for_slot``): a cancel waits for the claim
    claiming: bool = False
    #: another engine (or a cancel) took its stored queued row first: this copy ended, recording nothing
    lost: bool = False
    #: the timeout under an injected clock: a task sleeping on it, or its timer handle
    watchdog: Any = None
    #: the timeout with the real clock (see ``_TimeoutGroup``)
    timeout_group: Any = None
    _event: asyncio.Event | None = None

    def cancel(self, reason: str) -> None:
        if self.finishing or self.finished:
            return
        self.reason = self.reason or reason
        if self.started and self.handle is not None and not self.claiming:
            self.handle.cancel()

    def done(self) -> asyncio.Event:
        """An event set when the run's outcome is recorded (made on demand: most runs have no waiter)."""
        if self._event is None:
            self._event = asyncio.Event()
            if self.finished:
                self._event.set()
        return self._event

    def set_finished(self) -> None:
        self.finished = True
        if self._event is not None:
            self._event.set()


class _TimeoutGroup:
    """The runs whose timeouts fall in one slice of the loop's clock, behind one timer.

    A burst of runs started together would otherwise put one timer handle
    each on the loop's heap (and cancel nearly all of them a moment later):
    a handle costs a heap push whose comparisons are Python calls, and its
    cancellation more. A slice is ``timeout_slice_ms`` long (1% of the
    timeout, between 1 and 16 ms); the group's timer fires at the end of its
    slice, so a timeout is never early and at most one slice late. The timer
    leaves the heap when its last run finishes.
    """

    __slots__ = ("runs", "handle", "key", "groups")

    def __init__(
        self, groups: dict[int, _TimeoutGroup], key: int, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.runs: set[_Active] = set()
        self.key = key
        self.groups = groups
        self.handle = loop.call_at(key / 1000, self._expire)

    def _expire(self) -> None:
        if self.groups.get(self.key) is self:
            del self.groups[self.key]
        for active in list(self.runs):
            active.cancel("timeout")

    def leave(self, active: _Active) -> None:
        """``active`` finished: drop it, and the timer with the last run."""
        runs = self.runs
        runs.discard(active)
        if not runs:
            self.handle.cancel()
            if self.groups.get(self.key) is self:
                del self.groups[self.key]


class RunLifecycle:
    """Starting, running and recording runs (a part of ``Engine``)."""

    def _row(
        self,
        task: str,
        kind: str,
        trigger: str,
        *,
        scheduled_at: float | None,
        attempt: int,
        parent_id: str | None = None,
        inputs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        now = self.clock.time()
        return {
            "id": new_run_id(now),
            "task": task,
            "kind": kind,
            "trigger": trigger,
            "scheduled_at": scheduled_at,
            "not_before": None,
            "started_at": None,
            "finished_at": None,
            "attempt": attempt,
            "status": "queued",
            "result": None,
            "error": None,
            "parent_id": parent_id,
            "inputs": inputs,
            "engine_id": self.engine_id,
        }

    def _launch_begin(self) -> None:
        """A run is being recorded: stop() waits for it to be seen (and stopped) before it ends."""
        self._launching += 1

    def _launch_end(self) -> None:
        self._launching -= 1
        if not self._launching and self._launch_idle is not None:
            # the event exists only while stop() waits: making one per trigger cost
            # more (anyio looks up the running library) than the rest of launching
            self._launch_idle.set()
            self._launch_idle = None

    async def _launch(
        self,
        defn: Task | Function,
        row: dict[str, Any],
        *,
        claim_fire: bool = False,
        claimed: bool = False,
    ) -> _Active | None:
        """Admit, record and start a run. Returns None when a scheduled fire was already claimed."""
        admitted = self._admit(row)
        self._launch_begin()
        stored = False
        storing = not admitted and not claimed
        if storing:  # stored queued: the queue loop must not take it meanwhile (see Engine._storing)
            self._storing.add(row["id"])
        try:
            if claim_fire:
                outcome = (await self._claim_fires([row]))[0]
                if outcome != "claimed":  # another engine's; or stored skipped, or the task paused
                    if outcome == "skipped":
                        key = (row["task"], "skipped")
                        self.runs_total[key] = self.runs_total.get(key, 0) + 1
                    return None
            elif claimed:
                if admitted:
                    await self.store.update_run(
                        row["id"],
                        {
                            "status": "running",
                            "started_at": row["started_at"],
                            "engine_id": self.engine_id,
                        },
                    )
            else:
                try:
                    await self.store.insert_run(row)
                except asyncio.CancelledError:
                    # a queued write is committed even when its caller gives up: the run
                    # starts as recorded (else its row would stay `running` with no task)
                    stored = True
                    self._start(defn, row, admitted)
                    raise
            stored = True
        finally:
            if not stored and admitted:  # already claimed, or the database refused: free the slot
                self._gate.release()
            if storing:
                self._storing.discard(row["id"])
            self._launch_end()
        return self._start(defn, row, admitted)

    def _admit(self, row: dict[str, Any]) -> bool:
        """Take a run slot now if one is free: the row says ``running`` from this moment.

        A stopping engine starts no run: the row stays ``queued`` (see ``_leave_queued``).
        """
        if not self._stopping and self._gate.try_acquire():
            row["status"], row["started_at"] = "running", self.clock.time()
            return True
        if self._gate.closed and not self._stopping:  # serving again after a stop
            self._gate.open()
            return self._admit(row)
        return False

    def _start(self, defn: Task | Function, row: dict[str, Any], admitted: bool) -> _Active:
        """Start the task of a run whose row is stored (``admitted``: it holds a slot)."""
        active = _Active(row["task"], row, admitted=admitted)
        self._active[row["id"]] = active
        if isinstance(defn, Task):
            running = self._running.get(defn.name)
            if running is None:
                running = self._running[defn.name] = set()
            running.add(row["id"])
        # the functions the run calls are those loaded with its definition, whatever a
        # reload changes while it runs (a reference to that load's set, nothing copied)
        functions = self.functions.current
        if functions.tasks.get(defn.name) is not defn:
            functions = self.functions.set_for(defn)
        active.handle = self._spawn_run(self._execute(defn, row, active, functions), row["id"])
        if run_log.isEnabledFor(logging.INFO):
            run_log.info(
                "run %s id=%s task=%s trigger=%s attempt=%s",
                "started" if admitted else "queued",
                row["id"],
                row["task"],
                row["trigger"],
                row["attempt"],
            )
        return active

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        """A plain task the engine keeps track of (and cancels when it closes)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _spawn_run(self, coro: Any, run_id: str) -> asyncio.Task[Any]:
        """A run's task, named after the run: like ``_spawn``, but the run leaves ``_tasks`` itself as it ends.

        ``_execute`` records every outcome and logs its own internal errors,
        so a done callback (and the loop callback it costs per run) has
        nothing to do. Without a task factory on the loop the task is made
        directly, as the loop's ``create_task`` would make it: asyncio's is a
        Python method, and a task given no name formats one ("Task-N").
        """
        loop = asyncio.get_running_loop()
        if loop.get_task_factory() is None:
            task = _Task(coro, loop=loop, name=run_id)
        else:
            task = loop.create_task(coro, name=run_id)
        self._tasks.add(task)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            db_log.error(
                "internal error in the engine: %s: %s", type(exc).__name__, exc, exc_info=exc
            )

    async def _execute(
        self, defn: Task | Function, row: dict[str, Any], active: _Active, functions: FunctionSet
    ) -> None:
        """The run's task: a slot (a queued run waits for one), the attempt under its
        timeout, then its outcome recorded, whatever happens. ``functions``: the
        functions the run calls (those loaded with ``defn``).

        A run that never got its slot when the engine stops is left ``queued``
        (``_leave_queued``): the next start of the engine runs it.

        One coroutine from the slot to the outcome, the attempt included: every
        level of ``await`` between the run's task and the VM is paid twice per
        run (entered and left), each is one more object for the cyclic GC to
        walk while the run waits, and a short run is made of little else.
        """
        active.started = True
        trace = None
        left_queued = False
        failure = None
        try:
            if active.reason is not None:  # cancelled before its task started
                raise asyncio.CancelledError
            failure = None if active.admitted else await self._wait_for_slot(row, active)
            if failure is _LEFT_QUEUED:
                left_queued = True
            elif failure is _LOST:
                pass
            elif failure is not None:
                status, result, error = "failed", None, failure
            else:
                is_task = isinstance(defn, Task)
                if defn.request_history.enabled if is_task else True:
                    trace = RunTrace(prepared=self._trace_secrets)
                ctx = RunContext(
                    records=self.records_for(defn.data_source),
                    http=self.http,
                    functions=functions,
                    tracer=trace,
                    clock=self.clock,
                    env=self.env,
                    task={
                        "name": row["task"],
                        "run_id": row["id"],
                        "attempt": row["attempt"],
                        "scheduled_at": row["scheduled_at"],
                        "trigger": row["trigger"],
                    },
                )
                self._arm_timeout(active, defn.timeout if is_task else 300.0)
                # the attempt
                try:
                    if is_task:
                        result = await execute(defn.program, ctx)
                    else:
                        inputs = row.get("inputs") or {}
                        if defn.name in self.functions.python:
                            result = await functions.call(defn.name, inputs, ctx)
                        else:
                            result = await execute(
                                defn.program, ctx, inputs={**defn.inputs, **inputs}
                            )
                    status, error = "completed", None
                except RunFailed as exc:
                    status, result, error = "failed", None, exc.error
                except Exception as exc:  # a defect outside the VM's own error handling
                    status, result = "failed", None
                    error = {
                        "message": f"internal error: {type(exc).__name__}: {exc}",
                        "type": "InternalError",
                        "step": None,
                    }
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            limit = defn.timeout if isinstance(defn, Task) else 300.0
            if not active.admitted and active.reason == "shutdown":
                left_queued = True  # never started: the next start runs it
            reason = active.reason if active.admitted else "queued"
            # the trace is kept: the steps (and logs) that finished before the timeout or cancel
            # are the history such a run most needs; they were redacted as they were recorded
            status, result, error = "cancelled", None, _cancel_error(reason, limit)
            if active.reason == "timeout":
                status = "timed_out"
        except (
            Exception
        ) as exc:  # a defect around the attempt: the run still gets its outcome and slot back
            db_log.error(
                "internal error in the engine: %s: %s", type(exc).__name__, exc, exc_info=exc
            )
            status, result, trace = "failed", None, None
            error = {
                "message": f"internal error: {type(exc).__name__}: {exc}",
                "type": "InternalError",
                "step": None,
            }
        try:
            active.finishing = True
            if left_queued:
                await self._leave_queued(defn, row, active)
            elif failure is _LOST:
                self._drop_lost(defn, row, active)
            else:
                await self._finish(defn, row, active, active.admitted, status, result, error, trace)
        except Exception as exc:  # a defect in the engine: logged, never silent
            db_log.error(
                "internal error in the engine: %s: %s", type(exc).__name__, exc, exc_info=exc
            )
        finally:
            self._tasks.discard(active.handle)  # type: ignore[arg-type]

    async def _wait_for_slot(self, row: dict[str, Any], active: _Active) -> dict[str, Any] | None:
        """A queued run: wait for a slot, then record it ``running``; the error object if the
        database refused; ``_LEFT_QUEUED`` when the engine stops first (the gate closes)."""
        if self._stopping:
            return _LEFT_QUEUED
        if self._gate.closed:  # serving again after a stop
            self._gate.open()
        try:
            await self._gate.acquire(row["task"])
        except GateClosed:
            return _LEFT_QUEUED
        if self._stopping:  # handed a slot as stop() began: it starts nothing either
            self._gate.close()
            self._gate.release()
            return _LEFT_QUEUED
        active.admitted = True
        row["started_at"] = self.clock.time()
        if row["status"] != "queued":  # claimed from the store by this engine already: its start
            try:
                await self.store.update_run(
                    row["id"], {"status": "running", "started_at": row["started_at"]}
                )
            except CronstackError as exc:
                return _store_failure(exc, "starting the run")
            return self._stopped_while_starting(active)
        # stored queued by this engine, but another engine's queue (or a cancel) may take the row
        # meanwhile: the run starts only if this conditional write moves it from queued to running.
        # A cancel during the claim waits for it (see _Active.cancel), so its outcome is known.
        active.claiming = True
        try:
            won = await self.store.claim_run(row["id"], self.engine_id, row["started_at"])
        except CronstackError as exc:
            return _store_failure(exc, "starting the run")
        finally:
            active.claiming = False
        if not won:
            return _LOST
        row["status"] = "running"
        return self._stopped_while_starting(active)

    def _stopped_while_starting(self, active: _Active) -> dict[str, Any] | None:
        """A queued run's row was just moved to ``running`` (it holds its slot): None to run it.

        A user's cancel that landed meanwhile wins (recorded cancelled, with
        its ``started_at``). A shutdown that began meanwhile (stop(), or a
        second SIGTERM) starts nothing: the slot goes back and the run is left
        ``queued`` (``_leave_queued`` puts the row back), as if it had never
        got its slot; so does any other cancel during a shutdown.
        """
        reason = active.reason
        if reason == "cancel" or (reason is not None and not self._stopping):
            raise asyncio.CancelledError  # recorded as a cancelled run
        if self._stopping:
            active.admitted = False
            self._gate.close()  # the freed slot starts nothing: stop() began
            self._gate.release()
            return _LEFT_QUEUED
        return None

    def _drop_lost(self, defn: Task | Function, row: dict[str, Any], active: _Active) -> None:
        """A queued run whose stored row was claimed elsewhere (another engine runs it) or cancelled
        before this engine's claim: its slot goes back and this copy ends, recording nothing."""
        run_id = row["id"]
        active.lost = True
        if self._active.get(run_id) is active:  # only its own entry: never another copy's
            del self._active[run_id]
            if isinstance(defn, Task):
                running = self._running.get(defn.name)
                if running is not None:
                    running.discard(run_id)
        if self._stopping:  # the freed slot starts nothing: stop() began
            self._gate.close()
        self._gate.release()
        active.set_finished()
        if run_log.isEnabledFor(logging.INFO):
            run_log.info(
                "run dropped id=%s task=%s (its queued row was claimed by another engine or cancelled "
                "before it got a slot here)",
                run_id,
                row["task"],
            )

    def _arm_timeout(self, active: _Active, limit: float) -> None:
        """Start the attempt's timeout: ``limit`` seconds, then the run is cancelled with the reason "timeout".

        With the real clock, the event loop timer of the run's
        ``_TimeoutGroup`` (shared by the runs due to time out in the same slice
        of time); the injected clock's ``call_at`` (or a watchdog sleeping
        on it) otherwise, so tests run in virtual time.
        """
        if self._real_clock:
            loop = asyncio.get_running_loop()
            width = timeout_slice_ms(limit)
            key = (int((loop.time() + min(limit, MAX_TIMER_SECONDS)) * 1000) // width + 1) * width
            group = self._timeouts.get(key)
            if group is None:
                group = self._timeouts[key] = _TimeoutGroup(self._timeouts, key, loop)
            group.runs.add(active)
            active.timeout_group = group
            return
        call_at = getattr(self.clock, "call_at", None)
        if call_at is not None:  # a timer, not a sleeper: see FakeClock.call_at
            active.watchdog = call_at(self.clock.time() + limit, partial(active.cancel, "timeout"))
        else:
            active.watchdog = self._spawn(self._watchdog(active, limit))

    async def _watchdog(self, active: _Active, limit: float) -> None:
        await self.clock.sleep(limit)
        active.cancel("timeout")

    async def _finish(
        self,
        defn: Task | Function,
        row: dict[str, Any],
        active: _Active,
        admitted: bool,
        status: str,
        result: Any,
        error: Any,
        trace: RunTrace | None,
    ) -> None:
        run_id = row["id"]
        now = self.clock.time()
        is_task = isinstance(defn, Task)
        try:
            if error is not None:  # stored with or without history: secrets out of it either way
                try:
                    error = (trace or RunTrace(prepared=self._trace_secrets)).redact_error(error)
                except Exception as exc:  # a defect in redaction must not cost the run its outcome
                    db_log.error(
                        "internal error in the engine: %s: %s",
                        type(exc).__name__,
                        exc,
                        exc_info=exc,
                    )
                    status, result, error, trace = (
                        "failed",
                        None,
                        _internal_error(exc, "redacting the error"),
                        None,
                    )
            started = row.get("started_at")
            if is_task and status in RETRYABLE:
                # the retry is stored before the outcome: a crash between the two leaves the
                # attempt `running`, and recovery sees its retry (``_has_retry``) instead of losing it.
                # A retry the database refused leaves the attempt `running` on purpose: the next
                # start marks it crashed and retries it, so the retry is late but never lost.
                if not await self._maybe_retry(defn, row, status):
                    return
            entries = None
            if trace is not None and (trace.entries or trace.logs):
                try:
                    entries = trace.export_json()  # the stored text in one encode
                except Exception as exc:  # a defect in the trace must not cost the run its outcome
                    db_log.error(
                        "internal error in the engine: run %s: its trace could not be encoded: %s: %s",
                        run_id,
                        type(exc).__name__,
                        exc,
                        exc_info=exc,
                    )
            outcome = {"status": status, "finished_at": now, "result": result, "error": error}
            if not admitted and row["status"] == "queued" and status == "cancelled":
                # never started, its row stored queued: cancelled only while still queued (another
                # engine may have claimed and started it: that run goes on, this copy records nothing)
                written = await self._cancel_queued_write(run_id, now, error)
                if not written:
                    active.lost = written is None
                    return
            elif not await self._final_write(run_id, outcome, entries):
                return  # still `running` in the database: the next start marks it crashed and retries it
            totals = self.runs_total
            key = (row["task"], status)
            totals[key] = totals.get(key, 0) + 1
            if run_log.isEnabledFor(logging.INFO):
                run_log.info(
                    "run finished id=%s task=%s status=%s duration=%.3f%s",
                    run_id,
                    row["task"],
                    status,
                    now - (started or now),
                    f" error={error.get('type')}: {error.get('message')}" if error else "",
                )
            if started is not None:
                self.durations.observe(row["task"], now - started)
        finally:
            if active.timeout_group is not None:
                active.timeout_group.leave(active)
            elif active.watchdog is not None:
                active.watchdog.cancel()
            self._active.pop(run_id, None)
            running = self._running.get(defn.name) if is_task else None
            if running is not None:
                running.discard(run_id)
            if admitted:
                if self._stopping:  # the freed slot starts nothing: stop() began
                    self._gate.close()
                self._gate.release()
            active.set_finished()

    async def _leave_queued(self, defn: Task | Function, row: dict[str, Any], active: _Active) -> None:
        """The engine stopped before the run got a slot: its row stays ``queued`` for the next start.

        A run claimed from the store (a retry, an async call) was marked
        ``running`` by the claim: it goes back to ``queued`` (a row left
        ``running`` would be taken for a crash and retried as one).
        """
        run_id = row["id"]
        try:
            if row.get("status") != "queued":
                row["status"], row["started_at"] = "queued", None
                await self.store.update_run(run_id, {"status": "queued", "started_at": None})
            if run_log.isEnabledFor(logging.INFO):
                run_log.info(
                    "run left queued id=%s task=%s (the engine stopped before it started; "
                    "the next start runs it)",
                    run_id,
                    row["task"],
                )
        except CronstackError as exc:
            db_log.error(
                "run %s of %s was claimed but the engine stopped before it started, and it could "
                "not be put back in the queue; the next start recovers it as crashed: %s",
                run_id,
                row["task"],
                exc,
            )
        finally:
            self._active.pop(run_id, None)
            if isinstance(defn, Task):
                running = self._running.get(defn.name)
                if running is not None:
                    running.discard(run_id)
            active.set_finished()

    def _shutdown_now(self) -> None:
        """Cancel every run at once (a second SIGTERM/SIGINT during ``stop()``'s grace).

        No run starts any more; running runs are recorded ``cancelled`` (as at
        the end of the grace) and runs waiting for a slot stay ``queued``.
        """
        self._stopping = True
        self._gate.close()
        for active in list(self._active.values()):
            active.cancel("shutdown")

    async def _final_write(
        self, run_id: str, fields: dict[str, Any], trace: str | None, *, fallback: bool = False
    ) -> bool:
        """Record a run's outcome and its trace (one write), retrying briefly; False (logged) if refused.

        A store error here must not escape: it would tear down the engine's
        task group and every other run with it. A run whose outcome could not
        be written stays ``running`` in the database and is recovered (marked
        ``crashed``, retried under its policy) by the next start. A trace
        never costs a run its outcome: when the database keeps refusing the
        two, the outcome is tried once more alone (the trace is lost, logged).
        An outcome that cannot be stored at all (a defect: a value the
        encoder refuses) is replaced by a failed one that says so.
        """
        for delay in (*FINAL_WRITE_BACKOFF, None):
            try:
                await self.store.finish_run(run_id, fields, trace)
                return True
            except CronstackError as exc:
                if delay is None:
                    if trace is not None:
                        db_log.error(
                            "run %s: its outcome and trace could not be stored, trying the "
                            "outcome alone: %s",
                            run_id,
                            exc,
                        )
                        return await self._final_write(run_id, fields, None, fallback=fallback)
                    db_log.error(
                        "run %s: its outcome (%s) could not be stored, it stays 'running' until "
                        "the next start recovers it: %s",
                        run_id,
                        fields.get("status"),
                        exc,
                    )
                    return False
                await anyio.sleep(delay)
            except Exception as exc:
                db_log.error(
                    "internal error in the engine: run %s: its outcome could not be stored: %s: %s",
                    run_id,
                    type(exc).__name__,
                    exc,
                    exc_info=exc,
                )
                if fallback:
                    return False
                failed = {
                    "status": "failed",
                    "finished_at": fields.get("finished_at"),
                    "result": None,
                    "error": _internal_error(exc, "storing the run's outcome"),
                }
                return await self._final_write(run_id, failed, None, fallback=True)
        return False  # pragma: no cover - the loop always returns

    async def _cancel_queued_write(
        self, run_id: str, now: float, error: dict[str, Any]
    ) -> bool | None:
        """Record a run cancelled before it started, if its row is still queued (one conditional
        write, retried briefly); None when it was not (claimed elsewhere), False (logged) if refused."""
        for delay in (*FINAL_WRITE_BACKOFF, None):
            try:
                return True if await self.store.cancel_queued(run_id, now, error) else None
            except CronstackError as exc:
                if delay is None:
                    db_log.error(
                        "run %s was cancelled before it started but that could not be stored; it "
                        "stays queued and runs at the next start: %s",
                        run_id,
                        exc,
                    )
                    return False
                await anyio.sleep(delay)
        return False  # pragma: no cover - the loop always returns

    async def _maybe_retry(self, task: Task, row: dict[str, Any], status: str) -> bool:
        """Store the retry the policy asks for; False only when the database refused it.

        Any other error making or storing the retry is a defect: logged, and the
        retry skipped (True), so that the attempt's outcome is still recorded
        (never left ``running``) and recovery (``_recover``) still opens the engine.
        """
        try:
            policy = task.retry_policy
            attempt = int(row.get("attempt") or 1)
            if attempt > policy.max_retries:
                return True
            retry = self._row(
                task.name,
                "task",
                "retry",
                scheduled_at=row.get("scheduled_at"),
                attempt=attempt + 1,
                parent_id=row["id"],
                inputs=row.get("inputs"),
            )
            retry["not_before"] = self.clock.time() + policy.delay(attempt)
            await self.store.insert_run(retry)
        except CronstackError as exc:
            db_log.error(
                "run %s of %s ended %s but its retry could not be stored; the run stays "
                "'running' until the next start recovers and retries it: %s",
                row["id"],
                task.name,
                status,
                exc,
            )
            return False
        except Exception as exc:
            db_log.error(
                "internal error in the engine: run %s of %s ended %s and is not retried, "
                "its retry could not be made: %s: %s",
                row.get("id"),
                task.name,
                status,
                type(exc).__name__,
                exc,
                exc_info=exc,
            )
            return True
        self._queued_due[retry["id"]] = retry["not_before"]
        self._queue_wake.set()
        return True

    async def start_function_run(
        self, name: str, inputs: dict[str, Any], parent_id: str | None
    ) -> str:
        """A durable run of function ``name`` (execution_mode async); returns its id at once.

        The new run is of the function as currently defined: a caller that
        started before a reload starts the reloaded function, and a call of a
        function the reload removed makes a run that fails at once
        (``UnknownFunction``); the caller goes on with its id.
        """
        defn = self.functions.stacks.get(name)
        if defn is None:
            if name not in self.functions.python:
                return await self._function_gone(name, inputs, parent_id)
            # a registered Python function: run it as a function run too
            defn = Function(name=name, program=lower_stack([], name).program)
        row = self._row(
            name,
            "function",
            "async_call",
            scheduled_at=self.clock.time(),
            attempt=1,
            parent_id=parent_id,
            inputs=inputs,
        )
        await self._launch(defn, row)
        return row["id"]

    async def _function_gone(
        self, name: str, inputs: dict[str, Any], parent_id: str | None
    ) -> str:
        """An async call of a function a reload removed after its caller started: a failed run."""
        now = self.clock.time()
        row = self._row(
            name,
            "function",
            "async_call",
            scheduled_at=now,
            attempt=1,
            parent_id=parent_id,
            inputs=inputs,
        )
        row.update(
            status="failed",
            finished_at=now,
            error={
                "message": f"no function named '{name}': the definitions were reloaded without it "
                "after the calling run started",
                "type": "UnknownFunction",
                "step": None,
            },
        )
        await self.store.insert_run(row)
        key = (name, "failed")
        self.runs_total[key] = self.runs_total.get(key, 0) + 1
        run_log.info("run failed id=%s task=%s: no function named '%s' (removed by a reload)",
                     row["id"], name, name)
        return row["id"]

    # -- serving --------------------------------------------------------------------------


#: what ``_wait_for_slot`` returns when the engine stops before the run gets a slot
_LEFT_QUEUED: dict[str, Any] = {"left": "queued"}
#: what it returns when the run's stored queued row was claimed elsewhere (or cancelled) first
_LOST: dict[str, Any] = {"lost": True}

_CANCEL_MESSAGES = {
    "cancel": "cancelled on request (the admin API's cancel, `cronstack cancel` or Engine.cancel) while it ran",
    "superseded": "cancelled by a newer fire (overlap: cancel_previous)",
    "shutdown": "the engine stopped before the run finished",
    "queued": "cancelled before it started",
}


def _cancel_error(reason: str | None, limit: float) -> dict[str, Any]:
    """The error object of a run cancelled for ``reason`` (or timed out after ``limit`` seconds)."""
    if reason == "timeout":
        return {
            "message": f"the run exceeded its timeout of {limit:g} s",
            "type": "Timeout",
            "step": None,
        }
    message = _CANCEL_MESSAGES.get(reason or "", "the engine stopped while the run was running")
    return {"message": message, "type": "Cancelled", "step": None}


def _internal_error(exc: BaseException, doing: str) -> dict[str, Any]:
    """The error object of a run the engine itself failed while ``doing`` something for it."""
    return {
        "message": f"internal error while {doing}: {type(exc).__name__}: {exc!r}"[:2000],
        "type": "InternalError",
        "step": None,
    }


def _store_failure(exc: CronstackError, doing: str) -> dict[str, Any]:
    """The error object of a run the database failed while ``doing`` something for it."""
    return {
        "message": f"the database failed while {doing}: {exc}",
        "type": exc.error_type,
        "step": None,
    }
