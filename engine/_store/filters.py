"""The filter language of record steps, turned into SQL with bound values.

Structure comes only from validated identifiers and fixed keywords; every
value a user gives travels as a ``?`` parameter. A field of the JSON document
reads as ``json_extract(data, '$.path')`` (the same text a declared expression
index uses, so SQLite picks the index), ``id``/``created_at``/``updated_at``
read their columns.

Comparisons follow JSON kinds: a number matches only numbers (integers and
reals compare numerically), text only text, ``true``/``false`` only booleans,
so ``5`` never equals ``"5"`` and ``false`` never equals ``0``. Ordering
operators need a number or a text. ``null`` equality matches a field that is
null or missing; ``$ne``, ``$nin`` and ``$not`` match missing fields too (as
MongoDB does); ``$exists`` is true for a present field even when it is null.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from typing import Any

import msgspec

from engine._store.errors import InvalidFilter, InvalidName

__all__ = (
    "COLUMNS",
    "TABLE_KEYS",
    "check_table",
    "check_field",
    "field_sql",
    "compile_filter",
    "compile_sort",
    "check_count",
    "equals",
)

#: Fields stored as columns rather than inside the JSON document.
COLUMNS = frozenset({"id", "created_at", "updated_at"})
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_RESERVED_PREFIXES = ("cronstack_", "sqlite_")
_MAX_NAME = 64
_MAX_PATH_DEPTH = 16
_MAX_FILTER_DEPTH = 32
_MAX_IN = 10_000
_OPERATORS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$like", "$exists", "$not")
_LOGICAL = ("$and", "$or", "$not")
_RANGE = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
_NUMBER_TYPES = "('integer','real')"
_encode = msgspec.json.encode


def did_you_mean(name: str, candidates: tuple[str, ...]) -> str | None:
    """A hint naming the nearest known operator (the compiler is not imported here)."""
    match = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return f"did you mean {match[0]!r}?" if match else None


#: Table names already checked, to their keys: a hit skips ``check_table``
#: (the hot path of ``add`` reads it directly).
TABLE_KEYS: dict[str, str] = {}


def check_table(name: Any) -> str:
    """The table's key (lower case: SQLite table names ignore case) or ``InvalidName``."""
    key = TABLE_KEYS.get(name) if isinstance(name, str) else None
    if key is not None:
        return key
    if not isinstance(name, str) or not _IDENT.match(name) or len(name) > _MAX_NAME:
        raise InvalidName(
            f"table name {name!r} is not valid: use letters, digits and _ "
            f"(not starting with a digit, at most {_MAX_NAME} characters)",
            name=name if isinstance(name, str) else repr(name),
        )
    key = name.lower()
    if key.startswith(_RESERVED_PREFIXES):
        raise InvalidName(
            f"table name {name!r} is reserved (names starting with cronstack_ or sqlite_ "
            "belong to the engine); choose another name",
            name=name,
        )
    if len(TABLE_KEYS) < 10_000:  # names come from definitions: a small set
        TABLE_KEYS[name] = key
    return key


def check_field(path: Any) -> str:
    """``path`` when it is an identifier or a dotted path of identifiers."""
    if isinstance(path, str) and len(path) <= 4 * _MAX_NAME:
        parts = path.split(".")
        if len(parts) <= _MAX_PATH_DEPTH and all(_IDENT.match(p) for p in parts):
            return path
    raise InvalidName(
        f"field name {path!r} is not valid: use identifiers (letters, digits, _) "
        "joined by dots for nested fields, e.g. 'address.city'",
        name=path if isinstance(path, str) else repr(path),
    )


def field_sql(path: str) -> tuple[str, str]:
    """SQL for the value of a checked field and for its JSON kind."""
    if path in COLUMNS:
        return path, f"typeof({path})"
    jp = f"'$.{path}'"
    return f"json_extract(data, {jp})", f"json_type(data, {jp})"


