"""The engine: the object users open, trigger, query and serve.

One ``Engine`` owns a store (its runs and the stacks' tables), an HTTP client,
the function table and, while serving, the scheduler. Its parts live beside
it: ``engine._runs`` (the life of one run: admission, durable rows, timeout,
outcome, retry) and ``engine._scheduler`` (the loops of a serving engine:
fires, misfires, stored queued runs, pruning).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
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
from engine._config import CONFIG_FILE, DEFAULT_DATABASE, EngineConfig, load_config, source_collisions
from engine._functions import FunctionTable, PyFunction
from engine._gate import FairGate
from engine._http import HttpClient
from engine._runs import RunLifecycle, _Active, new_run_id
from engine._schedule import RealClock, Schedule
from engine._scheduler import Scheduling, iso_time, schedules_of
from engine._store import StoreError, open_store
from engine._trace import RunTrace
from runtime import CronstackError, RunContext
from runtime._vm import execute

db_log = logging.getLogger("cronstack.engine")

__all__ = ("Engine", "UnknownTask", "RunStatus", "new_run_id")


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


#: crashed attempts per task looked at for a missing retry when an engine opens
RECOVER_LIMIT = 100


def _default_database(project_dir: Path | None) -> tuple[str, Path | None]:
    """The default database URL and the folder it is relative to.

    The URL stays relative to the project (resolved by the store under
    ``base_dir``): the folder's own path never goes through URL parsing, so a
    project in ``c#jobs`` or ``what?`` opens like any other.
    """
    if project_dir is not None:
        return DEFAULT_DATABASE, project_dir
    return "sqlite:///:memory:", None


def _naming_source(exc: Exception, name: str) -> Exception:
    """``exc`` (opening data source ``name``) with its message led by the key that names it.

    The error keeps its type and fields (a ``StoreLocked`` stays one, with its
    ``pid``); an ``OSError`` becomes a ``StoreError``.
    """
    where = f"{CONFIG_FILE}: data_sources.{name}: "
    if isinstance(exc, CronstackError):
        try:
            named = type(exc)(where + exc.message, **exc.extra)
        except TypeError:  # an error class with other arguments: keep it, with a note
            exc.add_note(where.rstrip(": "))
            return exc
        named.error_type = exc.error_type
        return named
    return StoreError(where + str(exc))


class Engine(RunLifecycle, Scheduling):
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
        #: run timeouts with the real clock, by millisecond of the loop's clock (see _runs._TimeoutGroup)
        self._timeouts: dict[int, Any] = {}
        self._running: dict[str, set[str]] = {name: set() for name in defs.tasks}
        #: per task with overlap: queue, its pending fire: a stored queued run not started yet
        self._queued_fire: dict[str, str] = {}
        #: stored queued runs of paused tasks, per task: they go back to the queue on resume()
        self._parked: dict[str, set[str]] = {}
        #: stored queued runs waiting for a running run of their task to end (overlap), per task
        self._deferred: dict[str, set[str]] = {}
        #: runs this engine is storing ``queued`` and will start itself (a trigger with no free
        #: slot): the queue loop leaves them alone, so one row never has two copies here
        self._storing: set[str] = set()
        #: runs being claimed while serving: run id -> an event set once the claim is done (see _hold)
        self._holds: dict[str, asyncio.Event | None] = {}
        self._paused: set[str] = set()
        #: pause()/resume() writes in flight, and a count of those done (see _sync_paused)
        self._pause_writes = 0
        self._pause_epoch = 0
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
        #: stop() calls in progress: the last to return ends the stopping (see stop)
        self._stop_calls = 0
        self._launching = 0
        self._launch_idle: anyio.Event | None = None  # made by stop() when it must wait

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
            raise CompileError(
                Diagnostic(f"'{project_dir}' is not a folder of definitions", file=str(project_dir))
            )
        cfg = config or load_config(project_dir)
        defs = load_definitions(project_dir if project_dir is not None else list(source))  # type: ignore[arg-type]
        engine = cls(
            defs, cfg, project_dir=project_dir, clock=clock or RealClock(), env=cfg.environment(env)
        )
        engine._compile_schedules()
        if cfg.tune_gc:
            _tune_gc()
        if database:
            url, inside = database, None  # as typed (command line): relative to the working directory
            label = "the engine's database (the database it was started with)"
        elif cfg.database:
            # URLs written in cronstack.toml are relative to the project and may not leave it
            url, inside, label = cfg.database, project_dir, "the database of database.url"
        else:
            url, inside = _default_database(project_dir)
            label = "the default database"
        # also with a database argument or a config made in code, which load_config did not see
        clashes = source_collisions(cfg.data_sources, project_dir, url, inside, label)
        if clashes:
            raise CompileError(clashes)
        engine.store = await open_store(
            url,
            indexes=cfg.indexes,
            synchronous=cfg.synchronous,
            clock=engine.clock.time,
            base_dir=inside,
        )
        try:
            for name, src_url in cfg.data_sources.items():
                try:
                    engine._sources[name] = await open_store(
                        src_url,
                        indexes=cfg.indexes,
                        synchronous=cfg.synchronous,
                        clock=engine.clock.time,
                        base_dir=project_dir,
                    )
                except (CronstackError, OSError) as exc:
                    raise _naming_source(exc, name) from exc
            engine.http = HttpClient(
                max_response_bytes=cfg.http_max_response_bytes,
                limit=cfg.http_connections,
                limit_per_host=cfg.http_connections_per_host,
            )
            async with engine._background():
                # alive before any claim: on a shared database, other engines' recovery leaves its runs alone
                await engine.store.register_engine(engine.engine_id)
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
        self.schedules = schedules_of(self.definitions)

    async def reload(self) -> dict[str, int]:
        """Recompile the project folder and switch to it without a restart.

        History, pauses and last fires are kept (they live in the store); runs
        in progress finish on the definitions they started with; schedules that
        did not change keep their next fire. On any compile error nothing
        changes and ``CompileError`` lists every problem.
        """
        if self.project_dir is None:
            raise CompileError(
                Diagnostic("only an engine opened on a project folder can reload it")
            )
        # compiling a large project takes a while: off the event loop, runs go on meanwhile
        defs = await anyio.to_thread.run_sync(load_definitions, self.project_dir)
        schedules = schedules_of(defs)
        if self._serving is not None:
            unresolved = check_calls(defs, self.functions.python)
            if unresolved:
                raise CompileError(unresolved)
        self.definitions = defs
        self.functions.stacks = defs.functions
        self.schedules = schedules
        for name in defs.tasks:
            self._running.setdefault(name, set())
        for name in [n for n in self._parked if n not in defs.tasks]:
            for run_id in self._parked.pop(name):  # can never be resumed: failed as no longer defined
                self._queued_due[run_id] = self.clock.time()
            self._queue_wake.set()
        self._next_cache.clear()
        self._reschedule = True
        self._wake.set()
        db_log.info(
            "reloaded %s: %d tasks, %d functions",
            self.project_dir,
            len(defs.tasks),
            len(defs.functions),
        )
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
        rows = {row["id"]: row for row in await self.store.recover_running(self.engine_id)}
        # an engine that died again between marking runs crashed and storing their
        # retries left crashed attempts with no retry: they are found here too
        for task in self.definitions.tasks.values():
            if task.retry_policy.max_retries:
                for row in await self.store.list_runs(
                    task.name, status="crashed", limit=RECOVER_LIMIT
                ):
                    rows.setdefault(row["id"], row)
        for row in rows.values():
            await self._retry_one_crashed(row)

    async def _recover_dead_engines(self) -> int:
        """While serving on a shared database: runs of engines that died since become ``crashed``
        and retry under their policy (``recover_running`` takes each run once among engines)."""
        rows = await self.store.recover_running(self.engine_id)
        for row in rows:
            await self._retry_one_crashed(row)
        return len(rows)

    async def _retry_one_crashed(self, row: dict[str, Any]) -> None:
        task = self.definitions.tasks.get(row["task"])
        if (
            task is not None
            and row.get("kind", "task") == "task"
            and int(row.get("attempt") or 1) <= task.retry_policy.max_retries
            and not await self._has_retry(row)
        ):
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
        # ``_launch`` of a new row, inlined: one coroutine less per trigger
        admitted = self._admit(row)
        self._launch_begin()
        if not admitted:  # stored queued: the queue loop must not take it meanwhile (see _storing)
            self._storing.add(row["id"])
        try:
            await self.store.insert_run(row)
        except asyncio.CancelledError:
            # the caller gave up, but a queued write is committed anyway: the run starts
            # as recorded (else its row would stay `running` with no task to finish it)
            self._start(task, row, admitted)
            raise
        except BaseException:
            if admitted:  # the database refused the row: free the slot
                self._gate.release()
            raise
        finally:
            if not admitted:
                self._storing.discard(row["id"])
            self._launch_end()
        active = self._start(task, row, admitted)
        if not wait:
            return row["id"]
        await active.done().wait()
        run = await self.store.get_run(row["id"])
        return self._public(run)

    async def run_stack(self, stack: list[Any], variables: dict[str, Any] | None = None) -> Any:
        """Compile and run ``stack`` once, outside any task; its ``return`` value or None."""
        low = lower_stack(stack, "stack", extra_names=frozenset(variables or ()))
        diags = low.diagnostics + [
            d for d in check_calls(_calls_only(low.calls), self.functions.names())
        ]
        if diags:
            raise CompileError(diags)
        ctx = RunContext(
            records=self.store,
            http=self.http,
            functions=self.functions,
            clock=self.clock,
            env=self.env,
            task={
                "name": None,
                "run_id": None,
                "attempt": 1,
                "scheduled_at": None,
                "trigger": "manual",
            },
        )
        return await execute(low.program, ctx, variables)

    async def runs(
        self,
        task: str | None = None,
        *,
        status: str | None = None,
        limit: int = 50,
        offset: int = 0,
        newest_first: bool = True,
        by: str = "created_at",
    ) -> list[dict[str, Any]]:
        if task is not None:
            self._task(task)
        rows = await self.store.list_runs(
            task, status=status, limit=limit, offset=offset, newest_first=newest_first, by=by
        )
        return [self._public(r) for r in rows]

    async def run(self, run_id: str, *, trace: bool = True) -> dict[str, Any] | None:
        row = await self.store.get_run(run_id)
        if row is None:
            return None
        out = self._public(row)
        if trace:
            entries = await self.store.get_trace(run_id)
            # a log line has a level; the trace entry of a `log` step has the same kind but none
            out["trace"] = [e for e in entries if "level" not in e]
            out["logs"] = [e for e in entries if "level" in e]
        return out

    async def pause(self, name: str) -> None:
        """Stop firing task ``name`` (stored: every engine on a shared database learns it, see
        ``_sync_paused``)."""
        self._task(name)
        self._paused.add(name)
        self._pause_writes += 1
        try:
            await self.store.set_task_state(name, paused=True)
        finally:
            self._pause_writes -= 1
            self._pause_epoch += 1

    async def resume(self, name: str) -> None:
        """Fire task ``name`` again; its stored queued runs (retries, a pending fire) that waited
        while it was paused go back to the queue."""
        self._task(name)
        self._paused.discard(name)
        self._pause_writes += 1
        try:
            await self.store.set_task_state(name, paused=False)
        finally:
            self._pause_writes -= 1
            self._pause_epoch += 1
        self._unpark(name)

    def _unpark(self, name: str) -> None:
        """Task ``name`` was resumed: its parked queued runs go back to the queue."""
        parked = self._parked.pop(name, None)
        if parked:
            now = self.clock.time()
            for run_id in parked:
                self._queued_due[run_id] = now
            self._queue_wake.set()
        self._wake.set()

    async def _sync_paused(self) -> None:
        """Take the paused states stored by other engines (pause/resume made there) as this engine's.

        Skipped (for the next round) when a pause or resume of this engine was
        written meanwhile: the states read may predate it.
        """
        if self._pause_writes:
            return
        epoch = self._pause_epoch
        states = await self.store.all_task_states()
        if self._pause_writes or epoch != self._pause_epoch:
            return
        for name in self.definitions.tasks:
            state = states.get(name)
            stored = bool(state and state.get("paused"))
            if stored and name not in self._paused:
                self._paused.add(name)
                db_log.info("task %s was paused by another engine", name)
            elif not stored and name in self._paused:
                self._paused.discard(name)
                db_log.info("task %s was resumed by another engine", name)
                self._unpark(name)

    async def cancel(self, run_id: str) -> bool:
        """Cancel a running or queued run; False when it already finished or is unknown.

        A stored queued run is cancelled only while it is still queued (one
        conditional write, ``store.cancel_queued``). When its claim
        wins the race, the run started on this engine is cancelled as a
        running one (True): the caller asked that it not go on. False when it
        finished, is unknown, or runs on another engine (also when it waited
        here for a slot and another engine claimed its row first).

        A run being claimed by this engine's queue (a task's or an async
        function's) is waited for, then cancelled as a running run. The run
        just started gets the first turn: a stack that finishes without ever
        awaiting (no ``wait``, no I/O) can complete before the cancel lands,
        and the cancel then returns False.
        """
        active = self._active.get(run_id)
        if active is None:
            now = self.clock.time()
            # queued -> cancelled in one conditional write: a claim by the queue loop (or another
            # engine) cannot interleave, and no crash can leave it half done
            error = {"message": "cancelled before it started", "type": "Cancelled", "step": None}
            row = await self.store.get_run(run_id)  # its task, for runs_total
            if await self.store.cancel_queued(run_id, now, error):
                self._forget_queued(run_id)
                if row is not None:  # counted as a run cancelled while it waited for a slot is
                    key = (row["task"], "cancelled")
                    self.runs_total[key] = self.runs_total.get(key, 0) + 1
                return True
            hold = self._holds.get(run_id, False)
            if hold is not False:  # claimed by this engine's queue loop, which is starting it
                if hold is None:
                    hold = self._holds[run_id] = asyncio.Event()
                await hold.wait()
            active = self._active.get(run_id)
            if active is None:
                return False
        if active.finishing or active.finished:
            await active.done().wait()
            return False
        active.cancel("cancel")
        await active.done().wait()
        # a run waiting here for a slot whose row another engine claimed first goes on there
        return not active.lost

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
            d.astimezone(UTC).isoformat()
            for d in (
                sched.next_fires(datetime.fromtimestamp(self.clock.time(), UTC), 5) if sched else []
            )
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
            "missing_env": [v for v in task.requires_env if not self.env.get(v)],
            "paused": name in self._paused,
            "status": self.task_status(name),
            "next_execution": iso_time(nxt),
            "last_run": self._public(last) if last else None,
        }

    def stats(self) -> dict[str, Any]:
        return {
            "running": len(self._active),
            "queued": self._gate.queued + len(self._queued_due)
            + sum(map(len, self._parked.values())) + sum(map(len, self._deferred.values())),
            "scheduler_lag_seconds": self.lag,
            "runs_total": dict(self.runs_total),
            "run_durations": self.durations.snapshot(),
            "tasks": len(self.definitions.tasks),
            "serving": self._serving is not None,
        }

    # -- runs -----------------------------------------------------------------------------
    async def serve(
        self, *, api: bool = True, host: str | None = None, port: int | None = None
    ) -> None:
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
            self.api, actual = await start_api(
                self, h, p, token=self.config.token, cors_origins=self.config.cors_origins
            )
            self.api_url = f"http://{h}:{actual}"

    async def stop(self, grace: float | None = None) -> None:
        """Stop firing; let running runs finish within ``grace`` seconds, then cancel them.

        Runs that never started stay ``queued`` in the store. Once it returns
        the engine is no longer stopping: ``trigger`` runs again (as on an
        engine that never served), and ``serve`` (or the next start) runs what
        the stop left queued.
        """
        self._stopping = True
        if self._serving is not None:
            self._serving.cancel()
            self._serving = None
        api_stopped = None
        if self.api is not None:
            from engine._api import stop_api

            # the socket closes at once; requests in flight (a trigger?wait=true awaiting a
            # run) finish alongside the runs' grace, not for 5 s before it starts
            api_stopped, self.api = asyncio.ensure_future(stop_api(self.api)), None
        grace = self.config.shutdown_grace if grace is None else grace
        self._stop_calls += 1
        try:
            await self._stop_runs(grace)
        finally:
            self._stop_calls -= 1
        await self._flush_fires()
        if api_stopped is not None:
            await api_stopped
        if not self._stop_calls and self._serving is None:
            # stopped, no longer stopping: a later trigger (not serving) runs as on an engine that
            # never served. What the stop left queued stays queued in the store (nothing in memory
            # holds it): the next serve() or start of the engine runs it
            self._stopping = False
            self._gate.open()

    async def _stop_runs(self, grace: float) -> None:
        """stop()'s wait: runs being recorded seen, running runs given ``grace`` then cancelled."""
        while self._launching:
            if self._launch_idle is None:
                self._launch_idle = anyio.Event()
            await self._launch_idle.wait()
        with anyio.move_on_after(grace):
            while self._active:
                await next(iter(self._active.values())).done().wait()
        for active in list(self._active.values()):
            active.cancel("shutdown")
        while self._active:
            await next(iter(self._active.values())).done().wait()

    def _public(self, row: dict[str, Any]) -> dict[str, Any]:
        out = {
            k: v
            for k, v in row.items()
            if k not in ("engine_id", "not_before") and not k.startswith("_")
        }
        started, finished = row.get("started_at"), row.get("finished_at")
        out["duration"] = (
            (finished - started) if started is not None and finished is not None else None
        )
        return out


def _calls_only(calls: list[tuple[str, str]]) -> Definitions:
    """A Definitions holding only a stack's calls, to check them with ``check_calls``."""
    fake = Function(name="stack", program=lower_stack([], "stack").program, calls=tuple(calls))
    return Definitions(functions={"$stack": fake})


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
