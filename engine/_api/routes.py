"""Request handlers of the admin API: the seed's monitor endpoints and the REST surface.

Handlers only read or poke the engine facade (``tasks``, ``runs``, ``trigger``
...) and never do long work themselves; the one exception is
``POST /api/tasks/{name}/trigger?wait=true``, which a caller asks for
explicitly and which awaits the run without blocking the loop.
``ROUTES`` is the single table the application, the OpenAPI document and the
tests are built from.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from compiler._errors import did_you_mean
from engine._api.errors import ApiError
from engine._api.jsonio import (
    get_int,
    get_str,
    iso,
    json_response,
    query_bool,
    query_choice,
    query_int,
    read_object,
)

__all__ = ("ENGINE", "ROUTES", "Route", "RUN_STATUSES", "SORTS", "history_entry")

ENGINE: web.AppKey[Any] = web.AppKey("cronstack_engine", object)

RUN_STATUSES = (
    "queued",
    "running",
    "completed",
    "failed",
    "timed_out",
    "cancelled",
    "skipped",
    "crashed",
)
#: the orders ``POST /api/admin/task-history`` accepts in ``sort``
SORTS = ("executed_at desc", "executed_at asc")
MAX_LIMIT = 1000
_CANCELLABLE = ("queued", "running")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    handler: Handler
    #: False for the few routes that answer without a token
    auth: bool = True


def _engine(request: web.Request) -> Any:
    return request.app[ENGINE]


def _check_task(engine: Any, name: str) -> None:
    names = engine.task_names()
    if name not in names:
        hint = did_you_mean(name, names) or "GET /api/tasks lists the tasks"
        raise ApiError(404, f"no task named '{name}'; {hint}")


def history_entry(run: dict[str, Any] | None) -> dict[str, Any] | None:
    """A run as the seed's dashboard reads it: ``executed_at`` and ``finished_at`` as ISO text."""
    if run is None:
        return None
    started = run.get("started_at")
    return {
        "id": run.get("id"),
        "task_name": run.get("task"),
        "trigger": run.get("trigger"),
        "status": run.get("status"),
        "attempt": run.get("attempt"),
        "executed_at": iso(started if started is not None else run.get("scheduled_at")),
        "finished_at": iso(run.get("finished_at")),
        "duration": run.get("duration"),
        "error": run.get("error"),
    }


# --- the seed's monitor endpoints ---------------------------------------------------------


async def admin_task_history(request: web.Request) -> web.StreamResponse:
    body = await read_object(request)
    engine = _engine(request)
    name = get_str(body, "task_name", required=True)
    limit = get_int(body, "limit", default=10, low=1, high=MAX_LIMIT)
    sort = get_str(body, "sort", default=SORTS[0])
    if sort not in SORTS:
        raise ApiError(400, f"field 'sort' must be one of {', '.join(repr(s) for s in SORTS)}; got {sort!r}")
    _check_task(engine, name)  # type: ignore[arg-type]
    runs = await engine.runs(name, limit=limit, newest_first=sort == SORTS[0], by="executed_at")
    return json_response([history_entry(r) for r in runs])


async def admin_active_tasks(request: web.Request) -> web.StreamResponse:
    tasks = await _engine(request).tasks()
    return json_response([t | {"last_run": history_entry(t.get("last_run"))} for t in tasks])


async def admin_trigger_task(request: web.Request) -> web.StreamResponse:
    body = await read_object(request)
    name = get_str(body, "task_name", required=True)
    source = get_str(body, "trigger_source")
    run_id = await _engine(request).trigger(name, trigger="manual", source=source)
    return json_response(_queued(name, run_id), status=202)  # type: ignore[arg-type]


def _queued(name: str, run_id: str) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "task_name": name,
        "status": "queued",
        "message": f"task '{name}' queued as run {run_id}",
    }


# --- REST ---------------------------------------------------------------------------------


async def list_tasks(request: web.Request) -> web.StreamResponse:
    return json_response(await _engine(request).tasks())


async def get_task(request: web.Request) -> web.StreamResponse:
    return json_response(await _engine(request).task(request.match_info["name"]))


