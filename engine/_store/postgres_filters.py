"""The filter language in PostgreSQL's SQL: the dialect ``filters.compile_filter`` takes.

``filters.py`` walks and checks the filter (the same structure, limits and
errors for every backend); this module writes each comparison for a record
table whose free fields are the JSONB column ``data`` (generated from the
stored JSON text ``doc``) and whose ``id`` is JSONB too, so that ``5`` and
``"5"`` stay different ids. A field reads as ``data #> '{a,b}'``: exactly the
expression a declared index is built on (``postgres_schema.index_ddl``), so
equality, ``$in`` and number ranges use the index.

The semantics are SQLite's (docs/store.md, "Filters"): JSONB equality is
already kind-aware (``5`` is not ``"5"``, ``false`` is not ``0``, ``30`` equals
``30.0``); ordering operators are guarded to their kind; texts order by their
bytes (``COLLATE "C"``, as SQLite's BINARY); ``$like`` folds ASCII letters
only, as SQLite's LIKE does. Differences, documented in docs/store.md: integers
beyond 64 bits compare exactly (SQLite reads them as reals), and arrays and
objects compare as JSON values (key order and ``1`` vs ``1.0`` do not matter)
rather than as their text. Every value is a ``$n`` parameter.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from engine._store.filters import COLUMNS, _number, compile_filter, compile_sort

__all__ = ("PG", "compile_pg_filter", "compile_pg_sort", "path_sql", "value_sql")

_encode = msgspec.json.encode
_UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_LOWER = _UPPER.lower()
#: JSON kinds by rank in a sort: null/missing, then numbers and booleans, then the rest as text
_RANK = ("CASE jsonb_typeof({e}) WHEN 'number' THEN 1 WHEN 'boolean' THEN 1 WHEN 'string' THEN 2 "
         "WHEN 'object' THEN 2 WHEN 'array' THEN 2 ELSE 0 END")
_NUM = ("CASE jsonb_typeof({e}) WHEN 'number' THEN ({e})::numeric "
        "WHEN 'boolean' THEN ({e})::boolean::int::numeric END")


def path_sql(path: str) -> str:
    """The text array literal of a checked dotted path, every element double-quoted: unquoted, an
    element spelled ``null`` (any case) is SQL NULL in an array literal and the path never matches.
    (Checked paths are identifiers; ``"`` and ``\\`` are escaped all the same, ``'`` doubled.)"""
    parts = ('"' + p.replace("\\", "\\\\").replace('"', '\\"') + '"' for p in path.split("."))
    return "'{" + ",".join(parts).replace("'", "''") + "}'"


def value_sql(path: str) -> str:
    """The JSONB value of checked field ``path`` (``id`` is a JSONB column)."""
    return "id" if path == "id" else f"(data #> {path_sql(path)})"


def _text_sql(path: str) -> str:
    return "(id #>> '{}')" if path == "id" else f"(data #>> {path_sql(path)})"


#: a NUL's escape in JSON text: ``\u0000`` after an even number of backslashes (``\\u0000`` is a
#: backslash, then the text ``u0000``)
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def _has_nul(text: str) -> bool:
    return "\\u0000" in text and _NUL_ESCAPE.search(text) is not None


def _json(value: Any) -> str | None:
    """JSON text of a checked value, or None when it holds NUL (JSONB cannot: nothing matches)."""
    text = _encode(value).decode()
    return None if _has_nul(text) else text


def _bind(params: list[Any], value: Any) -> str:
    params.append(value)
    return f"${len(params)}"


def _float(value: Any) -> float:
    """A number compared with a float column: as SQLite reads it (``filters._number``: an integer
    too large for a float is infinity), never an OverflowError."""
    return float(_number(value))


def _float_column(path: str) -> bool:
    return path in COLUMNS and path != "id"


def _like_ends_in_escape(pattern: str) -> bool:
    """Whether ``pattern`` ends with an unescaped ``\\`` (SQLite matches nothing; PostgreSQL raises)."""
    i, n = 0, len(pattern)
    while i < n:
        if pattern[i] == "\\":
            if i == n - 1:
                return True
            i += 2
        else:
            i += 1
    return False


class _PostgresDialect:
    true = "TRUE"
    false = "FALSE"
    insertion_order = "seq"

    @staticmethod
    def not_(sql: str) -> str:
        return f"({sql}) IS NOT TRUE"

    def equals(self, path: str, value: Any, params: list[Any]) -> str:
        from engine._store.filters import _kind

        kind = _kind(value, f"filter on {path!r}")
        if _float_column(path):
            if kind == "null":
                return f"{path} IS NULL"
            if kind != "number":
                return self.false
            return f"{path} = {_bind(params, _float(value))}::float8"
        e = value_sql(path)
        if kind == "null":
            return f"({e} IS NULL OR {e} = 'null'::jsonb)"
        if kind == "bool":
            return f"{e} = '{'true' if value else 'false'}'::jsonb"
        if kind == "json":
            from engine._store.filters import _json_text

            _json_text(value, f"filter on {path!r}")  # refuses what is not JSON, as SQLite's path does
        text = _json(value)
        if text is None:
            return self.false
        return f"{e} = {_bind(params, text)}::jsonb"

    def in_(self, path: str, numbers: list[Any], texts: list[str], jsons: list[str], consts: set[Any],
            params: list[Any]) -> str:
        parts = []
        if _float_column(path):
            if numbers:
                parts.append(f"{path} = ANY({_bind(params, [_float(v) for v in numbers])}::float8[])")
        else:
            e = value_sql(path)
            if None in consts:
                parts.append(f"{e} IS NULL OR {e} = 'null'::jsonb")
            values = [_encode(v).decode() for v in numbers]
            values += [t for t in (_json(v) for v in texts) if t is not None]
            values += [j for j in jsons if not _has_nul(j)]
            values += [b for b in ("true", "false") if (b == "true") in consts]
            if values:
                parts.append(f"{e} = ANY({_bind(params, values)}::jsonb[])")
        return "(" + " OR ".join(parts) + ")" if parts else self.false

    def range(self, path: str, op: str, kind: str, value: Any, params: list[Any]) -> str:
        if _float_column(path):
            if kind != "number":
                return self.false
            return f"{path} {op} {_bind(params, _float(value))}::float8"
        if kind == "number":
            e = value_sql(path)
            return f"(jsonb_typeof({e}) = 'number' AND {e} {op} {_bind(params, _encode(value).decode())}::jsonb)"
        if "\x00" in value:
            value = value.replace("\x00", "")  # stored texts hold no NUL to compare with (see docs)
        e = value_sql(path)
        return (f"(jsonb_typeof({e}) = 'string' AND {_text_sql(path)} COLLATE \"C\" {op} "
                f"{_bind(params, value)}::text COLLATE \"C\")")

    def like(self, path: str, pattern: str, params: list[Any]) -> str:
        if _float_column(path) or "\x00" in pattern or _like_ends_in_escape(pattern):
            return self.false
        e = value_sql(path)
        fold = f"translate({{}}, '{_UPPER}', '{_LOWER}')"
        return (f"(jsonb_typeof({e}) = 'string' AND {fold.format(_text_sql(path))} COLLATE \"C\" LIKE "
                f"{fold.format(_bind(params, pattern) + '::text')} ESCAPE '\\')")

    def exists(self, path: str, flag: bool) -> str:
        if path in COLUMNS:
            return self.true if flag else self.false
        return f"{value_sql(path)} IS {'NOT ' if flag else ''}NULL"

    @staticmethod
    def sort_key(path: str, direction: str) -> str:
        if _float_column(path):
            return f"{path} {direction}"
        e = value_sql(path)
        whole = "NULL" if path == "id" else f"(doc #> {path_sql(path)})::text"
        text = (f"(CASE WHEN jsonb_typeof({e}) = 'string' THEN {_text_sql(path)} "
                f"WHEN jsonb_typeof({e}) IN ('object','array') THEN {whole} END) COLLATE \"C\"")
        return f"{_RANK.format(e=e)} {direction}, {_NUM.format(e=e)} {direction}, {text} {direction}"


PG = _PostgresDialect()


def compile_pg_filter(flt: Any, params: list[Any] | None = None) -> tuple[str, list[Any]]:
    """``(where_sql, params)`` in PostgreSQL's SQL, placeholders numbered after ``params``."""
    return compile_filter(flt, PG, params)


def compile_pg_sort(sort: Any) -> str:
    return compile_sort(sort, PG)
