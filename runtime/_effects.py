"""Steps that reach outside the run: records and HTTP, through ``RunContext``.

Each handler takes the run context and the step's evaluated fields and returns
the step's result (what ``return_as`` receives). The table is built once; the
VM looks a handler up by the step kind the compiler stored in the instruction.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from runtime._errors import RunError
from runtime._interfaces import RunContext
from runtime._values import check_limits

__all__ = ("EFFECTS", "EffectHandler", "RESULT_OPTIONAL")

EffectHandler = Callable[[RunContext, dict[str, Any]], Awaitable[Any]]

#: ``isinstance`` against a tuple: ``int | float`` builds a union object at every call.
_NUMBER = (int, float)


def _records(ctx: RunContext):
    if ctx.records is None:
        raise RunError(
            "this run has no database; open the engine with a data source to use record steps",
            error_type="NoDatabase",
        )
    return ctx.records


def _need_object(value: Any, field: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RunError(
            f"'{field}' must be an object, got {type(value).__name__}", error_type="InvalidInput"
        )
    check_limits(value)  # a value sharing parts ([s, s] in a loop) must not expand in the store's encoder
    return value


def _optional_int(value: Any, field: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, _NUMBER) or value != int(value) or value < 0:
        raise RunError(f"'{field}' must be a whole number >= 0, got {value!r}", error_type="InvalidInput")
    return int(value)


def _flag(value: Any, field: str) -> bool:
    """A true/false field: a text such as "false" is refused, not taken as true."""
    if value is True or value is False:
        return value
    raise RunError(f"'{field}' must be true or false, got {value!r}", error_type="InvalidInput")


def _table(f: dict[str, Any]) -> str:
    table = f.get("table")
    if not isinstance(table, str) or not table:
        raise RunError(f"'table' must be a table name, got {table!r}", error_type="InvalidName")
    return table


async def _query_all_records(ctx: RunContext, f: dict[str, Any]) -> Any:
    return await _records(ctx).query(
        _table(f),
        filter=_need_object(f.get("filter"), "filter") or None,
        sort=f.get("sort"),
        limit=_optional_int(f.get("limit"), "limit"),
        offset=_optional_int(f.get("offset"), "offset"),
    )


async def _get_record(ctx: RunContext, f: dict[str, Any]) -> Any:
    if f.get("id") is None and not f.get("filter"):
        raise RunError("get_record needs an 'id' or a 'filter'", error_type="InvalidInput")
    return await _records(ctx).get(
        _table(f), id=f.get("id"), filter=_need_object(f.get("filter"), "filter") or None
    )


async def _count_records(ctx: RunContext, f: dict[str, Any]) -> Any:
    return await _records(ctx).count(_table(f), filter=_need_object(f.get("filter"), "filter") or None)


def _add_record(ctx: RunContext, f: dict[str, Any], keep: bool = True) -> Awaitable[Any]:
    """A plain function returning the store's awaitable (the step awaits it).

    A stack may add thousands of records a second: not being a coroutine
    saves a frame per step, and a store class with ``queue_add`` hands back
    the commit future itself, saving ``add``'s frame too. ``queue_add`` is
    looked up on the class, so a wrapper that forwards ``add`` by
    ``__getattr__`` (the fault-injecting store of the tests) still sees
    every add. The checks are ``_records``, ``_table`` and ``_need_object``'s,
    with their errors, written out for the usual types. ``keep=False``
    (native code passes it when the step has no ``as``) lets the store
    resolve to None rather than build a record nobody reads.
    """
    records = ctx.records
    if records is None:
        _records(ctx)
    table = f.get("table")
    if type(table) is not str or not table:
        table = _table(f)
    data = f.get("data")
    if type(data) is not dict:
        data = _need_object(data, "data")
    else:
        check_limits(data)
    queue_add = getattr(type(records), "queue_add", None)
    if queue_add is not None:
        return queue_add(records, table, data, keep)
    return records.add(table, data)


async def _edit_record(ctx: RunContext, f: dict[str, Any]) -> Any:
    if f.get("id") is None:
        raise RunError("edit_record needs an 'id'; it evaluated to null", error_type="InvalidInput")
    return await _records(ctx).edit(_table(f), f["id"], _need_object(f.get("data"), "data"))


async def _delete_record(ctx: RunContext, f: dict[str, Any]) -> Any:
    return await _records(ctx).delete(_table(f), f.get("id"))


async def _add_or_edit_record(ctx: RunContext, f: dict[str, Any]) -> Any:
    identifier = f.get("identifier")
    if not isinstance(identifier, str) or not identifier:
        raise RunError("'identifier' must name a field of 'data'", error_type="InvalidInput")
    data = _need_object(f.get("data"), "data")
    value: Any = data
    for part in identifier.split("."):  # a dotted identifier is a path into nested objects, as in filters
        value = value.get(part) if type(value) is dict else None
    if value is None:
        raise RunError(
            f"'data' has no value for '{identifier}' to match on (the step's identifier)"
            + ("; a dotted identifier is a path into nested objects" if "." in identifier else ""),
            error_type="InvalidInput",
        )
    return await _records(ctx).upsert(_table(f), data, identifier)


def _bulk_filter(f: dict[str, Any]) -> dict[str, Any]:
    flt = _need_object(f.get("filter"), "filter")
    if not flt:
        raise RunError(
            "a bulk step needs a non-empty 'filter'; to touch every record use {\"id\": {\"$exists\": true}}",
            error_type="InvalidInput",
        )
    return flt


async def _delete_records(ctx: RunContext, f: dict[str, Any]) -> Any:
    return await _records(ctx).delete_many(_table(f), _bulk_filter(f))


async def _edit_records(ctx: RunContext, f: dict[str, Any]) -> Any:
    return await _records(ctx).edit_many(_table(f), _bulk_filter(f), _need_object(f.get("data"), "data"))


async def _external_api_request(ctx: RunContext, f: dict[str, Any]) -> Any:
    """One HTTP request; its checks are written out (no helper calls) because a
    stack may run it thousands of times a second: an absent optional field costs
    one ``get``."""
    http = ctx.http
    if http is None:
        raise RunError("this run has no HTTP client", error_type="NoHttp")
    get = f.get
    url = get("url")
    if not isinstance(url, str) or not url:
        raise RunError(f"'url' must be text, got {url!r}", error_type="InvalidInput")
    method = get("method") or "GET"
    if not isinstance(method, str):
        raise RunError(f"'method' must be text, got {method!r}", error_type="InvalidInput")
    timeout = get("timeout", 30)
    if isinstance(timeout, bool) or not isinstance(timeout, _NUMBER) or timeout <= 0:
        raise RunError(f"'timeout' must be a positive number of seconds, got {timeout!r}", error_type="InvalidInput")
    headers = get("headers")
    if headers is not None and not isinstance(headers, dict):
        _need_object(headers, "headers")
    query = get("query")
    if query is not None and not isinstance(query, dict):
        _need_object(query, "query")
    retries = get("retries")
    response = await http.request(
        method.upper(),
        url,
        headers=headers or None,
        query=query or None,
        body=get("body"),
        body_format=get("body_format") or "json",
        timeout=float(timeout),
        retries=0 if retries is None else _optional_int(retries, "retries") or 0,
        follow_redirects=_flag(get("follow_redirects", True), "follow_redirects"),
    )
    return response.body


#: step kinds whose handler takes a third argument, ``keep``: False when the
#: step stores no result, so the handler may return None instead of building it
RESULT_OPTIONAL = frozenset({"add_record"})

EFFECTS: dict[str, EffectHandler] = {
    "query_all_records": _query_all_records,
    "get_record": _get_record,
    "count_records": _count_records,
    "add_record": _add_record,
    "edit_record": _edit_record,
    "delete_record": _delete_record,
    "add_or_edit_record": _add_or_edit_record,
    "delete_records": _delete_records,
    "edit_records": _edit_records,
    "external_api_request": _external_api_request,
}