def _paging(request: web.Request) -> dict[str, Any]:
    return {
        "status": query_choice(request, "status", RUN_STATUSES),
        "limit": query_int(request, "limit", default=50, low=1, high=MAX_LIMIT),
        "offset": query_int(request, "offset", default=0, low=0, high=10**9),
        "newest_first": query_choice(request, "order", ("desc", "asc")) != "asc",
    }


async def task_runs(request: web.Request) -> web.StreamResponse:
    engine = _engine(request)
    name = request.match_info["name"]
    paging = _paging(request)
    _check_task(engine, name)
    return json_response(await engine.runs(name, **paging))


async def list_runs(request: web.Request) -> web.StreamResponse:
    engine = _engine(request)
    paging = _paging(request)
    task = request.query.get("task") or None
    if task is not None:
        _check_task(engine, task)
    return json_response(await engine.runs(task, **paging))


async def get_run(request: web.Request) -> web.StreamResponse:
    run_id = request.match_info["run_id"]
    trace = query_bool(request, "trace", default=True)
    run = await _engine(request).run(run_id, trace=trace)
    if run is None:
        raise ApiError(404, f"no run with id '{run_id}'")
    return json_response(run)


async def trigger_task(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    wait = query_bool(request, "wait", default=False)
    body = await read_object(request, required=False)
    source = get_str(body, "source")
    engine = _engine(request)
    if wait:
        run = await engine.trigger(name, wait=True, trigger="manual", source=source)
        return json_response(run)
    run_id = await engine.trigger(name, trigger="manual", source=source)
    return json_response(_queued(name, run_id), status=202)


async def pause_task(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    await _engine(request).pause(name)
    return json_response({"name": name, "paused": True, "message": f"task '{name}' is paused"})


async def resume_task(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    await _engine(request).resume(name)
    return json_response({"name": name, "paused": False, "message": f"task '{name}' is resumed"})


async def cancel_run(request: web.Request) -> web.StreamResponse:
    run_id = request.match_info["run_id"]
    engine = _engine(request)
    if await engine.cancel(run_id):
        return json_response(
            {"run_id": run_id, "cancelled": True, "message": f"run {run_id} is being cancelled"},
            status=202,
        )
    run = await engine.run(run_id, trace=False)
    if run is None:
        raise ApiError(404, f"no run with id '{run_id}'")
    raise ApiError(
        409,
        f"run {run_id} is {run.get('status')}; only {' or '.join(_CANCELLABLE)} runs can be cancelled",
    )


# --- operations ---------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.StreamResponse:
    stats = _engine(request).stats()
    return json_response(
        {
            "status": "ok",
            "running": stats.get("running", 0),
            "queued": stats.get("queued", 0),
            "scheduler_lag_seconds": stats.get("scheduler_lag_seconds", 0.0),
        }
    )


async def metrics(request: web.Request) -> web.StreamResponse:
    from engine._api.metrics import METRICS, render

    body, content_type = render(request.app[METRICS])
    return web.Response(body=body, headers={"Content-Type": content_type})


async def openapi(request: web.Request) -> web.StreamResponse:
    from engine._api.openapi import build_openapi

    return json_response(build_openapi())


ROUTES: tuple[Route, ...] = (
    Route("POST", "/api/admin/task-history", admin_task_history),
    Route("GET", "/api/admin/active-tasks", admin_active_tasks),
    Route("POST", "/api/admin/trigger-task", admin_trigger_task),
    Route("GET", "/api/tasks", list_tasks),
    Route("GET", "/api/tasks/{name}", get_task),
    Route("GET", "/api/tasks/{name}/runs", task_runs),
    Route("POST", "/api/tasks/{name}/trigger", trigger_task),
    Route("POST", "/api/tasks/{name}/pause", pause_task),
    Route("POST", "/api/tasks/{name}/resume", resume_task),
    Route("GET", "/api/runs", list_runs),
    Route("GET", "/api/runs/{run_id}", get_run),
    Route("POST", "/api/runs/{run_id}/cancel", cancel_run),
    Route("GET", "/healthz", healthz, auth=False),
    Route("GET", "/metrics", metrics),
    Route("GET", "/api/openapi.json", openapi, auth=False),
)