def _kind(value: Any, where: str) -> str:
    if value is None:
        return "null"
    if value is True or value is False:
        return "bool"
    if isinstance(value, int):
        return "number"
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidFilter(f"{where}: {value!r} is not a JSON number; compare with a finite one")
        return "number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, (list, tuple, dict)):
        return "json"
    raise InvalidFilter(f"{where}: a value of type {type(value).__name__} cannot be compared")


def equals(path: str, value: Any, params: list[Any]) -> str:
    """SQL true when field ``path`` equals ``value`` (same JSON kind and value)."""
    expr, typ = field_sql(path)
    kind = _kind(value, f"filter on {path!r}")
    if kind == "null":
        return f"{expr} IS NULL"
    if kind == "bool":
        return f"{typ} = '{'true' if value else 'false'}'"
    if kind == "number":
        params.append(value)
        return f"({expr} = ? AND {typ} IN {_NUMBER_TYPES})"
    if kind == "text":
        params.append(value)
        return f"({expr} = ? AND {typ} = 'text')"
    params.append(_encode(value).decode())
    return f"({expr} = ? AND {typ} IN ('object','array'))"


def _in(path: str, values: Any, params: list[Any]) -> str:
    if not isinstance(values, (list, tuple)) or len(values) > _MAX_IN:
        raise InvalidFilter(
            f"filter on {path!r}: $in/$nin needs a list of at most {_MAX_IN} values, "
            f"got {type(values).__name__}"
        )
    expr, typ = field_sql(path)
    groups: dict[str, list[Any]] = {"number": [], "text": []}
    parts = []
    for v in values:
        kind = _kind(v, f"filter on {path!r}")
        if kind in groups:
            groups[kind].append(v)
        else:
            parts.append(equals(path, v, params))
    for kind, guard in (("number", f"IN {_NUMBER_TYPES}"), ("text", "= 'text'")):
        if groups[kind]:
            params.extend(groups[kind])
            marks = ",".join("?" * len(groups[kind]))
            parts.append(f"({typ} {guard} AND {expr} IN ({marks}))")
    return "(" + " OR ".join(parts) + ")" if parts else "0"


def _operator(path: str, op: str, arg: Any, params: list[Any]) -> str:
    expr, typ = field_sql(path)
    where = f"filter on {path!r}: {op}"
    if op == "$eq":
        return equals(path, arg, params)
    if op == "$ne":
        return f"NOT coalesce({equals(path, arg, params)}, 0)"
    if op in _RANGE:
        kind = _kind(arg, where)
        if kind not in ("number", "text"):
            raise InvalidFilter(f"{where} needs a number or a text, got {kind}")
        params.append(arg)
        guard = f"IN {_NUMBER_TYPES}" if kind == "number" else "= 'text'"
        return f"({typ} {guard} AND {expr} {_RANGE[op]} ?)"
    if op == "$in":
        return _in(path, arg, params)
    if op == "$nin":
        return f"NOT coalesce({_in(path, arg, params)}, 0)"
    if op == "$like":
        if not isinstance(arg, str):
            raise InvalidFilter(f"{where} needs a text pattern (% any run, _ one character)")
        params.append(arg)
        return f"({typ} = 'text' AND {expr} LIKE ? ESCAPE '\\')"
    if op == "$exists":
        if arg is not True and arg is not False:
            raise InvalidFilter(f"{where} needs true or false")
        if path in COLUMNS:
            return "1" if arg else "0"
        return f"{typ} IS {'NOT ' if arg else ''}NULL"
    if op == "$not":
        return f"NOT coalesce({_field(path, arg, params, 0)}, 0)"
    hint = did_you_mean(op, _OPERATORS)
    raise InvalidFilter(f"filter on {path!r}: unknown operator {op!r}" + (f"; {hint}" if hint else ""))


def _field(path: str, cond: Any, params: list[Any], depth: int) -> str:
    if isinstance(cond, Mapping) and cond and any(str(k).startswith("$") for k in cond):
        if not all(isinstance(k, str) and k.startswith("$") for k in cond):
            raise InvalidFilter(
                f"filter on {path!r} mixes operators and plain keys: {sorted(map(str, cond))}; "
                "use only operators ($eq, $gt...) or only an object to compare with"
            )
        parts = [_operator(path, op, arg, params) for op, arg in cond.items()]
        return parts[0] if len(parts) == 1 else "(" + " AND ".join(parts) + ")"
    return equals(path, cond, params)


