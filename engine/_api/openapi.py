"""The OpenAPI 3.1 document of the admin API, built from the same route table as the server.

``OPERATIONS`` describes each route of ``routes.ROUTES`` (a test checks both
have the same set of ``(method, path)``); schemas are JSON Schema 2020-12 as
OpenAPI 3.1 uses them, so a test can validate live responses against them.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from engine._api.routes import MAX_LIMIT, ROUTES, RUN_STATUSES, SORTS

__all__ = ("build_openapi", "OPERATIONS")

_TRIGGERS = ["schedule", "manual", "retry", "catchup", "async_call"]
_TASK_STATUSES = ["idle", "running", "paused", "inactive"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


_TIME = {"type": ["number", "null"], "description": "Unix time in seconds"}
_ISO = {"type": ["string", "null"], "format": "date-time"}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["message"],
        "properties": {"message": {"type": "string"}},
    },
    "RunError": {
        "type": "object",
        "description": "The error object of a failed run: message, type, step, and extra fields.",
        "required": ["message"],
        "properties": {
            "message": {"type": "string"},
            "type": {"type": ["string", "null"]},
            "step": {"type": ["string", "null"]},
        },
    },
    "TraceEntry": {
        "type": "object",
        "required": ["path", "kind"],
        "properties": {
            "path": {"type": "string"},
            "kind": {"type": "string"},
            "started": {"type": ["number", "null"]},
            "duration": {"type": ["number", "null"]},
            "inputs": {},
            "output": {},
            "error": _nullable(_ref("RunError")),
        },
    },
    "Run": {
        "type": "object",
        "required": ["id", "task", "trigger", "status", "attempt"],
        "properties": {
            "id": {"type": "string"},
            "task": {"type": "string"},
            "kind": {"type": "string", "enum": ["task", "function"]},
            "trigger": {"type": "string", "enum": _TRIGGERS},
            "status": {"type": "string", "enum": list(RUN_STATUSES)},
            "scheduled_at": _TIME,
            "started_at": _TIME,
            "finished_at": _TIME,
            "duration": {"type": ["number", "null"], "description": "seconds"},
            "attempt": {"type": "integer", "minimum": 1},
            "result": {"description": "the value of the stack's return step"},
            "error": _nullable(_ref("RunError")),
            "parent_id": {"type": ["string", "null"]},
            "trace": {"type": "array", "items": _ref("TraceEntry")},
            "logs": {"type": "array"},
        },
    },
    "HistoryEntry": {
        "type": "object",
        "description": "A run as the seed's dashboard reads it.",
        "required": ["id", "task_name", "status", "executed_at", "duration", "error"],
        "properties": {
            "id": {"type": "string"},
            "task_name": {"type": "string"},
            "trigger": {"type": "string", "enum": _TRIGGERS},
            "status": {"type": "string", "enum": list(RUN_STATUSES)},
            "attempt": {"type": "integer"},
            "executed_at": {**_ISO, "description": "started_at, or scheduled_at before it starts"},
            "finished_at": _ISO,
            "duration": {"type": ["number", "null"], "description": "seconds"},
            "error": _nullable(_ref("RunError")),
        },
    },
    "TaskBase": {
        "type": "object",
        "required": ["name", "status", "active", "paused", "next_execution", "last_run"],
        "properties": {
            "name": {"type": "string"},
            "description": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "schedule": {"type": ["string", "null"]},
            "timezone": {"type": "string"},
            "active": {"type": "boolean"},
            "missing_env": {"type": "array", "items": {"type": "string"},
                            "description": "variables of the task's requires_env that are not set (it is inactive until they are)"},
            "paused": {"type": "boolean"},
            "status": {"type": "string", "enum": _TASK_STATUSES},
            "next_execution": _ISO,
        },
    },
    "TaskSummary": {
        "allOf": [_ref("TaskBase")],
        "properties": {"last_run": _nullable(_ref("Run"))},
    },
    "ActiveTask": {
        "allOf": [_ref("TaskBase")],
        "properties": {"last_run": _nullable(_ref("HistoryEntry"))},
    },
    "TaskDetail": {
        "allOf": [_ref("TaskSummary")],
        "required": ["definition", "next_fires", "recent_runs"],
        "properties": {
            "definition": {"type": "object"},
            "next_fires": {"type": "array", "items": {"type": "string", "format": "date-time"}},
            "recent_runs": {"type": "array", "items": _ref("Run")},
        },
    },
    "Queued": {
        "type": "object",
        "required": ["run_id", "task_name", "status", "message"],
        "properties": {
            "run_id": {"type": "string"},
            "task_name": {"type": "string"},
            "status": {"const": "queued"},
            "message": {"type": "string"},
        },
    },
    "PauseState": {
        "type": "object",
        "required": ["name", "paused", "message"],
        "properties": {"name": {"type": "string"}, "paused": {"type": "boolean"}, "message": {"type": "string"}},
    },
    "Cancelled": {
        "type": "object",
        "required": ["run_id", "cancelled", "message"],
        "properties": {"run_id": {"type": "string"}, "cancelled": {"const": True}, "message": {"type": "string"}},
    },
    "Health": {
        "type": "object",
        "required": ["status", "running", "queued", "scheduler_lag_seconds"],
        "properties": {
            "status": {"const": "ok"},
            "running": {"type": "integer"},
            "queued": {"type": "integer"},
            "scheduler_lag_seconds": {"type": "number"},
        },
    },
    "TaskHistoryRequest": {
        "type": "object",
        "required": ["task_name"],
        "properties": {
            "task_name": {"type": "string", "minLength": 1},
            "limit": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 10},
            "sort": {"type": "string", "enum": list(SORTS), "default": SORTS[0]},
        },
    },
    "TriggerTaskRequest": {
        "type": "object",
        "required": ["task_name"],
        "properties": {
            "task_name": {"type": "string", "minLength": 1},
            "trigger_source": {"type": "string", "description": "who asked, recorded with the run"},
        },
    },
    "TriggerRequest": {
        "type": "object",
        "properties": {"source": {"type": "string", "description": "who asked, recorded with the run"}},
    },
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {
    "400": "the body or a parameter is invalid (the message names it)",
    "401": "no bearer token",
    "403": "wrong bearer token",
    "404": "unknown task, run or route",
    "409": "the engine's state does not allow it",
    "413": "request body too large",
}


def _path(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": {"type": "string"}}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


_TASK = _path("name", "task name")
_RUN = _path("run_id", "run id")
_PAGING = [
    _query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 50}, "at most this many runs"),
    _query("offset", {"type": "integer", "minimum": 0, "default": 0}, "skip this many runs"),
    _query("status", {"type": "string", "enum": list(RUN_STATUSES)}, "only runs with this status"),
    _query("order", {"type": "string", "enum": ["desc", "asc"], "default": "desc"}, "newest (desc) or oldest first"),
]
_LIST = {"type": "array"}


def _op(summary: str, ok: str, schema: Any, *, errors: tuple[str, ...] = ("401", "403"), params: list[Any] | None = None,
        body: str | None = None, body_required: bool = True, public: bool = False, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    responses: dict[str, Any] = {ok: _json(schema, summary)}
    for code in errors if not public else ():
        responses[code] = _json(_ref("Error"), _ERRORS[code])
    responses.update(extra or {})
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if params:
        op["parameters"] = params
    if body:
        op["requestBody"] = {"required": body_required, "content": {"application/json": {"schema": _ref(body)}}}
    if public:
        op["security"] = []
    return op


_E = ("400", "401", "403", "404", "413")
OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/api/admin/task-history"): _op(
        "Runs of one task, as the seed's dashboard reads them", "200", {**_LIST, "items": _ref("HistoryEntry")},
        errors=_E, body="TaskHistoryRequest"),
    ("GET", "/api/admin/active-tasks"): _op(
        "Every task with its status, next execution and last run", "200", {**_LIST, "items": _ref("ActiveTask")}),
    ("POST", "/api/admin/trigger-task"): _op(
        "Queue a manual run of a task (seed dashboard)", "202", _ref("Queued"), errors=(*_E, "409"), body="TriggerTaskRequest"),
    ("GET", "/api/tasks"): _op("Every task", "200", {**_LIST, "items": _ref("TaskSummary")}),
    ("GET", "/api/tasks/{name}"): _op(
        "One task with its definition, next fires and recent runs", "200", _ref("TaskDetail"),
        errors=("401", "403", "404"), params=[_TASK]),
    ("GET", "/api/tasks/{name}/runs"): _op(
        "Runs of one task", "200", {**_LIST, "items": _ref("Run")}, errors=("400", "401", "403", "404"),
        params=[_TASK, *_PAGING]),
    ("POST", "/api/tasks/{name}/trigger"): _op(
        "Queue a manual run (202), or with wait=true run it and return the finished run (200)", "202",
        _ref("Queued"), errors=(*_E, "409"), body="TriggerRequest", body_required=False,
        params=[_TASK, _query("wait", {"type": "boolean", "default": False}, "wait for the run to finish")],
        extra={"200": _json(_ref("Run"), "the finished run (wait=true)")}),
    ("POST", "/api/tasks/{name}/pause"): _op(
        "Stop scheduled fires of a task until resumed", "200", _ref("PauseState"), errors=("401", "403", "404"), params=[_TASK]),
    ("POST", "/api/tasks/{name}/resume"): _op(
        "Let a paused task fire again", "200", _ref("PauseState"), errors=("401", "403", "404"), params=[_TASK]),
    ("GET", "/api/runs"): _op(
        "Runs of every task (or of ?task=)", "200", {**_LIST, "items": _ref("Run")}, errors=("400", "401", "403", "404"),
        params=[_query("task", {"type": "string"}, "only this task's runs"), *_PAGING]),
    ("GET", "/api/runs/{run_id}"): _op(
        "One run with its trace and logs", "200", _ref("Run"), errors=("400", "401", "403", "404"),
        params=[_RUN, _query("trace", {"type": "boolean", "default": True}, "include trace and logs")]),
    ("POST", "/api/runs/{run_id}/cancel"): _op(
        "Cancel a queued or running run", "202", _ref("Cancelled"), errors=("401", "403", "404", "409"), params=[_RUN]),
    ("GET", "/healthz"): _op("Liveness and load; no token needed", "200", _ref("Health"), public=True),
    ("GET", "/metrics"): {
        "summary": "Prometheus metrics (text exposition format)",
        "responses": {
            "200": {"description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}},
            "401": _json(_ref("Error"), _ERRORS["401"]),
            "403": _json(_ref("Error"), _ERRORS["403"]),
        },
    },
    ("GET", "/api/openapi.json"): _op("This document; no token needed", "200", {"type": "object"}, public=True),
}


@cache
def build_openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 document (built once; treat as read-only)."""
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        op = OPERATIONS[(route.method, route.path)]
        paths.setdefault(route.path, {})[route.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "cronstack admin API",
            "version": "1",
            "description": "Monitor and steer a running cronstack engine. Errors are {\"message\": ...}.",
        },
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }
