"""Serving: the scheduler, misfires, stored queued runs, history pruning.

These loops run only while the engine serves. The scheduler keeps every
active task's next fire in a heap (``engine._schedule.Timer``), fires all the
tasks due at one instant as one wave, and applies the overlap policy;
``Scheduling`` is a part of ``Engine``.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import anyio.lowlevel

from compiler import CompileError, Definitions, Diagnostic, Function, RequestHistory, Task
from compiler._lower import lower_stack
from engine._schedule import Schedule, ScheduleError
from runtime import CronstackError

__all__ = ("Scheduling", "schedules_of", "schedule_diagnostics", "iso_time")

db_log = logging.getLogger("cronstack.engine")

#: seconds (engine clock) before a queued run the database failed to start is tried again
QUEUE_RETRY = 1.0
#: tasks due within this many seconds when serving starts are compiled ahead (see Scheduling._warm_up)
WARM_HORIZON = 300.0
#: seconds between writes of the tasks' last fire times (see Scheduling._fired_at)
FIRE_FLUSH_INTERVAL = 2.0
#: fires due at one instant claimed together in one write (fewer go one by one, see _fire_wave)
WAVE_MIN = 2
#: seconds between checks, on a database several engines share, for runs left running by engines
#: that died (their liveness lock is free): those are marked crashed and retried (see _recover_loop)
RECOVER_INTERVAL = 10.0
#: seconds between reads, on a database several engines share, of the tasks' stored paused states:
#: a pause or resume made on another engine reaches this one's view within it (see _pause_loop).
#: Fires never wait for it: their claim reads the stored state itself (``claim_fires_checked``)
PAUSE_SYNC_INTERVAL = 1.0
#: the most missed fires one ``misfire: run_all`` catch-up runs; later ones are dropped (logged)
CATCHUP_MAX = 10_000


class Scheduling:
    """The loops of a serving engine (a part of ``Engine``)."""

    #: per task whose missed fires are being caught up: the last of them handled so far.
    #: The task's stored last fire stays there until the catch-up is done (see _flush_fires).
    _backlog: dict[str, float]
    #: runs being claimed of tasks with missed fires to catch up: run id -> an event set once
    #: the claim is done (made when a catch-up waits for it), see ``_holding``
    _holds: dict[str, asyncio.Event | None]

    async def _serve_loops(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        assert self._serving is not None
        with self._serving:
            self._backlog, self._holds = {}, {}
            now = self.clock.time()
            backlogs = await self._misfires(now)
            for row in await self.store.due_runs(float("inf"), 100_000):
                if row["id"] in self._active or row["id"] in self._storing:
                    continue  # its task already waits for a slot (or is being started): one execution per row
                self._queued_due[row["id"]] = row.get("not_before") or 0.0
                if row.get("trigger") == "schedule" and row.get("kind", "task") == "task":
                    # a fire left queued (a pending fire of overlap: queue): the task's pending one
                    self._queued_fire.setdefault(row["task"], row["id"])
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._schedule_loop, now)
                for name, fires, latest in backlogs:
                    tg.start_soon(self._run_missed, name, fires, latest)
                tg.start_soon(self._queue_loop)
                tg.start_soon(self._prune_loop)
                tg.start_soon(self._flush_loop)
                if getattr(self.store, "shared", False):
                    tg.start_soon(self._recover_loop)
                    tg.start_soon(self._pause_loop)
                task_status.started()

    async def _misfires(self, now: float) -> list[tuple[str, Iterator[float], float]]:
        """The fires missed while no engine served, per task: (name, fires in order, latest of them)."""
        backlogs = []
        for name, sched in self.schedules.items():
            if not self.is_active(name):
                continue
            try:
                backlog = await self._catch_up(name, sched, now)
            except CronstackError as exc:
                db_log.error("task %s: missed fires could not be caught up: %s", name, exc)
                continue
            if backlog is not None:
                backlogs.append(backlog)
        return backlogs

    async def _catch_up(self, name: str, sched: Schedule, now: float) -> tuple[str, Iterator[float], float] | None:
        """The fires of task ``name`` missed while no engine served that its misfire policy runs, or None.

        Only fires within ``misfire_grace`` of ``now`` are looked at, so the
        cost does not grow with the downtime: ``run_once`` finds the latest
        missed fire by bisection, ``run_all`` walks its fires lazily, as they
        run (see ``_run_missed``). A paused task fires nothing: its missed
        fires are dropped, and its last fire moves past them.
        """
        task = self.definitions.tasks[name]
        state = await self.store.get_task_state(name) or {}
        last = state.get("last_fire")
        if last is None:
            await self.store.set_task_state(name, last_fire=now)
            return None
        if task.misfire == "skip":
            return None
        # a fire t is eligible when last < t <= now and t >= now - grace (fires fall on whole seconds)
        since = max(last, math.ceil(now - task.misfire_grace) - 1)
        latest = last_fire_between(sched, since, now)
        if latest is None:
            return None
        if name in self._paused:
            db_log.info("task %s is paused: its fires missed up to %s are dropped", name, iso_time(latest))
            await self.store.set_task_state(name, last_fire=latest)
            return None
        if task.misfire == "run_once":
            return name, iter((latest,)), latest
        return name, fires_between(sched, since, now), latest

    async def _run_missed(self, name: str, fires: Iterator[float], latest: float) -> None:
        """Run a task's missed fires (``trigger: catchup``) in order, under its overlap policy.

        Each fire starts when the task may start one more run: with
        ``overlap: allow`` while fewer than ``max_concurrency`` of its runs
        are going, with any other policy once none is (so missed fires run one
        after another, never at once). A scheduled fire that comes meanwhile
        meets its overlap policy as usual (a catch-up run is a run of the
        task). If the task is paused meanwhile the rest are dropped; if it is
        removed or made inactive by a reload they are left. Until the last one
        is claimed the task's stored last fire stays at the last one claimed,
        so a restart picks up the rest (within the grace).
        """
        self._backlog[name] = float("-inf")
        count = 0
        for t in fires:
            if count >= CATCHUP_MAX:
                db_log.warning(
                    "task %s: %d missed fires caught up (misfire: run_all runs at most %d); "
                    "the later ones, %s to %s, are dropped",
                    name, count, CATCHUP_MAX, iso_time(t), iso_time(latest))
                break
            task = await self._slot_for_missed(name)
            if task is None:
                if self._stopping:
                    return  # the rest stay missed: the next start catches them up
                if name in self._paused:
                    db_log.info("task %s was paused: its missed fires up to %s are dropped", name, iso_time(latest))
                    break
                # removed or made inactive by a reload: the rest are left, the last fire stays
                del self._backlog[name]
                return
            await self._launch_missed(task, t)
            count += 1
            self._backlog[name] = t
            self._fired_at(name, t)
        # cancelled by stop() the task never gets here: its stored last fire stays at the last one claimed
        del self._backlog[name]
        self._fired_at(name, latest)

    async def _slot_for_missed(self, name: str) -> Task | None:
        """Wait until the task may start a catch-up run; its definition then, or None (stopping, paused, gone)."""
        while True:
            task = self.definitions.tasks.get(name)
            if task is None or self._stopping or name in self._paused or not self.is_active(name):
                return None
            running = self._running.get(name) or set()
            limit = task.max_concurrency if task.overlap == "allow" else 1
            if len(running) < limit:
                return task
            await self._any_run_done(running)

    async def _any_run_done(self, run_ids: set[str]) -> None:
        """Wait until one of a task's running runs ends (or one being claimed is started or dropped)."""
        events = []
        for rid in list(run_ids):
            active = self._active.get(rid)
            if active is not None:
                events.append(active.done())
            elif rid in self._holds:
                event = self._holds[rid]
                if event is None:
                    event = self._holds[rid] = asyncio.Event()
                events.append(event)
        if not events:  # pragma: no cover - a running run is in _active or held
            await anyio.lowlevel.checkpoint()
            return
        if len(events) == 1:
            await events[0].wait()
            return
        async with anyio.create_task_group() as tg:
            async def one(event: asyncio.Event) -> None:
                await event.wait()
                tg.cancel_scope.cancel()

            for event in events:
                tg.start_soon(one, event)

    @contextmanager
    def _holding(self, name: str, run_id: str) -> Iterator[None]:
        """While a run of ``name`` is claimed, count it as running (see ``_hold``)."""
        if not self._hold(name, run_id):
            yield
            return
        try:
            yield
        finally:
            self._unhold(name, run_id)

    def _hold(self, name: str, run_id: str) -> bool:
        """Count run ``run_id`` of ``name`` as running from now, while its row is claimed.

        A fire, a catch-up, a stored queued run or a pending fire decides by
        the task's running runs (overlap); a run being claimed is one of them
        before its claim commits, so two claims of one task never both see
        the task idle and start side by side. False when not serving (nothing
        then decides by it). ``_unhold`` ends it; ``_any_run_done`` waits for it.
        """
        holds = getattr(self, "_holds", None)
        if holds is None:
            return False
        running = self._running.get(name)
        if running is None:
            running = self._running[name] = set()
        running.add(run_id)
        holds[run_id] = None
        return True

    def _unhold(self, name: str, run_id: str) -> None:
        if run_id not in self._active:  # already claimed, refused, or not started
            running = self._running.get(name)
            if running is not None:
                running.discard(run_id)
        event = self._holds.pop(run_id, None)
        if event is not None:
            event.set()

    async def _launch_missed(self, task: Task, scheduled_at: float) -> None:
        """Claim and start one missed fire; a database error loses this fire only (logged)."""
        name = task.name
        row = self._row(name, "task", "catchup", scheduled_at=scheduled_at, attempt=1)
        try:
            # the run holds the task's place while its fire is claimed: a fire meanwhile sees it
            # running; and a claim committed must start its run: the shutdown cannot land in between
            with self._holding(name, row["id"]), anyio.CancelScope(shield=True):
                await self._launch(task, row, claim_fire=True)
        except CronstackError as exc:
            db_log.error("task %s: the missed fire at %s could not be recorded: %s",
                         name, iso_time(scheduled_at), exc)

    async def _schedule_loop(self, now: float) -> None:
        """Fire every active task's schedule after ``now`` (fires up to it are the misfires')."""
        from engine._schedule import Timer, wait_next

        timer = Timer()
        for name, sched in self.schedules.items():
            if self.is_active(name):
                nxt = sched.next_after(now)
                if nxt is not None:
                    timer.schedule(name, nxt)
                    self._next_fire[name] = nxt
        fired_by: dict[str, Schedule] = dict(self.schedules)
        self._spawn(self._warm_up(sorted((due, name) for name, due in self._next_fire.items())))
        while True:
            woken = await wait_next(self.clock, timer, self._wake)
            if woken:
                self._wake = anyio.Event()
                if self._reschedule:
                    self._reschedule = False
                    timer, fired_by = self._rebuild_timer(fired_by), dict(self.schedules)
                continue
            now = self.clock.time()
            wave = [(name, self._next_fire.pop(name)) for name in timer.pop_due(now)]
            if self._reschedule:  # a reload landed since the timer was built: its removed tasks fire no more
                wave = [(name, due) for name, due in wave if name in self.definitions.tasks]
            if not wave:
                continue
            self.lag = max(0.0, now - min(due for _name, due in wave))
            # fires first: next fire times can wait a moment
            if len(wave) >= WAVE_MIN:
                self._spawn(self._fire_wave(wave))
            else:
                for name, due in wave:
                    self._spawn(self._fire(name, due, "schedule"))
            await anyio.lowlevel.checkpoint()
            for name, due in wave:
                # a reload may have landed during the checkpoint: a removed task is not rescheduled
                sched = self.schedules.get(name)
                nxt = sched.next_after(due) if sched is not None else None
                if nxt is not None:
                    timer.schedule(name, nxt)
                    self._next_fire[name] = nxt

    async def _warm_up(self, due: list[tuple[float, str]]) -> None:
        """Compile, ahead of their first fire, the tasks due within ``WARM_HORIZON`` seconds.

        Loading leaves each stack's final compile() to its first run; doing it
        here, soonest fire first and one task per turn of the loop, keeps that
        cost off the first fire's latency.
        """
        from compiler._warm import warm_program

        horizon = self.clock.time() + WARM_HORIZON
        for when, name in due:
            if when > horizon:
                break
            task = self.definitions.tasks.get(name)
            if task is not None:
                # a task with request history on runs the traced variant (and so do the
                # functions it calls inline), one without it never does
                traced = task.request_history.enabled
                warm_program(task.program, traced=traced)
                for fn_name, _path in task.calls:
                    fn = self.functions.stacks.get(fn_name)
                    if fn is not None:
                        warm_program(fn.program, traced=traced)
            await asyncio.sleep(0)

    def _rebuild_timer(self, before: dict[str, Schedule]) -> Any:
        """The timer after a reload: unchanged schedules keep their next fire."""
        from engine._schedule import Timer

        timer = Timer()
        now = self.clock.time()
        next_fire = {}
        for name, sched in self.schedules.items():
            if not self.is_active(name):
                continue
            nxt = self._next_fire.get(name) if before.get(name) == sched else None
            if nxt is None:
                nxt = sched.next_after(now)
            if nxt is not None:
                timer.schedule(name, nxt)
                next_fire[name] = nxt
        self._next_fire = next_fire
        return timer

    async def _fire_wave(self, wave: list[tuple[str, float]]) -> None:
        """The fires due at one instant: their run rows claimed in one write, then their runs started.

        Each fire is what ``_fire_once`` would make of it (paused, queued or
        skipped by its overlap policy, or a run), decided in one pass without
        a task or a write of its own. A fire whose previous runs must be
        cancelled first (``cancel_previous``) goes on its own. If the
        database refuses the wave, every fire is tried on its own, so that an
        error loses only the fires it concerns (logged), as with single fires.
        """
        if self._stopping:
            return
        rows: list[dict[str, Any]] = []
        admitted: list[bool] = []
        tasks: list[Task | None] = []  # None: a pending fire (stored queued, started later)
        for name, due in wave:
            task = self.definitions.tasks.get(name)
            if task is None:  # removed by a reload
                continue
            row = self._wave_row(name, due)
            if row is not None:
                rows.append(row)
                admitted.append(row["status"] == "running")
                tasks.append(None if self._queued_fire.get(name) == row["id"] else task)
        if not rows:
            return
        # the fires to run count as running while they are claimed (see _hold)
        held = [(row["task"], row["id"]) for row, task in zip(rows, tasks, strict=True)
                if task is not None and row["status"] != "skipped" and self._hold(row["task"], row["id"])]
        try:
            await self._claim_wave(rows, admitted, tasks)
        finally:
            for name, run_id in held:
                self._unhold(name, run_id)

    async def _claim_wave(
        self, rows: list[dict[str, Any]], admitted: list[bool], tasks: list[Task | None]
    ) -> None:
        self._launch_begin()
        try:
            claimed = await self._claim_fires(rows)
        except BaseException as exc:
            for _ in range(sum(admitted)):  # the slots of the fires just admitted
                self._gate.release()
            if not isinstance(exc, CronstackError):
                raise
            db_log.error("%d fires at %s could not be recorded together, trying each alone: %s",
                         len(rows), iso_time(rows[0]["scheduled_at"]), exc)
            for row in rows:
                if self._queued_fire.get(row["task"]) == row["id"]:
                    del self._queued_fire[row["task"]]  # the fire alone decides again
                self._spawn(self._fire(row["task"], row["scheduled_at"], row["trigger"]))
            return
        finally:
            self._launch_end()
        for row, slot, outcome, task in zip(rows, admitted, claimed, tasks, strict=True):
            name = row["task"]
            if outcome != "claimed":  # another engine (or a catch-up) has this fire; or stored paused or skipped
                if slot:
                    self._gate.release()
                if task is None and self._queued_fire.get(name) == row["id"]:
                    del self._queued_fire[name]
                if outcome == "skipped":
                    self.runs_total[(name, "skipped")] = self.runs_total.get((name, "skipped"), 0) + 1
            elif row["status"] == "skipped":
                self.runs_total[(name, "skipped")] = self.runs_total.get((name, "skipped"), 0) + 1
            elif task is None:  # the task's pending fire (overlap: queue), stored queued
                self._queue_stored(row["id"], 0.0)
            else:
                self._start(task, row, slot)
            self._fired_at(name, row["scheduled_at"])

    async def _claim_fires(self, rows: list[dict[str, Any]]) -> list[str]:
        """Claim the run rows of fires; per row ``"claimed"``, ``"taken"`` (the fire has a row
        already), ``"skipped"`` or ``"paused"`` (see ``Store.claim_fires_checked``).

        One engine per database (SQLite) decides overlap and pause from memory,
        which is exact there: ``claim_fires``. Engines sharing a database see only
        their own runs and pauses in memory: the claim itself reads the task's
        stored paused state and counts its ``running`` runs of every engine (for
        ``skip`` and ``allow``), in one transaction, so two engines never both
        take a task for idle. A task found paused there is paused here from now.
        """
        store = self.store
        if not store.shared:
            if len(rows) == 1:  # a fire alone
                row = rows[0]
                return ["claimed" if await store.claim_fire(row["task"], row["scheduled_at"], row) else "taken"]
            return ["claimed" if new else "taken" for new in await store.claim_fires(rows)]
        limits = [self._stored_limit(row) for row in rows]
        outcomes = await store.claim_fires_checked(rows, limits)
        for row, outcome in zip(rows, outcomes, strict=True):
            if outcome == "paused" and row["task"] not in self._paused:
                self._paused.add(row["task"])
                db_log.info("task %s was paused by another engine: its fire at %s is dropped",
                            row["task"], iso_time(row["scheduled_at"]))
        return outcomes

    def _stored_limit(self, row: dict[str, Any]) -> int | None:
        """How many stored ``running`` runs of its task make fire ``row`` a skip (None: no count).

        ``skip``: one; ``allow``: ``max_concurrency``. ``queue`` and
        ``cancel_previous`` count this engine's runs only (docs/store.md), and a
        row already decided (a skip, a pending fire) is claimed as it is.
        """
        if row["status"] == "skipped" or self._queued_fire.get(row["task"]) == row["id"]:
            return None
        task = self.definitions.tasks.get(row["task"])
        if task is None or task.overlap in ("queue", "cancel_previous"):
            return None
        return task.max_concurrency if task.overlap == "allow" else 1

    async def _pause_loop(self) -> None:
        """On a shared database, every ``PAUSE_SYNC_INTERVAL`` seconds: the tasks' paused states as
        stored, so that a pause or resume made on another engine reaches this one (``_sync_paused``)."""
        while True:
            await self.clock.sleep(PAUSE_SYNC_INTERVAL)
            try:
                await self._sync_paused()
            except CronstackError as exc:  # tried again at the next round
                db_log.error("the tasks' paused states could not be read: %s", exc)

    def _wave_row(self, name: str, scheduled_at: float) -> dict[str, Any] | None:
        """The row one fire of a wave claims (a run, admitted if a slot is free, a pending
        fire stored ``queued``, or a skip), or None.

        None when there is nothing to claim now: the task is paused, or its
        fire goes on its own (``cancel_previous``).
        """
        decision = self._decide(name, scheduled_at, "schedule")
        if decision == "paused":
            self._fired_at(name, scheduled_at)
            return None
        if decision == "queued":
            return self._pending_row(name, scheduled_at, "schedule")
        if decision == "supersede":
            self._spawn(self._fire(name, scheduled_at, "schedule"))
            return None
        if decision == "skip":
            return self._skipped_row(name, scheduled_at, "schedule", self.definitions.tasks[name].overlap)
        row = self._row(name, "task", "schedule", scheduled_at=scheduled_at, attempt=1)
        self._admit(row)
        return row

    def _decide(self, name: str, scheduled_at: float, trigger: str) -> str:
        """What a fire of ``name`` becomes now, by pause state and overlap policy (one place for both paths).

        ``"paused"``; ``"queued"`` (the task's one pending fire: the caller
        stores it as a ``queued`` run, see ``_pending_row``); ``"supersede"``
        (cancel the running runs first); ``"skip"``; or ``"run"``.
        """
        if name in self._paused:
            return "paused"
        running = self._running.get(name)
        if running:
            task = self.definitions.tasks[name]
            policy = task.overlap
            if policy == "queue" and name not in self._queued_fire:
                return "queued"
            if policy == "cancel_previous":
                return "supersede"
            if policy != "allow" or len(running) >= task.max_concurrency:
                return "skip"
        return "run"

    def _pending_row(self, name: str, scheduled_at: float, trigger: str) -> dict[str, Any]:
        """The row of a task's pending fire (``overlap: queue``): stored ``queued``, it survives a
        shutdown or a crash, and starts (as stored queued runs do, see ``_claim_and_start``)
        once the task's running run ends. It is the task's one pending fire until it starts."""
        row = self._row(name, "task", trigger, scheduled_at=scheduled_at, attempt=1)
        self._queued_fire[name] = row["id"]
        return row

    def _queue_stored(self, run_id: str, due: float) -> None:
        """Have the queue loop start stored queued run ``run_id`` once ``due``."""
        self._queued_due[run_id] = due
        self._queue_wake.set()

    def _skipped_row(self, name: str, scheduled_at: float, trigger: str, policy: str) -> dict[str, Any]:
        row = self._row(name, "task", trigger, scheduled_at=scheduled_at, attempt=1)
        row.update(status="skipped", finished_at=self.clock.time(), error={
            "message": f"skipped: the previous run was still running (overlap: {policy})", "type": "Skipped", "step": None})
        return row

    async def _fire(self, name: str, scheduled_at: float, trigger: str) -> None:
        """One scheduled fire; a database error loses this fire only (logged), never the scheduler."""
        try:
            await self._fire_once(name, scheduled_at, trigger)
        except CronstackError as exc:
            db_log.error("task %s: the fire at %s could not be recorded: %s", name, iso_time(scheduled_at), exc)

    async def _fire_once(self, name: str, scheduled_at: float, trigger: str) -> None:
        task = self.definitions.tasks.get(name)
        if task is None or self._stopping:  # removed by a reload since the fire was due
            return
        decision = self._decide(name, scheduled_at, trigger)
        if decision == "paused":
            self._fired_at(name, scheduled_at)
            return
        if decision == "queued":
            row = self._pending_row(name, scheduled_at, trigger)
            stored = False
            try:
                stored = (await self._claim_fires([row]))[0] == "claimed"
            finally:
                if not stored and self._queued_fire.get(name) == row["id"]:
                    del self._queued_fire[name]  # refused, or another engine has this fire
            if stored:
                self._queue_stored(row["id"], 0.0)
            self._fired_at(name, scheduled_at)
            return
        if decision == "skip":
            row = self._skipped_row(name, scheduled_at, trigger, task.overlap)
            # "taken": another engine has this fire (its run or skip is counted there)
            if (await self._claim_fires([row]))[0] in ("claimed", "skipped"):
                self.runs_total[(name, "skipped")] = self.runs_total.get((name, "skipped"), 0) + 1
            self._fired_at(name, scheduled_at)
            return
        row = self._row(name, "task", trigger, scheduled_at=scheduled_at, attempt=1)
        with self._holding(name, row["id"]):
            if decision == "supersede":
                for run_id in list(self._running.get(name, ())):
                    active = self._active.get(run_id)
                    if active is not None:
                        active.cancel("superseded")
                        await active.done().wait()
                if self._stopping or self._serving is None:
                    return  # stop() began (or ended) meanwhile: a stopped engine fires nothing
            await self._launch(task, row, claim_fire=True)
        self._fired_at(name, scheduled_at)

    def _fired_at(self, name: str, scheduled_at: float) -> None:
        """Remember a task's last fire; ``_flush_fires`` writes them in one go.

        The last fire only tells the next start which fires were missed. Each
        fire's run row is unique per (task, time), so a last fire written late
        (or lost in a crash) can never make a fire run twice: the catch-up's
        claim of an already-run fire simply fails.
        """
        if scheduled_at > self._fired.get(name, float("-inf")):
            self._fired[name] = scheduled_at

    async def _flush_fires(self) -> None:
        fired, self._fired = self._fired, {}
        backlog = getattr(self, "_backlog", {})
        for name, ts in fired.items():
            held = backlog.get(name)
            if held is not None and ts > held:
                # missed fires after `held` still wait their turn: a restart must still see them missed
                self._fired_at(name, ts)
                if held == float("-inf"):
                    continue
                ts = held
            try:
                await self.store.set_task_state(name, last_fire=ts)
            except CronstackError as exc:
                db_log.error("task %s: its last fire could not be stored: %s", name, exc)

    async def _flush_loop(self) -> None:
        while True:
            await self.clock.sleep(FIRE_FLUSH_INTERVAL)
            await self._flush_fires()

    async def _queue_loop(self) -> None:
        """Start stored queued runs (retries, async calls left by a restart) when due."""
        while True:
            now = self.clock.time()
            due = sorted((t, rid) for rid, t in self._queued_due.items() if t <= now)
            for _t, run_id in due:
                self._queued_due.pop(run_id, None)
                try:
                    await self._start_queued(run_id, now)
                except CronstackError as exc:  # the row stays queued: try again in a while
                    db_log.error("queued run %s could not be started, retrying in %g s: %s",
                              run_id, QUEUE_RETRY, exc)
                    self._queued_due[run_id] = now + QUEUE_RETRY
            pending = [t for t in self._queued_due.values()]

            nxt = min(pending) if pending else None
            with anyio.move_on_after(3600):
                if nxt is None:
                    await self._queue_wake.wait()
                else:
                    async with anyio.create_task_group() as tg:
                        async def sleep_then_cancel(until: float = nxt) -> None:
                            await self.clock.sleep(max(0.0, until - self.clock.time()))
                            tg.cancel_scope.cancel()

                        async def woken() -> None:
                            await self._queue_wake.wait()
                            tg.cancel_scope.cancel()

                        tg.start_soon(sleep_then_cancel)
                        tg.start_soon(woken)
            self._queue_wake = anyio.Event()

    async def _start_queued(self, run_id: str, now: float) -> None:
        """Claim a stored queued run and start it.

        Claiming and starting are one step for ``stop()``: it waits for both,
        and the shutdown's cancellation of the serving loops cannot land
        between a committed claim and the run's start (which would leave the
        row ``running`` with nothing running it).
        """
        if self._stopping:
            return
        self._launch_begin()
        try:
            with anyio.CancelScope(shield=True):
                await self._claim_and_start(run_id, now)
        finally:
            self._launch_end()

    async def _claim_and_start(self, run_id: str, now: float) -> None:
        """Start stored queued run ``run_id`` (a retry, a pending fire, a run a restart left queued).

        A run of a task waits, still a stored ``queued`` row, while the task
        is paused (until ``resume``) or while its overlap policy lets no more
        of its runs go (``allow``: ``max_concurrency`` running; any other
        policy: one), until one of them ends (see ``_defer``).
        """
        if run_id in self._active or run_id in self._storing:  # a copy here starts it: a row runs once
            return
        row = await self.store.get_run(run_id)
        if row is None or row["status"] != "queued" or run_id in self._active or run_id in self._storing:
            self._forget_queued(run_id)
            return
        name = row["task"]
        defn: Task | Function | None
        if row.get("kind", "task") == "task":
            defn = self.definitions.tasks.get(name)
        else:
            defn = self.functions.stacks.get(name)
            if defn is None and name in self.functions.python:
                defn = python_function(name)  # as start_function_run runs it
        if defn is None:
            self._forget_queued(run_id)
            # only while still queued: a cancel (or another engine's claim) since get_run keeps the
            # row. A crash between the claim and the outcome leaves it running: recovery marks it crashed
            if await self.store.claim_run(run_id, self.engine_id, now):
                await self.store.finish_run(run_id, {
                    "status": "failed", "started_at": None, "finished_at": now, "error": {
                        "message": f"'{name}' is no longer defined", "type": "UnknownTask", "step": None}})
                self.runs_total[(name, "failed")] = self.runs_total.get((name, "failed"), 0) + 1
            return
        if not isinstance(defn, Task):
            # held while claimed, as a task's run is (a cancel meanwhile waits for the start and
            # cancels the run, see Engine.cancel), but not counted in _running: that is per task,
            # and a task may share the function's name
            self._holds[run_id] = None
            try:
                if await self.store.claim_run(run_id, self.engine_id, now):
                    row.update(status="running", started_at=now)
                    await self._launch(defn, row, claimed=True)
            finally:
                event = self._holds.pop(run_id, None)
                if event is not None:
                    event.set()
            return
        if name in self._paused:  # resume() puts it back in the queue
            self._parked.setdefault(name, set()).add(run_id)
            return
        running = self._running.get(name)
        if running and len(running) >= (defn.max_concurrency if defn.overlap == "allow" else 1):
            self._defer(name, run_id)
            return
        with self._holding(name, run_id):
            if not await self.store.claim_run(run_id, self.engine_id, now):
                self._forget_queued(run_id)
                return
            if self._queued_fire.get(name) == run_id:
                del self._queued_fire[name]  # started: the next fire may wait in its place
            row.update(status="running", started_at=now)
            await self._launch(defn, row, claimed=True)

    def _defer(self, name: str, run_id: str) -> None:
        """Stored queued run ``run_id`` waits until one of its task's running runs ends."""
        waiting = self._deferred.get(name)
        if waiting is None:
            waiting = self._deferred[name] = set()
            self._spawn(self._undefer(name))
        waiting.add(run_id)

    async def _undefer(self, name: str) -> None:
        """Once one of task ``name``'s running runs ends, its deferred queued runs try again."""
        try:
            running = self._running.get(name)
            if running:
                await self._any_run_done(running)
        finally:
            now = self.clock.time()
            for run_id in self._deferred.pop(name, ()):
                self._queued_due[run_id] = now
            self._queue_wake.set()

    def _forget_queued(self, run_id: str) -> None:
        """Run ``run_id`` is no longer a stored queued run this engine waits to start."""
        self._queued_due.pop(run_id, None)
        for held in (self._parked, self._deferred):
            for ids in held.values():
                if run_id in ids:
                    ids.discard(run_id)
                    break
        for name, pending in list(self._queued_fire.items()):
            if pending == run_id:
                del self._queued_fire[name]

    async def _recover_loop(self) -> None:
        """On a shared database (PostgreSQL), an engine that dies while others serve leaves runs
        ``running``; every ``RECOVER_INTERVAL`` seconds the serving engines look for them (only
        runs whose engine's liveness lock is free) and mark them crashed and retried, each once."""
        while True:
            await self.clock.sleep(RECOVER_INTERVAL)
            try:
                found = await self._recover_dead_engines()
            except CronstackError as exc:  # tried again at the next round
                db_log.error("runs of stopped engines could not be recovered: %s", exc)
                continue
            if found:
                db_log.warning("%d runs of engines that stopped were marked crashed", found)

    async def _prune_loop(self) -> None:
        while True:
            now = self.clock.time()
            tasks = self.definitions.tasks.values()
            for task in tasks:
                days = task.request_history.retention_days
                try:
                    await self.store.prune_history(task.name, now - days * 86400)
                except CronstackError as exc:  # pruning waits for the next round
                    db_log.error("task %s: old history could not be pruned: %s", task.name, exc)
            # the rest: runs of functions (async calls) and of definitions since removed,
            # kept as long as the longest-kept task's (no task history outlives them)
            longest = max((t.request_history.retention_days for t in tasks), default=RequestHistory().retention_days)
            try:
                await self.store.prune_history(None, now - longest * 86400)
            except CronstackError as exc:
                db_log.error("old history of functions could not be pruned: %s", exc)
            await self.clock.sleep(self.config.prune_interval)


