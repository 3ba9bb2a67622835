"""The engine: turns compiled tasks into runs, records them, and serves them.

One ``Engine`` owns a store (its runs and the stacks' tables), an HTTP client,
the function table and, while serving, the scheduler. Every run goes through
``_launch``: admission by the fair gate, a durable row, the VM under a cancel
scope (timeout, cancel, shutdown), then a shielded final write and, when the
policy says so, a stored retry.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup

from compiler import (
    CompileError,
    Definitions,
    Diagnostic,
    Function,
    Task,
    check_calls,
    load_definitions,
)
from compiler._lower import lower_stack
from engine._api.metrics import DurationHistogram
from engine._config import EngineConfig, load_config
from engine._functions import FunctionTable, PyFunction
from engine._gate import FairGate
from engine._http import HttpClient
from engine._schedule import RealClock, Schedule, ScheduleError
from engine._store import open_store
from engine._trace import RunTrace
from runtime import CronstackError, RunContext, RunFailed
from runtime._vm import execute

db_log = logging.getLogger("cronstack.engine")

__all__ = ("Engine", "UnknownTask", "RunStatus", "new_run_id")

#: one line per run start and finish: ``run started id=... task=... trigger=... attempt=...``
run_log = logging.getLogger("cronstack.runs")

#: real seconds between attempts at a run's final write when the database refuses it
FINAL_WRITE_BACKOFF = (0.05, 0.25, 1.0)
#: seconds (engine clock) before a queued run the database failed to start is tried again
QUEUE_RETRY = 1.0
#: tasks due within this many seconds when serving starts are compiled ahead (see Engine._warm_up)
WARM_HORIZON = 300.0
#: seconds between writes of the tasks' last fire times (see Engine._fired_at)
FIRE_FLUSH_INTERVAL = 2.0
FINISHED = frozenset({"completed", "failed", "timed_out", "cancelled", "skipped", "crashed"})
RETRYABLE = frozenset({"failed", "timed_out", "crashed"})


class RunStatus:
    QUEUED, RUNNING, COMPLETED, FAILED = "queued", "running", "completed", "failed"
    TIMED_OUT, CANCELLED, SKIPPED, CRASHED = "timed_out", "cancelled", "skipped", "crashed"


class UnknownTask(LookupError):
    """No task of that name is loaded."""

    def __init__(self, name: str, known: Iterable[str] = ()) -> None:
        from compiler._errors import did_you_mean

        hint = did_you_mean(name, known)
        super().__init__(f"no task named '{name}'" + (f"; {hint}" if hint else ""))
        self.name = name


def new_run_id(now: float | None = None) -> str:
    """Run ids sort by creation time: 12 hex digits of milliseconds, then 8 random ones."""
    ms = int((time.time() if now is None else now) * 1000)
    return f"{ms:012x}{secrets.token_hex(4)}"


@dataclass(slots=True)
class _Active:
    """A run that is executing: its task, and why it was cancelled (if it was).

    Runs are plain asyncio tasks: creating an anyio task and cancel scope per
    run cost more than the rest of a short run. Every cancellation of a run
    goes through ``cancel`` with a reason, which is how the run tells a
    timeout, a user's cancel, a newer fire and a shutdown apart.
    """

    task: str
    row: dict[str, Any]
    handle: asyncio.Task[Any] | None = None
    reason: str | None = None
    #: the outcome is being written: too late to cancel
    finishing: bool = False
    finished: bool = False
    #: the timeout under an injected clock: a task sleeping on it, or its timer handle
    watchdog: Any = None
    _event: asyncio.Event | None = None

    def cancel(self, reason: str) -> None:
        if self.finishing or self.finished:
            return
        self.reason = self.reason or reason
        if self.handle is not None:
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


def _sqlite_default(project_dir: Path | None) -> str:
    if project_dir is not None:
        return f"sqlite:///{project_dir / 'cronstack.db'}"
    return "sqlite:///:memory:"


class Engine:
    """Runs background tasks. Open it with ``Engine.open(...)``; see the README."""

    def __init__(
        self,
        defs: Definitions,
        config: EngineConfig,
        *,
        project_dir: Path | None,
        clock: Any,
        env: dict[str, str],
    ) -> None:
        self.definitions = defs
        self.config = config
        self.project_dir = project_dir
        self.clock = clock
        self.env = env
        self.engine_id = f"{os.getpid()}-{secrets.token_hex(4)}"
        self.functions = FunctionTable(self, defs.functions)
        self.schedules: dict[str, Schedule] = {}
        self.store: Any = None
        self._sources: dict[str, Any] = {}
        self.http: HttpClient | None = None
        self._tg: TaskGroup | None = None
        #: plain tasks of runs and fires, cancelled with the engine
        self._tasks: set[asyncio.Task[Any]] = set()
        #: last fire per task not yet written (flushed in batches, see _flush_fires)
        self._fired: dict[str, float] = {}
        #: set by reload(): the scheduler rebuilds its timer on its next wake
        self._reschedule = False
        self._gate = FairGate(config.max_running)
        self._active: dict[str, _Active] = {}
        self._running: dict[str, set[str]] = {name: set() for name in defs.tasks}
        self._pending: dict[str, tuple[float, str]] = {}
        self._paused: set[str] = set()
        self._serving: anyio.CancelScope | None = None
        self._wake: anyio.Event = anyio.Event()
        self._queue_wake: anyio.Event = anyio.Event()
        self._queued_due: dict[str, float] = {}
        self._next_fire: dict[str, float] = {}
        self._secrets = [v for v in env.values() if isinstance(v, str) and len(v) >= 4]
        self._trace_secrets = RunTrace.prepare(self._secrets)
        self._real_clock = isinstance(clock, RealClock)
        self.api: Any = None
        self.api_url: str | None = None
        self.lag = 0.0
        self.runs_total: dict[tuple[str, str], int] = {}
        self.durations = DurationHistogram()
        self._next_cache: dict[str, float] = {}
        self._stopping = False
        self._launching = 0
        self._launch_idle = anyio.Event()

    # -- opening and closing ------------------------------------------------------------
    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        source: str | os.PathLike[str] | Iterable[dict[str, Any]],
        *,
        database: str | None = None,
        env: dict[str, str] | None = None,
        clock: Any = None,
        config: EngineConfig | None = None,
    ) -> AsyncIterator[Engine]:
        """Compile ``source`` (a project folder or definition dicts), open the store, recover.

        ``database`` overrides the configured URL (default
        ``sqlite:///DIR/cronstack.db``, or an in-memory database for a list of
        definitions). Raises ``CompileError`` listing every problem.
        """
        project_dir = Path(source) if isinstance(source, str | os.PathLike) else None
        if project_dir is not None and not project_dir.is_dir():
            raise CompileError(Diagnostic(f"'{project_dir}' is not a folder of definitions", file=str(project_dir)))
        cfg = config or load_config(project_dir)
        defs = load_definitions(project_dir if project_dir is not None else list(source))  # type: ignore[arg-type]
        engine = cls(defs, cfg, project_dir=project_dir, clock=clock or RealClock(), env=cfg.environment(env))
        engine._compile_schedules()
        if cfg.tune_gc:
            _tune_gc()
        url = database or cfg.database or _sqlite_default(project_dir)
        # URLs written in cronstack.toml are relative to the project and may not leave it
        inside = project_dir if database is None and cfg.database else None
        engine.store = await open_store(url, indexes=cfg.indexes, synchronous=cfg.synchronous,
                                        clock=engine.clock.time, base_dir=inside)
        try:
            for name, src_url in cfg.data_sources.items():
                engine._sources[name] = await open_store(src_url, indexes=cfg.indexes, synchronous=cfg.synchronous,
                                                         clock=engine.clock.time, base_dir=project_dir)
            engine.http = HttpClient(max_response_bytes=cfg.http_max_response_bytes)
            async with engine._background():
                await engine._load_state()
                await engine._recover()
                try:
                    yield engine
                finally:
                    await engine.stop()
        finally:
            if engine.http is not None:
                await engine.http.close()
            for store in engine._sources.values():
                await store.close()
            await engine.store.close()

    @asynccontextmanager
    async def _background(self) -> AsyncIterator[None]:
        """The engine's task group, hosted in a task of its own.

        Exceptions raised by the code inside ``Engine.open`` then reach the
        caller as they are, not wrapped in an exception group.
        """
        ready, done = anyio.Event(), anyio.Event()

        async def host() -> None:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                ready.set()
                await done.wait()
                tg.cancel_scope.cancel()

        hosting = asyncio.get_running_loop().create_task(host())
        await ready.wait()
        try:
            yield
        finally:
            done.set()
            with anyio.CancelScope(shield=True):
                for task in list(self._tasks):
                    task.cancel()
                if self._tasks:
                    await asyncio.wait(list(self._tasks))
                await hosting

    def _compile_schedules(self) -> None:
        self.schedules = _schedules_of(self.definitions)

    async def reload(self) -> dict[str, int]:
        """Recompile the project folder and switch to it without a restart.

        History, pauses and last fires are kept (they live in the store); runs
        in progress finish on the definitions they started with; schedules that
        did not change keep their next fire. On any compile error nothing
        changes and ``CompileError`` lists every problem.
        """
        if self.project_dir is None:
            raise CompileError(Diagnostic("only an engine opened on a project folder can reload it"))
        defs = load_definitions(self.project_dir)
        schedules = _schedules_of(defs)
        if self._serving is not None:
            unresolved = check_calls(defs, self.functions.python)
            if unresolved:
                raise CompileError(unresolved)
        self.definitions = defs
        self.functions.stacks = defs.functions
        self.schedules = schedules
        for name in defs.tasks:
            self._running.setdefault(name, set())
        self._next_cache.clear()
        self._reschedule = True
        self._wake.set()
        db_log.info("reloaded %s: %d tasks, %d functions", self.project_dir, len(defs.tasks), len(defs.functions))
        return {"tasks": len(defs.tasks), "functions": len(defs.functions)}

    async def _load_state(self) -> None:
        for name in self.definitions.tasks:
            state = await self.store.get_task_state(name)
            if state and state.get("paused"):
                self._paused.add(name)

    async def _recover(self) -> None:
        """Runs a dead engine left ``running`` become ``crashed`` and retry under their policy.

        An attempt whose retry was already stored (it died between storing
        the retry and its own outcome) is not retried twice.
        """
        for row in await self.store.recover_running(self.engine_id):
            task = self.definitions.tasks.get(row["task"])
            if task is not None and row.get("kind", "task") == "task" and not await self._has_retry(row):
                await self._maybe_retry(task, row, "crashed")

    async def _has_retry(self, row: dict[str, Any], page: int = 500, max_pages: int = 20) -> bool:
        """Whether a retry of run ``row`` is stored (runs of its task created since, newest first)."""
        since = row.get("created_at") or 0.0
        for n in range(max_pages):
            runs = await self.store.list_runs(row["task"], limit=page, offset=n * page)
            if any(r.get("parent_id") == row["id"] for r in runs):
                return True
            if len(runs) < page or (runs[-1].get("created_at") or 0.0) < since:
                return False
        return False

    def records_for(self, data_source: str | None) -> Any:
        if data_source is None or data_source not in self._sources:
            return self.store
        return self._sources[data_source]

    # -- public API -----------------------------------------------------------------------
    def task_names(self) -> list[str]:
        return sorted(self.definitions.tasks)

    def _task(self, name: str) -> Task:
        task = self.definitions.tasks.get(name)
        if task is None:
            raise UnknownTask(name, self.definitions.tasks)
        return task

    def register_function(self, name: str, fn: PyFunction) -> None:
        """Make a Python callable (async or sync; sync ones run in a thread) callable from stacks."""
        self.functions.register(name, fn)

    async def trigger(
        self, name: str, *, wait: bool = False, trigger: str = "manual", source: str | None = None
    ) -> str | dict[str, Any]:
        """Start a run of task ``name`` now; its id, or with ``wait`` the finished run."""
        task = self._task(name)
        now = self.clock.time()
        row = self._row(task.name, "task", trigger, scheduled_at=now, attempt=1)
        if source:
            row["inputs"] = {"trigger_source": source}
        active = await self._launch(task, row)
        if not wait:
            return row["id"]
        await active.done().wait()
        run = await self.store.get_run(row["id"])
        return self._public(run)

    async def run_stack(self, stack: list[Any], variables: dict[str, Any] | None = None) -> Any:
        """Compile and run ``stack`` once, outside any task; its ``return`` value or None."""
        low = lower_stack(stack, "stack", extra_names=frozenset(variables or ()))
        diags = low.diagnostics + [d for d in check_calls(_calls_only(low.calls), self.functions.names())]
        if diags:
            raise CompileError(diags)
        ctx = RunContext(records=self.store, http=self.http, functions=self.functions, clock=self.clock,
                         env=self.env, task={"name": None, "run_id": None, "attempt": 1, "scheduled_at": None, "trigger": "manual"})
        return await execute(low.program, ctx, variables)

    async def runs(
        self, task: str | None = None, *, status: str | None = None, limit: int = 50, offset: int = 0,
        newest_first: bool = True,
    ) -> list[dict[str, Any]]:
        if task is not None:
            self._task(task)
        rows = await self.store.list_runs(task, status=status, limit=limit, offset=offset, newest_first=newest_first)
        return [self._public(r) for r in rows]

    async def run(self, run_id: str, *, trace: bool = True) -> dict[str, Any] | None:
        row = await self.store.get_run(run_id)
        if row is None:
            return None
        out = self._public(row)
        if trace:
            entries = await self.store.get_trace(run_id)
            out["trace"] = [e for e in entries if e.get("kind") != "log"]
            out["logs"] = [e for e in entries if e.get("kind") == "log"]
        return out

    async def pause(self, name: str) -> None:
        self._task(name)
        self._paused.add(name)
        await self.store.set_task_state(name, paused=True)

    async def resume(self, name: str) -> None:
        self._task(name)
        self._paused.discard(name)
        await self.store.set_task_state(name, paused=False)
        self._wake.set()

    async def cancel(self, run_id: str) -> bool:
        """Cancel a running or queued run; False when it already finished or is unknown."""
        active = self._active.get(run_id)
        if active is not None:
            if active.finishing or active.finished:
                await active.done().wait()
                return False
            active.cancel("cancel")
            await active.done().wait()
            return True
        row = await self.store.get_run(run_id)
        if row is None or row["status"] != "queued":
            return False
        now = self.clock.time()
        self._queued_due.pop(run_id, None)
        await self.store.update_run(run_id, {"status": "cancelled", "finished_at": now,
                                             "error": {"message": "cancelled before it started", "type": "Cancelled", "step": None}})
        return True

    def next_execution(self, name: str) -> float | None:
        sched = self.schedules.get(name)
        if sched is None or not self.is_active(name) or name in self._paused:
            return None
        nxt = self._next_fire.get(name)
        if nxt is not None:
            return nxt
        now = self.clock.time()
        cached = self._next_cache.get(name)
        if cached is None or cached <= now:
            cached = sched.next_after(now)
            if cached is None:
                return None
            self._next_cache[name] = cached
        return cached

    def is_active(self, name: str) -> bool:
        """Active in its definition and every variable of ``requires_env`` set."""
        task = self.definitions.tasks[name]
        return task.active and all(self.env.get(var) for var in task.requires_env)

    def task_status(self, name: str) -> str:
        if not self.is_active(name):
            return "inactive"
        if self._running.get(name):
            return "running"
        if name in self._paused:
            return "paused"
        return "idle"

    async def tasks(self) -> list[dict[str, Any]]:
        """Every task with its status, next fire and last run (yields to the loop as it goes)."""
        last = await self.store.last_runs()
        out = []
        for i, name in enumerate(self.task_names()):
            out.append(self._task_info(name, last.get(name)))
            if i % 500 == 499:
                await anyio.lowlevel.checkpoint()
        return out

    async def task(self, name: str) -> dict[str, Any]:
        task = self._task(name)
        last = await self.store.list_runs(name, limit=10)
        info = self._task_info(name, last[0] if last else None)
        sched = self.schedules.get(name)
        from datetime import UTC, datetime

        info["next_fires"] = [
            d.astimezone(UTC).isoformat() for d in (sched.next_fires(datetime.fromtimestamp(self.clock.time(), UTC), 5) if sched else [])
        ]
        info["definition"] = task.source
        info["recent_runs"] = [self._public(r) for r in last]
        return info

    def _task_info(self, name: str, last: dict[str, Any] | None) -> dict[str, Any]:
        task = self.definitions.tasks[name]
        nxt = self.next_execution(name)
        return {
            "name": name,
            "description": task.description,
            "tags": list(task.tags),
            "schedule": task.schedule,
            "timezone": task.timezone,
            "active": self.is_active(name),
            "requires_env": [v for v in task.requires_env if not self.env.get(v)],
            "paused": name in self._paused,
            "status": self.task_status(name),
            "next_execution": _iso(nxt),
            "last_run": self._public(last) if last else None,
        }

    def stats(self) -> dict[str, Any]:
        return {
            "running": len(self._active),
            "queued": self._gate.queued + len(self._queued_due),
            "scheduler_lag_seconds": self.lag,
            "runs_total": dict(self.runs_total),
            "run_durations": self.durations.snapshot(),
            "tasks": len(self.definitions.tasks),
            "serving": self._serving is not None,
        }

    # -- runs -----------------------------------------------------------------------------
    def _row(self, task: str, kind: str, trigger: str, *, scheduled_at: float | None, attempt: int,
             parent_id: str | None = None, inputs: dict[str, Any] | None = None) -> dict[str, Any]:
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

    async def _launch(self, defn: Task | Function, row: dict[str, Any], *, claim_fire: bool = False,
                      claimed: bool = False) -> _Active | None:
        """Admit, record and start a run. Returns None when a scheduled fire was already claimed."""
        admitted = self._gate.try_acquire()
        if admitted:
            row["status"], row["started_at"] = "running", self.clock.time()
        # stop() waits for launches in flight: a run recorded while stopping must be seen and stopped
        if not self._launching:
            self._launch_idle = anyio.Event()
        self._launching += 1
        stored = False
        try:
            if claim_fire:
                stored = await self.store.claim_fire(row["task"], row["scheduled_at"], row)
                if not stored:
                    return None
            elif claimed:
                if admitted:
                    await self.store.update_run(row["id"], {"status": "running", "started_at": row["started_at"], "engine_id": self.engine_id})
            else:
                await self.store.insert_run(row)
            stored = True
        finally:
            if not stored and admitted:  # already claimed, or the database refused: free the slot
                self._gate.release()
            self._launching -= 1
            if not self._launching:
                self._launch_idle.set()
        active = _Active(row["task"], row)
        self._active[row["id"]] = active
        if isinstance(defn, Task):
            self._running.setdefault(defn.name, set()).add(row["id"])
        active.handle = self._spawn(self._execute(defn, row, active, admitted))
        if run_log.isEnabledFor(logging.INFO):
            run_log.info("run %s id=%s task=%s trigger=%s attempt=%s", "started" if admitted else "queued",
                     row["id"], row["task"], row["trigger"], row["attempt"])
        return active

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        """A plain task the engine keeps track of (and cancels when it closes)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            db_log.error("internal error in the engine: %s: %s", type(exc).__name__, exc, exc_info=exc)

    async def _execute(self, defn: Task | Function, row: dict[str, Any], active: _Active, admitted: bool) -> None:
        run_id = row["id"]
        is_task = isinstance(defn, Task)
        status, result, error = "completed", None, None
        trace: RunTrace | None = None
        limit = defn.timeout if is_task else 300.0
        try:
            if not admitted:
                await self._gate.acquire(row["task"])
                admitted = True
                row["started_at"] = self.clock.time()
                try:
                    await self.store.update_run(run_id, {"status": "running", "started_at": row["started_at"]})
                except CronstackError as exc:
                    status, error = "failed", _store_failure(exc, "starting the run")
                    return
            history = defn.request_history.enabled if is_task else True
            trace = RunTrace(prepared=self._trace_secrets) if history else None
            ctx = RunContext(
                records=self.records_for(defn.data_source), http=self.http, functions=self.functions,
                tracer=trace, clock=self.clock, env=self.env,
                task={"name": row["task"], "run_id": run_id, "attempt": row["attempt"],
                      "scheduled_at": row["scheduled_at"], "trigger": row["trigger"]},
            )
            status, result, error = await self._attempt(defn, ctx, row, active, limit)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            status, result, error = "cancelled", None, _cancel_error(active.reason if admitted else "queued", limit)
            if active.reason == "timeout":
                status = "timed_out"
        finally:
            active.finishing = True
            await self._finish(defn, row, active, admitted, status, result, error, trace)

    async def _attempt(self, defn: Task | Function, ctx: RunContext, row: dict[str, Any], active: _Active,
                       limit: float) -> tuple[str, Any, Any]:
        """One attempt; ``limit`` is the timeout in seconds.

        With the real clock ``asyncio.timeout`` enforces it; with an injected
        clock a watchdog sleeping on that clock does, so tests run in virtual time.
        """
        inputs = row.get("inputs") if isinstance(defn, Function) else None
        if not self._real_clock:
            call_at = getattr(self.clock, "call_at", None)
            if call_at is not None:  # a timer, not a sleeper: see FakeClock.call_at
                active.watchdog = call_at(self.clock.time() + limit, lambda: active.cancel("timeout"))
            else:
                active.watchdog = self._spawn(self._watchdog(active, limit))
        try:
            async with asyncio.timeout(limit if self._real_clock else None):
                if isinstance(defn, Function) and defn.name in self.functions.python:
                    result = await self.functions.call(defn.name, inputs or {}, ctx)
                else:
                    fn_inputs = {**defn.inputs, **(inputs or {})} if isinstance(defn, Function) else None
                    result = await execute(defn.program, ctx, inputs=fn_inputs)
            return "completed", result, None
        except RunFailed as exc:
            return "failed", None, exc.error
        except TimeoutError:
            if active.reason is None:
                active.reason = "timeout"
                return "timed_out", None, _cancel_error("timeout", limit)
            return "failed", None, {"message": "internal error: a stray timeout", "type": "InternalError", "step": None}
        except Exception as exc:  # a defect outside the VM's own error handling
            return "failed", None, {"message": f"internal error: {type(exc).__name__}: {exc}", "type": "InternalError", "step": None}

    async def _watchdog(self, active: _Active, limit: float) -> None:
        await self.clock.sleep(limit)
        active.cancel("timeout")

    async def _finish(self, defn: Task | Function, row: dict[str, Any], active: _Active, admitted: bool,
                      status: str, result: Any, error: Any, trace: RunTrace | None) -> None:
        run_id = row["id"]
        now = self.clock.time()
        try:
            if trace is not None:
                error = trace.redact_error(error)
            started = row.get("started_at")
            if isinstance(defn, Task) and status in RETRYABLE:
                # the retry is stored before the outcome: a crash between the two leaves the
                # attempt `running`, and recovery sees its retry (``_has_retry``) instead of losing it.
                # A retry the database refused leaves the attempt `running` on purpose: the next
                # start marks it crashed and retries it, so the retry is late but never lost.
                if not await self._maybe_retry(defn, row, status):
                    return
            if not await self._final_write(run_id, {"status": status, "finished_at": now, "result": result, "error": error}):
                return  # still `running` in the database: the next start marks it crashed and retries it
            if trace is not None and (trace.entries or trace.logs):
                try:
                    await self.store.add_trace(run_id, trace.export())
                except CronstackError as exc:
                    db_log.error("run %s of %s: its trace could not be stored: %s", run_id, row["task"], exc)
            self.runs_total[(row["task"], status)] = self.runs_total.get((row["task"], status), 0) + 1
            if run_log.isEnabledFor(logging.INFO):
                run_log.info("run finished id=%s task=%s status=%s duration=%.3f%s", run_id, row["task"], status,
                         now - (started or now), f" error={error.get('type')}: {error.get('message')}" if error else "")
            if started is not None:
                self.durations.observe(row["task"], now - started)
        finally:
            if active.watchdog is not None:
                active.watchdog.cancel()
            self._active.pop(run_id, None)
            if isinstance(defn, Task):
                self._running.get(defn.name, set()).discard(run_id)
            if admitted:
                self._gate.release()
            active.set_finished()
            if isinstance(defn, Task) and defn.name in self._pending and not self._running.get(defn.name) and not self._stopping:
                scheduled_at, trigger = self._pending.pop(defn.name)
                self._spawn(self._fire(defn.name, scheduled_at, trigger))

    async def _final_write(self, run_id: str, fields: dict[str, Any]) -> bool:
        """Record a run's outcome, retrying briefly; False (logged) if the database keeps refusing.

        A store error here must not escape: it would tear down the engine's
        task group and every other run with it. A run whose outcome could not
        be written stays ``running`` in the database and is recovered (marked
        ``crashed``, retried under its policy) by the next start.
        """
        for delay in (*FINAL_WRITE_BACKOFF, None):
            try:
                await self.store.update_run(run_id, fields)
                return True
            except CronstackError as exc:
                if delay is None:
                    db_log.error("run %s: its outcome (%s) could not be stored, it stays 'running' until "
                              "the next start recovers it: %s", run_id, fields.get("status"), exc)
                    return False
                await anyio.sleep(delay)
        return False  # pragma: no cover - the loop always returns

    async def _maybe_retry(self, task: Task, row: dict[str, Any], status: str) -> bool:
        """Store the retry the policy asks for; False only when the database refused it."""
        policy = task.retry_policy
        attempt = int(row.get("attempt") or 1)
        if attempt > policy.max_retries:
            return True
        retry = self._row(task.name, "task", "retry", scheduled_at=row.get("scheduled_at"), attempt=attempt + 1,
                          parent_id=row["id"], inputs=row.get("inputs"))
        retry["not_before"] = self.clock.time() + policy.delay(attempt)
        try:
            await self.store.insert_run(retry)
        except CronstackError as exc:
            db_log.error("run %s of %s ended %s but its retry could not be stored; the run stays "
                         "'running' until the next start recovers and retries it: %s",
                         row["id"], task.name, status, exc)
            return False
        self._queued_due[retry["id"]] = retry["not_before"]
        self._queue_wake.set()
        return True

    async def start_function_run(self, name: str, inputs: dict[str, Any], parent_id: str | None) -> str:
        """A durable run of function ``name`` (execution_mode async); returns its id at once."""
        defn = self.functions.stacks.get(name)
        if defn is None:  # a registered Python function: run it as a function run too
            defn = Function(name=name, program=lower_stack([], name).program)
        row = self._row(name, "function", "async_call", scheduled_at=self.clock.time(), attempt=1,
                        parent_id=parent_id, inputs=inputs)
        await self._launch(defn, row)
        return row["id"]

    # -- serving --------------------------------------------------------------------------
    async def serve(self, *, api: bool = True, host: str | None = None, port: int | None = None) -> None:
        """Start the scheduler, the queue of stored retries and, with ``api``, the admin API."""
        if self._serving is not None:
            return
        unresolved = check_calls(self.definitions, self.functions.python)
        if unresolved:
            raise CompileError(unresolved)
        assert self._tg is not None
        self._serving = anyio.CancelScope()
        self._stopping = False
        await self._tg.start(self._serve_loops)
        if api:
            from engine._api import start_api

            h = host if host is not None else self.config.api_host
            p = port if port is not None else self.config.api_port
            self.api, actual = await start_api(self, h, p, token=self.config.token, cors_origins=self.config.cors_origins)
            self.api_url = f"http://{h}:{actual}"

    async def _serve_loops(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        assert self._serving is not None
        with self._serving:
            await self._misfires()
            for row in await self.store.due_runs(float("inf"), 100_000):
                self._queued_due[row["id"]] = row.get("not_before") or 0.0
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._schedule_loop)
                tg.start_soon(self._queue_loop)
                tg.start_soon(self._prune_loop)
                tg.start_soon(self._flush_loop)
                task_status.started()

    async def _misfires(self) -> None:
        now = self.clock.time()
        for name, sched in self.schedules.items():
            if not self.is_active(name):
                continue
            try:
                await self._catch_up(name, sched, now)
            except CronstackError as exc:
                db_log.error("task %s: missed fires could not be caught up: %s", name, exc)

    async def _catch_up(self, name: str, sched: Schedule, now: float) -> None:
        """Handle the fires of task ``name`` missed while no engine served (misfire policy)."""
        task = self.definitions.tasks[name]
        state = await self.store.get_task_state(name) or {}
        last = state.get("last_fire")
        if last is None:
            await self.store.set_task_state(name, last_fire=now)
            return
        if task.misfire == "skip":
            return
        missed: list[float] = []
        t = sched.next_after(last)
        while t is not None and t <= now and len(missed) < 10_000:
            if t >= now - task.misfire_grace:
                missed.append(t)
            t = sched.next_after(t)
        if not missed:
            return
        if task.misfire == "run_once":
            missed = missed[-1:]
        for t in missed:
            row = self._row(name, "task", "catchup", scheduled_at=t, attempt=1)
            await self._launch(task, row, claim_fire=True)
        await self.store.set_task_state(name, last_fire=missed[-1])

    async def _schedule_loop(self) -> None:
        from engine._schedule import Timer, wait_next

        timer = Timer()
        now = self.clock.time()
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
            if not wave:
                continue
            self.lag = max(0.0, now - min(due for _name, due in wave))
            for name, due in wave:  # fires first: next fire times can wait a moment
                self._spawn(self._fire(name, due, "schedule"))
            await anyio.lowlevel.checkpoint()
            for name, due in wave:
                nxt = self.schedules[name].next_after(due)
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
                warm_program(task.program)
                for fn_name, _path in task.calls:
                    fn = self.functions.stacks.get(fn_name)
                    if fn is not None:
                        warm_program(fn.program)
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

    async def _fire(self, name: str, scheduled_at: float, trigger: str) -> None:
        """One scheduled fire; a database error loses this fire only (logged), never the scheduler."""
        try:
            await self._fire_once(name, scheduled_at, trigger)
        except CronstackError as exc:
            db_log.error("task %s: the fire at %s could not be recorded: %s", name, _iso(scheduled_at), exc)

    async def _fire_once(self, name: str, scheduled_at: float, trigger: str) -> None:
        task = self.definitions.tasks[name]
        if self._stopping:
            return
        if name in self._paused:
            self._fired_at(name, scheduled_at)
            return
        running = self._running.get(name)
        if running:
            policy = task.overlap
            if policy == "queue" and name not in self._pending:
                self._pending[name] = (scheduled_at, trigger)
                return
            if policy == "cancel_previous":
                for run_id in list(running):
                    active = self._active.get(run_id)
                    if active is not None:
                        active.cancel("superseded")
                        await active.done().wait()
            elif policy != "allow" or len(running) >= task.max_concurrency:
                row = self._row(name, "task", trigger, scheduled_at=scheduled_at, attempt=1)
                row.update(status="skipped", finished_at=self.clock.time(), error={
                    "message": f"skipped: the previous run was still running (overlap: {policy})", "type": "Skipped", "step": None})
                await self.store.claim_fire(name, scheduled_at, row)
                self.runs_total[(name, "skipped")] = self.runs_total.get((name, "skipped"), 0) + 1
                self._fired_at(name, scheduled_at)
                return
        row = self._row(name, "task", trigger, scheduled_at=scheduled_at, attempt=1)
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
        for name, ts in fired.items():
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
        row = await self.store.get_run(run_id)
        if row is None or row["status"] != "queued":
            return
        defn: Task | Function | None = (
            self.definitions.tasks.get(row["task"]) if row.get("kind", "task") == "task"
            else self.functions.stacks.get(row["task"])
        )
        if defn is None:
            await self.store.update_run(run_id, {"status": "failed", "finished_at": now, "error": {
                "message": f"'{row['task']}' is no longer defined", "type": "UnknownTask", "step": None}})
            return
        if not await self.store.claim_run(run_id, self.engine_id, now):
            return
        row.update(status="running", started_at=now)
        await self._launch(defn, row, claimed=True)

    async def _prune_loop(self) -> None:
        while True:
            now = self.clock.time()
            for task in self.definitions.tasks.values():
                days = task.request_history.retention_days
                try:
                    await self.store.prune_history(task.name, now - days * 86400)
                except CronstackError as exc:  # pruning waits for the next round
                    db_log.error("task %s: old history could not be pruned: %s", task.name, exc)
            await self.clock.sleep(self.config.prune_interval)

    async def stop(self, grace: float | None = None) -> None:
        """Stop firing; let running runs finish within ``grace`` seconds, then cancel them."""
        self._stopping = True
        if self._serving is not None:
            self._serving.cancel()
            self._serving = None
        if self.api is not None:
            from engine._api import stop_api

            await stop_api(self.api)
            self.api = None
        grace = self.config.shutdown_grace if grace is None else grace
        while self._launching:
            await self._launch_idle.wait()
        with anyio.move_on_after(grace):
            while self._active:
                await next(iter(self._active.values())).done().wait()
        for active in list(self._active.values()):
            active.cancel("shutdown")
        while self._active:
            await next(iter(self._active.values())).done().wait()
        await self._flush_fires()

    def _public(self, row: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in row.items() if k not in ("engine_id", "not_before") and not k.startswith("_")}
        started, finished = row.get("started_at"), row.get("finished_at")
        out["duration"] = (finished - started) if started is not None and finished is not None else None
        return out


