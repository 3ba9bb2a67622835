"""The ``cronstack`` command: run an engine, check a project, and talk to a running engine.

Local commands (``run``, ``check``, ``exec``, ``next``) work on definition
files; remote ones (``tasks``, ``trigger``, ``runs``, ``show``, ``pause``,
``resume``, ``cancel``) call the admin API of a running engine over HTTP.
Exit codes are part of the interface: 0 ok, 1 failure (a failed run, compile
errors, a refused request), 2 usage, 3 the engine cannot be reached, 4 not found,
5 no outcome yet (the request reached the engine but its answer did not come in
time, or the run ``trigger --wait`` waits for is still running).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from compiler import CompileError, Definitions, Diagnostic, check_calls, load_definitions
from compiler._errors import did_you_mean
from compiler._load import decode_json_file
from engine._config import CONFIG_FILE
from runtime import CronstackError, dis

__all__ = ("main", "CliError", "EXIT_OK", "EXIT_FAILURE", "EXIT_USAGE", "EXIT_UNREACHABLE", "EXIT_NOT_FOUND",
           "EXIT_NO_OUTCOME")

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_NOT_FOUND = 0, 1, 2, 3, 4
#: the request reached the engine, but its outcome is not known yet: repeating it may do it twice
EXIT_NO_OUTCOME = 5
DEFAULT_URL = "http://127.0.0.1:7600"
#: seconds a remote command waits for each answer unless --timeout says otherwise
REQUEST_TIMEOUT = 30.0
#: seconds between looks at a run `trigger --wait` waits for: from the first to the last
WAIT_POLL = (0.02, 1.0)
_EXEC_TASK = "cronstack_exec"


class CliError(CronstackError):
    """A command failed; ``code`` is the process exit code."""

    error_type = "CliError"

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _run_async(make: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run a coroutine on uvloop when it is installed, else on the default loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return asyncio.run(make())
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(make())


def _dump(value: Any) -> str:
    return msgspec.json.format(msgspec.json.encode(value), indent=2).decode()


def _table(rows: list[list[Any]], header: list[str]) -> str:
    cells = [header] + [["-" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _when(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _secs(d: float | None) -> str | None:
    if d is None:
        return None
    return f"{d * 1e6:.0f}µs" if d < 0.001 else f"{d * 1000:.1f}ms" if d < 1 else f"{d:.2f}s"


# --- local commands ----------------------------------------------------------------------


def _schedule_diags(defs: Definitions) -> list[Diagnostic]:
    """Every bad schedule, each at the field at fault: the cron expression at ``schedule``,
    the zone at ``timezone`` (both when both are wrong)."""
    from engine._schedule import Schedule, ScheduleError
    from engine._scheduler import schedule_diagnostics

    diags = []
    for task in defs.tasks.values():
        if task.schedule is None:
            continue
        try:
            Schedule(task.schedule, task.timezone, task.cron_day_match)
        except ScheduleError as exc:
            diags += schedule_diagnostics(task, exc)
    return diags


def _load_all(root: str) -> tuple[Definitions, list[Diagnostic]]:
    """Every definition below ``root`` that compiles, and all problems together.

    The schedules and calls of the files that compile are checked even when
    others fail; calls are checked against every name the project defines,
    including files that failed (their own errors are reported, a call of them is not).
    """
    from compiler._load import load_what_compiles

    defs, diags, failed = load_what_compiles(root)
    diags += check_calls(defs, known=failed) + _schedule_diags(defs)
    return defs, diags


def _next_fires(task: Any, after: datetime, count: int) -> list[str]:
    from engine._schedule import Schedule

    if task.schedule is None:
        return []
    return [d.isoformat() for d in Schedule(task.schedule, task.timezone, task.cron_day_match).next_fires(after, count)]


def cmd_check(args: argparse.Namespace) -> int:
    from engine._config import load_config

    diags = []
    try:
        env = load_config(Path(args.dir)).environment()
    except CompileError as exc:
        env, diags = {}, list(exc.diagnostics)
    defs, found = _load_all(args.dir)
    diags += found
    if diags:
        diags.sort(key=lambda d: d.file or "")  # stable: a file's problems keep their order
        if args.json:
            print(_dump({"ok": False, "errors": [{"file": d.file, "path": d.path, "message": str(d)} for d in diags]}))
        else:
            for d in diags:
                print(d)
            print(f"{len(diags)} error{'s' * (len(diags) != 1)}", file=sys.stderr)
        return EXIT_FAILURE
    if args.dis:
        return _print_dis(defs, args.dis, native=args.native)
    now = datetime.now(UTC)
    tasks = [
        {"name": t.name, "file": t.file, "schedule": t.schedule, "timezone": t.timezone,
         "active": t.active and all(env.get(v) for v in t.requires_env),
         "missing_env": [v for v in t.requires_env if not env.get(v)],
         "next_fires": _next_fires(t, now, 3)}
        for t in sorted(defs.tasks.values(), key=lambda t: t.name)
    ]
    if args.json:
        print(_dump({"ok": True, "tasks": tasks, "functions": sorted(defs.functions)}))
        return EXIT_OK
    rows = [[t["name"], t["schedule"] or "(manual)", t["timezone"],
             "yes" if t["active"] else ("no: needs " + ", ".join(t["missing_env"]) if t["missing_env"] else "no"),
             ", ".join(t["next_fires"]) or ("never fires" if t["schedule"] else None)] for t in tasks]
    print(_table(rows, ["TASK", "SCHEDULE", "TIMEZONE", "ACTIVE", "NEXT 3 FIRES"]))
    print(f"\nok: {len(defs.tasks)} tasks, {len(defs.functions)} functions")
    return EXIT_OK


def _print_dis(defs: Definitions, which: str, *, native: bool = False) -> int:
    items = {**defs.functions, **defs.tasks}
    item = items.get(which)
    if item is None:
        wanted = Path(which)
        for candidate in items.values():
            if candidate.file and (candidate.file == which or Path(candidate.file).name == wanted.name):
                item = candidate
                break
    if item is None:
        hint = did_you_mean(which, items) or "give a task or function name, or its file"
        raise CliError(EXIT_NOT_FOUND, f"no task, function or file '{which}'; {hint}")
    if native:
        from compiler._native import native_source

        print(native_source(item.source.get("stack", []), item.name))
    else:
        print(dis(item.program))
    return EXIT_OK


def _load_one(path: str) -> Definitions:
    """A project folder, or one definition file on its own."""
    p = Path(path)
    if p.is_dir():
        return load_definitions(p)
    if not p.is_file():
        raise CliError(EXIT_NOT_FOUND, f"'{path}' is neither a definition file nor a folder")
    raw = decode_json_file(p, str(p))
    try:
        return load_definitions([raw])
    except CompileError as exc:
        raise exc.with_file(str(p)) from None


def _parse_after(text: str | None) -> datetime:
    if text is None:
        return datetime.now(UTC)
    try:
        after = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise CliError(EXIT_USAGE, f"--after {text!r} is not an ISO-8601 time like 2024-05-01T06:00:00Z") from None
    return after if after.tzinfo else after.replace(tzinfo=UTC)


def cmd_next(args: argparse.Namespace) -> int:
    after = _parse_after(args.after)
    defs = _load_one(args.path)
    task = defs.tasks.get(args.task)
    if task is None:
        hint = did_you_mean(args.task, defs.tasks) or f"tasks there: {', '.join(sorted(defs.tasks)) or 'none'}"
        raise CliError(EXIT_NOT_FOUND, f"no task named '{args.task}' in {args.path}; {hint}")
    if task.schedule is None:
        raise CliError(EXIT_FAILURE, f"task '{task.name}' has no schedule: it runs only when triggered")
    if _schedule_diags(defs):
        raise CompileError(_schedule_diags(defs))
    fires = _next_fires(task, after, args.count)
    for fire in fires:
        print(fire)
    if not fires:  # an empty output would read as "nothing to say"
        raise CliError(EXIT_FAILURE, f"task '{task.name}' never fires after {after.isoformat()}: "
                                     f"no date matches its schedule '{task.schedule}' ({task.timezone})")
    return EXIT_OK


def _exec_definitions(path: Path, project: Path | None) -> list[dict[str, Any]]:
    """The definitions ``exec`` runs: the file's, then the functions of its project that
    its stack may call (the file itself wins over a project function of the same name)."""
    raw = decode_json_file(path, str(path))
    if isinstance(raw, list):
        own = [{"name": _EXEC_TASK, "stack": raw}]
    elif isinstance(raw, dict) and raw.get("type") != "task" and ("inputs" in raw or raw.get("type") == "function"):
        call = {"function": "custom_function", "name": raw.get("name"), "inputs": {}, "return_as": "result"}
        own = [raw, {"name": _EXEC_TASK, "stack": [call, {"function": "return", "value": "{{ result }}"}]}]
    else:
        own = [raw]
    return [*_project_functions(path, project, {d.get("name") for d in own if isinstance(d, dict)}), *own]


def _exec_project(path: Path, project: Path | None) -> Path | None:
    """The project ``exec`` runs FILE in: ``--project``, else the nearest folder above
    ``path`` holding cronstack.toml, else the folder above ``path``'s own when that is a
    ``tasks`` or ``functions`` folder (None: no project)."""
    if project is not None:
        if not project.is_dir():
            raise CliError(EXIT_NOT_FOUND, f"no project folder '{project}' (--project)")
        return project
    here = path.resolve()
    found = next((p for p in here.parents if (p / CONFIG_FILE).is_file()), None)
    if found is None and here.parent.name in ("tasks", "functions"):
        found = here.parent.parent
    return found


def _exec_config(project: Path | None) -> Any:
    """The project's cronstack.toml as ``exec`` applies it: its ``[env]``, ``[tables]`` and
    ``[engine]`` settings, but none of its databases, so a run tried out writes only where
    ``--database`` says (by default, memory); its data sources are that store too."""
    import dataclasses

    from engine._config import load_config

    return dataclasses.replace(load_config(project), database=None, data_sources={})


def _project_functions(path: Path, project: Path | None, taken: set[Any]) -> list[dict[str, Any]]:
    """Every function definition of ``project`` but ``path`` and the names ``taken``."""
    from compiler._definitions import is_function
    from compiler._load import project_files

    if project is None:
        return []
    own, found, diags = path.resolve(), [], []
    for file, shown in project_files(str(project)):
        if Path(file).resolve() == own:
            continue
        try:
            raw = decode_json_file(file, shown)
        except CompileError as exc:
            diags.extend(exc.diagnostics)
            continue
        if isinstance(raw, dict) and is_function(raw, shown) and raw.get("name") not in taken:
            found.append(raw)
    if diags:
        raise CompileError(diags)
    return found


def cmd_exec(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if not path.is_file():
        raise CliError(EXIT_NOT_FOUND, f"no file '{args.file}'")
    project = _exec_project(path, Path(args.project) if args.project else None)
    defs = _exec_definitions(path, project)
    config = _exec_config(project)
    return _run_async(lambda: _exec(defs, args, str(path), config))


async def _exec(defs: list[dict[str, Any]], args: argparse.Namespace, shown: str, config: Any) -> int:
    from engine import Engine

    name = defs[-1].get("name")
    try:
        async with Engine.open(defs, database=args.database, config=config) as engine:
            unresolved = check_calls(engine.definitions, engine.functions.python)
            if unresolved:  # refused before the run, as `run` refuses to start
                raise CompileError(unresolved)
            retries = _run_once(engine, name)  # type: ignore[arg-type]
            done = await engine.trigger(name, wait=True)  # type: ignore[arg-type]
            run = await engine.run(done["id"], trace=True) or done  # type: ignore[index]
    except CompileError as exc:
        raise CompileError(Diagnostic(d.message, d.path, shown if d.file and d.file.startswith("definitions[") else d.file,
                                      d.column, d.hint) for d in exc.diagnostics) from None
    if args.json:
        print(_dump(run))
    else:
        _print_run(run)
    if retries and run.get("status") != "completed":
        print(f"cronstack exec: the run is not retried: exec runs the stack once (the task's retry_policy "
              f"allows {retries} retr{'y' if retries == 1 else 'ies'} when an engine runs it)", file=sys.stderr)
    return EXIT_OK if run.get("status") == "completed" else EXIT_FAILURE


def _run_once(engine: Any, name: str) -> int:
    """Take the retries out of task ``name`` (exec runs its stack once); how many its policy allowed.

    The policy was compiled and checked with the file; only its use is
    dropped, so no ``queued`` retry is left in a ``--database`` for an
    engine opened on it later.
    """
    import dataclasses

    from compiler._definitions import RetryPolicy

    task = engine.definitions.tasks[name]
    retries = task.retry_policy.max_retries
    if retries:
        engine.definitions.tasks[name] = dataclasses.replace(task, retry_policy=RetryPolicy())
    return retries


def _print_run(run: dict[str, Any]) -> None:
    print(f"run {run.get('id')}  task {run.get('task')}  {run.get('status')}  "
          f"trigger {run.get('trigger')}  attempt {run.get('attempt')}  {_secs(run.get('duration')) or ''}".rstrip())
    if run.get("error"):
        err = run["error"]
        where = f"{err['step']}: " if err.get("step") else ""  # a timeout or cancel stops the run, not a step
        print(f"error: {where}{err.get('type')}: {err.get('message')}")
    print(f"result: {_dump(run.get('result'))}")
    trace = run.get("trace") or []
    if trace:
        print("\ntrace:")
        rows = [[t.get("path"), t.get("kind"), _secs(t.get("duration")),
                 ("ERROR " + str((t.get("error") or {}).get("message"))) if t.get("error") else _short(t.get("output"))]
                for t in trace]
        print(_table(rows, ["STEP", "KIND", "TIME", "OUTPUT"]))
    logs = run.get("logs") or []
    if logs:
        print("\nlogs:")
        for entry in logs:
            print(f"  {entry.get('path')} [{entry.get('level') or 'info'}] {_short(entry.get('output'), 200)}")


def _short(value: Any, width: int = 60) -> str:
    text = value if isinstance(value, str) else msgspec.json.encode(value).decode()
    return text if len(text) <= width else text[: width - 1] + "…"


def cmd_run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return _run_async(lambda: _serve(args))


async def _serve(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT, then stop within the grace; a second one cancels the runs at once.

    The handlers are installed before the engine opens (opening compiles the
    project and recovers the store, which takes a while): a signal meanwhile
    is kept and acted on once the engine is open, never the default action
    (a SIGHUP would end the process).
    """
    from engine import Engine

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    state: dict[str, Any] = {"engine": None, "now": False, "reload": False}
    reloads: list[asyncio.Task[Any]] = []

    def on_stop() -> None:
        if not stop.is_set():
            stop.set()
            return
        if state["now"]:
            return
        state["now"] = True
        print("cronstack: stopping now: cancelling the running runs (they are recorded as cancelled; "
              "runs that had not started stay queued for the next start)", file=sys.stderr, flush=True)
        if state["engine"] is not None:
            state["engine"]._shutdown_now()

    def on_hup() -> None:
        if state["engine"] is None:
            state["reload"] = True  # reloaded as soon as the engine is open
        else:
            reloads.append(loop.create_task(_reload(state["engine"])))

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_stop)
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    try:
        async with Engine.open(args.dir, database=args.database) as engine:
            state["engine"] = engine
            if state["now"]:
                engine._shutdown_now()
            if not stop.is_set():
                if state["reload"]:
                    await _reload(engine)
                await engine.serve(host=args.host, port=args.port)
                print(f"cronstack: serving {len(engine.task_names())} tasks from {args.dir}; "
                      f"admin API on {engine.api_url}; Ctrl-C or SIGTERM stops", file=sys.stderr, flush=True)
                await stop.wait()
            if not state["now"]:
                print("cronstack: stopping: no new runs, letting running runs finish "
                      f"(up to {engine.config.shutdown_grace:g} s; SIGTERM or Ctrl-C again cancels them now)",
                      file=sys.stderr, flush=True)
            await engine.stop()
            if reloads:
                await asyncio.gather(*reloads, return_exceptions=True)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)
    print("cronstack: stopped", file=sys.stderr, flush=True)
    return EXIT_OK