def python_function(name: str) -> Function:
    """The definition a run of registered Python function ``name`` runs under (its call is by name)."""
    return Function(name=name, program=lower_stack([], name).program)


def schedules_of(defs: Definitions) -> dict[str, Schedule]:
    """Every scheduled task's ``Schedule``; an invalid one is a compile error at the field at fault.

    That is ``schedule`` for the cron expression (or ``cron_day_match``) and
    ``timezone`` for an unknown zone; both when both are wrong.
    """
    schedules, diags = {}, []
    for task in defs.tasks.values():
        if task.schedule is None:
            continue
        try:
            schedules[task.name] = Schedule(task.schedule, task.timezone, task.cron_day_match)
        except ScheduleError as exc:
            diags += schedule_diagnostics(task, exc)
    if diags:
        raise CompileError(diags)
    return schedules


def schedule_diagnostics(task: Task, exc: ScheduleError) -> list[Diagnostic]:
    """The diagnostics of a task whose ``Schedule`` raised ``exc``, each at the JSON path at fault."""
    diags = []
    for path, args in (("schedule", (task.schedule, "UTC", task.cron_day_match)),
                       ("timezone", ("* * * * *", task.timezone))):
        try:
            Schedule(*args)
        except ScheduleError as part:
            diags.append(Diagnostic(part.message, path, task.file))
    return diags or [Diagnostic(exc.message, "schedule", task.file)]


def last_fire_between(sched: Schedule, after: float, now: float) -> float | None:
    """The latest fire ``t`` of ``sched`` with ``after < t <= now``, or None.

    Bisection on ``next_after`` (fires fall on whole seconds, and the fire
    after ``s`` never comes before the one after an earlier ``s``): about
    log2(now - after) calls, however many fires lie in between.
    """
    lo = math.floor(after)
    first = sched.next_after(lo)
    if first is None or first > now:
        return None
    hi = math.floor(now)  # the fire after it is after now
    while hi - lo > 1:  # invariant: next_after(lo) <= now < next_after(hi) (or None)
        mid = (lo + hi) // 2
        t = sched.next_after(mid)
        if t is not None and t <= now:
            lo = mid
        else:
            hi = mid
    return sched.next_after(lo)


def fires_between(sched: Schedule, after: float, now: float) -> Iterator[float]:
    """The fires ``t`` of ``sched`` with ``after < t <= now`` in order, computed as they are taken."""
    t = sched.next_after(after)
    while t is not None and t <= now:
        yield t
        t = sched.next_after(t)




def iso_time(ts: float | None) -> str | None:
    """ISO-8601 UTC text of a Unix time (None stays None)."""
    if ts is None:
        return None
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).isoformat()