def _calls_only(calls: list[tuple[str, str]]) -> Definitions:
    """A Definitions holding only a stack's calls, to check them with ``check_calls``."""
    fake = Function(name="stack", program=lower_stack([], "stack").program, calls=tuple(calls))
    return Definitions(functions={"$stack": fake})


_CANCEL_MESSAGES = {
    "cancel": "cancelled",
    "superseded": "cancelled by a newer fire (overlap: cancel_previous)",
    "shutdown": "the engine stopped before the run finished",
    "queued": "cancelled before it started",
}


def _cancel_error(reason: str | None, limit: float) -> dict[str, Any]:
    """The error object of a run cancelled for ``reason`` (or timed out after ``limit`` seconds)."""
    if reason == "timeout":
        return {"message": f"the run exceeded its timeout of {limit:g} s", "type": "Timeout", "step": None}
    message = _CANCEL_MESSAGES.get(reason or "", "the engine stopped while the run was running")
    return {"message": message, "type": "Cancelled", "step": None}


#: the cyclic GC's first threshold while an engine runs (CPython's default is 700)
GC_THRESHOLD0 = 20_000


def _tune_gc() -> None:
    """Spare thousands of concurrent runs most of the cyclic GC's passes.

    At high concurrency the collector is the largest single cost (it walks
    every live coroutine and frame each 700 allocations). Compiled
    definitions live as long as the engine: ``gc.freeze()`` moves them out of
    the collector's sight, and a higher first threshold makes passes rare.
    Garbage is still collected, in fewer, larger passes. ``[engine] tune_gc =
    false`` in cronstack.toml (or ``EngineConfig(tune_gc=False)``) leaves the
    process's collector as it is.
    """
    import gc

    gc.freeze()
    first, second, third = gc.get_threshold()
    if first < GC_THRESHOLD0:
        gc.set_threshold(GC_THRESHOLD0, second, third)


def _schedules_of(defs: Definitions) -> dict[str, Schedule]:
    """Every scheduled task's ``Schedule``; invalid expressions are compile errors at ``schedule``."""
    schedules, diags = {}, []
    for task in defs.tasks.values():
        if task.schedule is None:
            continue
        try:
            schedules[task.name] = Schedule(task.schedule, task.timezone, task.cron_day_match)
        except ScheduleError as exc:
            diags.append(Diagnostic(str(exc), "schedule", task.file))
    if diags:
        raise CompileError(diags)
    return schedules


def _store_failure(exc: CronstackError, doing: str) -> dict[str, Any]:
    """The error object of a run the database failed while ``doing`` something for it."""
    return {"message": f"the database failed while {doing}: {exc}", "type": exc.error_type, "step": None}


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).isoformat()