def _node(flt: Any, params: list[Any], depth: int) -> str:
    if not isinstance(flt, Mapping):
        raise InvalidFilter(f"a filter must be an object, got {type(flt).__name__}")
    if depth > _MAX_FILTER_DEPTH:
        raise InvalidFilter(f"filter nests deeper than {_MAX_FILTER_DEPTH} levels")
    parts = []
    for key, cond in flt.items():
        if not isinstance(key, str):
            raise InvalidName(f"field name {key!r} is not valid: use a text name", name=repr(key))
        if key in ("$and", "$or"):
            if not isinstance(cond, (list, tuple)) or not all(isinstance(c, Mapping) for c in cond):
                raise InvalidFilter(f"{key} needs a list of filter objects")
            subs = [_node(c, params, depth + 1) for c in cond]
            if not subs:
                parts.append("1" if key == "$and" else "0")
            else:
                parts.append("(" + f" {key[1:].upper()} ".join(f"({s})" for s in subs) + ")")
        elif key == "$not":
            parts.append(f"NOT coalesce(({_node(cond, params, depth + 1)}), 0)")
        elif key.startswith("$"):
            hint = did_you_mean(key, _LOGICAL)
            raise InvalidFilter(
                f"unknown operator {key!r} at the top of a filter (use $and, $or, $not or a field "
                "name)" + (f"; {hint}" if hint else "")
            )
        else:
            parts.append(_field(check_field(key), cond, params, depth))
    if not parts:
        return "1"
    return parts[0] if len(parts) == 1 else " AND ".join(f"({p})" for p in parts)


def compile_filter(flt: Mapping[str, Any] | None) -> tuple[str, list[Any]]:
    """``(where_sql, params)`` for a filter; no filter (or ``{}``) matches every record."""
    params: list[Any] = []
    if flt is None:
        return "1", params
    return _node(flt, params, 0), params


def _sort_part(part: Any) -> str:
    if isinstance(part, Mapping):
        unknown = set(part) - {"field", "direction"}
        if unknown or "field" not in part:
            raise InvalidFilter(
                f"a sort entry must be {{'field': ..., 'direction': 'asc'|'desc'}}, got {dict(part)!r}"
            )
        field, direction = part["field"], part.get("direction", "asc")
    elif isinstance(part, str):
        words = part.split()
        if not 1 <= len(words) <= 2:
            raise InvalidFilter(f"sort entry {part!r} is not 'field' or 'field asc|desc'")
        field, direction = words[0], words[1] if len(words) == 2 else "asc"
    else:
        raise InvalidFilter(f"a sort entry must be a text or an object, got {type(part).__name__}")
    if not isinstance(direction, str) or direction.lower() not in ("asc", "desc"):
        raise InvalidFilter(f"sort direction {direction!r} for {field!r} must be 'asc' or 'desc'")
    return f"{field_sql(check_field(field))[0]} {direction.upper()}"


def compile_sort(sort: str | list[Any] | None) -> str:
    """An ORDER BY list; ties (and no sort) keep insertion order."""
    if sort is None or sort == "" or sort == []:
        return "rowid"
    if isinstance(sort, str):
        entries: list[Any] = [p for p in sort.split(",") if p.strip()]
        if not entries:
            raise InvalidFilter(f"sort {sort!r} names no field")
    elif isinstance(sort, (list, tuple)):
        entries = []
        for p in sort:
            entries.extend(p.split(",") if isinstance(p, str) else [p])
    else:
        raise InvalidFilter(f"sort must be a text or a list, got {type(sort).__name__}")
    return ", ".join(_sort_part(p) for p in entries) + ", rowid"


def check_count(value: Any, what: str) -> int | None:
    """A limit or offset: None, or a whole number >= 0."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidFilter(f"{what} must be a whole number >= 0, got {value!r}")
    return value