async def _reload(engine: Any) -> None:
    """SIGHUP: recompile the project; on errors keep running the definitions already loaded."""
    try:
        counts = await engine.reload()
    except CompileError as exc:
        print(f"cronstack: reload refused, still running the previous definitions:\n{exc}", file=sys.stderr, flush=True)
    except Exception as exc:  # a defect must not end the engine, nor pass unseen until shutdown
        logging.getLogger("cronstack.engine").error(
            "reload failed, still running the previous definitions: %s: %s", type(exc).__name__, exc, exc_info=exc)
    else:
        print(f"cronstack: reloaded: {counts['tasks']} tasks, {counts['functions']} functions", file=sys.stderr, flush=True)


# --- remote commands (admin API) -----------------------------------------------------------


async def _request(args: argparse.Namespace, method: str, path: str, *, params: dict[str, Any] | None = None,
                   body: Any = None, timeout: float | None = None) -> Any:
    """Call the admin API; map failures to exit codes (3 unreachable, 4 not found, 1 refused,
    5 sent but not answered in time: it may have taken effect).

    ``timeout``: seconds for the answer (default ``--timeout``, else 30).
    """
    import aiohttp

    url = args.url.rstrip("/") + path
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    query = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in (params or {}).items() if v is not None}
    limit = timeout if timeout is not None else args.timeout if args.timeout is not None else REQUEST_TIMEOUT
    sent = False  # the request went out: a failure after this may leave it done

    async def on_sent(*_: Any) -> None:
        nonlocal sent
        sent = True

    tracing = aiohttp.TraceConfig()
    tracing.on_request_headers_sent.append(on_sent)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=limit),
                                         trace_configs=[tracing]) as session:
            async with session.request(method, url, params=query, json=body, headers=headers) as resp:
                raw = await resp.read()
                status = resp.status
    except (aiohttp.ClientConnectionError, aiohttp.InvalidURL, TimeoutError) as exc:
        timed_out = isinstance(exc, TimeoutError) and not isinstance(exc, aiohttp.ConnectionTimeoutError)
        what = f"no answer within {limit:g} s (--timeout)" if timed_out else str(exc) or type(exc).__name__
        if sent and method != "GET":  # it may have been done: saying "unreachable" would invite a repeat
            raise CliError(EXIT_NO_OUTCOME, f"{method} {path}: the engine at {args.url} got the request but "
                                            f"{what if timed_out else f'the answer was lost ({what})'}; it may "
                                            "have taken effect: check (`cronstack runs`) before repeating it") from None
        raise CliError(EXIT_UNREACHABLE, f"cannot reach the engine at {args.url}: {what}; "
                                         "is `cronstack run` running there? (see --url)") from None
    try:
        data = msgspec.json.decode(raw) if raw else None
    except msgspec.DecodeError:
        raise CliError(EXIT_FAILURE, f"{method} {url} answered {status} with a body that is not JSON") from None
    if status >= 400:
        message = data.get("message") if isinstance(data, dict) else None
        message = message or f"{method} {path} answered {status}"
        if status in (401, 403):
            message += "; set CRONSTACK_TOKEN (or --token) to the engine's token"
        raise CliError(EXIT_NOT_FOUND if status == 404 else EXIT_FAILURE, message)
    return data


def _remote(coro: Callable[[argparse.Namespace], Coroutine[Any, Any, int]]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        return _run_async(lambda: coro(args))

    return run


def _runs_table(runs: list[dict[str, Any]]) -> str:
    rows = [[r.get("id"), r.get("task"), r.get("status"), r.get("trigger"), r.get("attempt"),
             _when(r.get("started_at") or r.get("scheduled_at")), _secs(r.get("duration")),
             _short((r.get("error") or {}).get("message"), 50) if r.get("error") else None] for r in runs]
    return _table(rows, ["RUN", "TASK", "STATUS", "TRIGGER", "ATTEMPT", "STARTED (UTC)", "DURATION", "ERROR"])


async def cmd_tasks(args: argparse.Namespace) -> int:
    tasks = await _request(args, "GET", "/api/tasks")
    if args.json:
        print(_dump(tasks))
        return EXIT_OK
    rows = [[t["name"], t["status"], t.get("schedule") or "(manual)", t.get("next_execution"),
             (t.get("last_run") or {}).get("status")] for t in tasks]
    print(_table(rows, ["TASK", "STATUS", "SCHEDULE", "NEXT EXECUTION", "LAST RUN"]))
    return EXIT_OK


async def cmd_trigger(args: argparse.Namespace) -> int:
    out = await _request(args, "POST", f"/api/tasks/{args.task}/trigger",
                         body={"source": args.source} if args.source else None)
    if not args.wait:
        print(_dump(out) if args.json else out["run_id"])
        return EXIT_OK
    run = await _wait_for_run(args, out["run_id"])
    if args.json:
        print(_dump(run))
    else:
        _print_run(run)
    return EXIT_OK if run.get("status") == "completed" else EXIT_FAILURE


async def _wait_for_run(args: argparse.Namespace, run_id: str) -> dict[str, Any]:
    """The run once it finished, looked at every second at most; with ``--timeout``, at most that long.

    Without ``--timeout`` the wait has no limit (each look at the run still
    times out after 30 s). A run still going at the limit, or an engine lost
    while waiting, is ``EXIT_NO_OUTCOME`` with the run id: the run was started
    and goes on, so triggering again would start a second one.
    """
    loop = asyncio.get_running_loop()
    deadline = None if args.timeout is None else loop.time() + args.timeout
    delay, longest = WAIT_POLL
    status = "queued"

    def still(reason: str) -> CliError:
        print(_dump({"run_id": run_id, "task_name": args.task, "status": status}) if args.json else run_id)
        return CliError(EXIT_NO_OUTCOME, f"run {run_id} of task '{args.task}' {reason}; it was started and goes "
                                         f"on in the engine: follow it with `cronstack show {run_id}` (triggering "
                                         "again would start another run)")

    while True:
        left = None if deadline is None else deadline - loop.time()
        if left is not None and left <= 0:
            raise still(f"is still {status} after {args.timeout:g} s (--timeout)")
        try:
            run = await _request(args, "GET", f"/api/runs/{run_id}", params={"trace": False},
                                 timeout=REQUEST_TIMEOUT if left is None else max(min(left, REQUEST_TIMEOUT), 0.001))
        except CliError as exc:
            if exc.code not in (EXIT_UNREACHABLE, EXIT_NO_OUTCOME):
                raise
            if deadline is not None and loop.time() >= deadline:
                raise still(f"is still {status} after {args.timeout:g} s (--timeout)") from None
            raise still(f"was {status} when the engine stopped answering ({exc.message})") from None
        status = run.get("status") or status
        if status not in ("queued", "running"):
            return run  # type: ignore[no-any-return]
        await asyncio.sleep(delay if left is None else min(delay, left))
        delay = min(delay * 1.5, longest)


async def cmd_runs(args: argparse.Namespace) -> int:
    params = {"task": args.task, "status": args.status, "limit": args.limit, "offset": args.offset}
    runs = await _request(args, "GET", "/api/runs", params=params)
    print(_dump(runs) if args.json else _runs_table(runs))
    return EXIT_OK


async def cmd_show(args: argparse.Namespace) -> int:
    run = await _request(args, "GET", f"/api/runs/{args.run_id}", params={"trace": not args.no_trace})
    if args.json:
        print(_dump(run))
    else:
        _print_run(run)
    return EXIT_OK


def _simple(method_path: Callable[[argparse.Namespace], str]) -> Callable[[argparse.Namespace], Coroutine[Any, Any, int]]:
    async def cmd(args: argparse.Namespace) -> int:
        out = await _request(args, "POST", method_path(args))
        print(_dump(out) if args.json else out.get("message", ""))
        return EXIT_OK

    return cmd


# --- the parser ---------------------------------------------------------------------------

_EPILOG = """exit codes: 0 ok, 1 failure (failed run, compile errors, refused request),
2 usage, 3 cannot reach the engine, 4 not found, 5 no outcome yet (no answer in
time, or the run `trigger --wait` waits for is still running: it goes on)"""


def _add(sub: Any, name: str, help: str, example: str, func: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=help, epilog=f"example:\n  {example}\n\n{_EPILOG}",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=func)
    return p


def _remote_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=os.environ.get("CRONSTACK_URL", DEFAULT_URL),
                   help=f"the engine's admin API (default: $CRONSTACK_URL or {DEFAULT_URL})")
    p.add_argument("--token", default=os.environ.get("CRONSTACK_TOKEN"),
                   help="bearer token (default: $CRONSTACK_TOKEN)")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds to wait for an answer (default 30); with trigger --wait, for the run to finish "
                        "(default: no limit)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _int_in(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer from ``low`` to ``high`` (a usage error otherwise, not a wrap-around)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected {low} to {high}, got {value}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cronstack", description="Run background tasks: JSON function stacks on cron schedules.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _add(sub, "run", "run an engine (scheduler + admin API) on a project folder until SIGTERM/SIGINT",
             "CRONSTACK_TOKEN=secret cronstack run tasks/ --host 0.0.0.0 --port 7600", cmd_run)
    p.add_argument("dir", help="project folder of task and function files")
    p.add_argument("--database", help="database URL (default: sqlite:///DIR/cronstack.db or cronstack.toml)")
    p.add_argument("--host", help="admin API address (default 127.0.0.1 or cronstack.toml)")
    p.add_argument("--port", type=_int_in(0, 65535), help="admin API port, 0 = any free one (default 7600)")

    p = _add(sub, "check", "compile every definition, print every error, show each task's next fires",
             "cronstack check tasks/ --dis daily_user_analytics", cmd_check)
    p.add_argument("dir", help="project folder")
    p.add_argument("--dis", metavar="FILE_OR_TASK", help="print the compiled program of a task or function")
    p.add_argument("--native", action="store_true",
                   help="with --dis: print the Python coroutine the stack compiles to instead")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = _add(sub, "exec", "run one stack once (no retries) and print its result and trace",
             "cronstack exec tasks/daily_user_analytics.json --database sqlite:///scratch.db", cmd_exec)
    p.add_argument("file", help="a task or function file, or a JSON list of steps")
    p.add_argument("--project", metavar="DIR", help="load the functions of this project folder (default: the nearest folder "
                   "above FILE holding cronstack.toml, else the parent of FILE's tasks/ or functions/ folder)")
    p.add_argument("--database", help="database URL (default: an in-memory database)")
    p.add_argument("--json", action="store_true", help="print the run as JSON")

    p = _add(sub, "next", "print the next fire times of a task, one ISO-8601 time per line",
             "cronstack next tasks/ weekly_report_generation --count 3 --after 2024-01-01T00:00:00Z", cmd_next)
    p.add_argument("path", metavar="FILE_OR_DIR", help="a task file or a project folder")
    p.add_argument("task", help="task name")
    p.add_argument("--count", type=_int_in(1, 10_000), default=5, help="how many fires (default 5)")
    p.add_argument("--after", metavar="ISO", help="start after this time (default: now; naive = UTC)")

    p = _add(sub, "tasks", "list the tasks of a running engine", "cronstack tasks --url http://127.0.0.1:7600",
             _remote(cmd_tasks))
    _remote_options(p)
    p = _add(sub, "trigger", "start a run of a task on a running engine", "cronstack trigger data_cleanup --wait",
             _remote(cmd_trigger))
    p.add_argument("task", help="task name")
    p.add_argument("--wait", action="store_true",
                   help="wait for the run and print it (exit 1 unless it completed; 5 with its id when it is "
                        "still running after --timeout)")
    p.add_argument("--source", help="who asked, recorded with the run")
    _remote_options(p)
    p = _add(sub, "runs", "list runs of a running engine, newest first", "cronstack runs data_cleanup --status failed",
             _remote(cmd_runs))
    p.add_argument("task", nargs="?", help="only this task's runs")
    p.add_argument("--status", help="only runs with this status (completed, failed, running...)")
    p.add_argument("--limit", type=int, default=20, help="at most this many (default 20)")
    p.add_argument("--offset", type=int, default=0, help="skip this many")
    _remote_options(p)
    p = _add(sub, "show", "show one run with its trace and logs", "cronstack show 018f2a1b3c4d9e8f7a6b", _remote(cmd_show))
    p.add_argument("run_id", help="run id")
    p.add_argument("--no-trace", action="store_true", help="leave out the trace and logs")
    _remote_options(p)
    for name, help, example, make in (
        ("pause", "stop a task's scheduled fires until resumed", "cronstack pause backup_database",
         lambda a: f"/api/tasks/{a.task}/pause"),
        ("resume", "let a paused task fire again", "cronstack resume backup_database",
         lambda a: f"/api/tasks/{a.task}/resume"),
    ):
        p = _add(sub, name, help, example, _remote(_simple(make)))
        p.add_argument("task", help="task name")
        _remote_options(p)
    p = _add(sub, "cancel", "cancel a queued or running run", "cronstack cancel 018f2a1b3c4d9e8f7a6b",
             _remote(_simple(lambda a: f"/api/runs/{a.run_id}/cancel")))
    p.add_argument("run_id", help="run id")
    _remote_options(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cronstack`` command; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        return args.func(args)
    except CliError as exc:
        print(f"cronstack {args.command}: {exc.message}", file=sys.stderr)
        return exc.code
    except CompileError as exc:
        for d in exc.diagnostics:
            print(d, file=sys.stderr)
        return EXIT_FAILURE
    except CronstackError as exc:
        print(f"cronstack {args.command}: {exc.message}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (`cronstack exec x.json | head`): not an error of ours
        sys.stdout = None  # type: ignore[assignment]  # nothing more can be written; no second traceback at exit
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
