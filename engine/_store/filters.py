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

SQLite reads a stored integer outside the signed 64-bit range as a real (and
one beyond the largest real as infinity), so such integers in a filter are
bound the same way: they compare with stored ones at a real's precision.

A filter is bounded before SQLite sees it, so that a legal filter never meets
SQLite's own limits (expression depth, parser stack, bound variables, LIKE
pattern length): at most ``_MAX_TERMS`` comparisons, ``_MAX_VALUES`` values in
its ``$in``/``$nin`` lists, ``_MAX_FILTER_DEPTH`` levels of nesting (``$and``,
``$or`` and both kinds of ``$not``), ``$like`` patterns of ``_MAX_LIKE`` bytes.
An ``$in`` list is one ``IN`` per JSON kind, whatever its length.
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
#: Levels of $and/$or/$not (field-level $not too). Each costs SQLite's parser
#: stack (100 entries in SQLite before 3.46); the worst shapes parse up to
#: about 27 levels (tests/test_store_filter_limits.py), so 20 leaves a margin.
_MAX_FILTER_DEPTH = 20
_MAX_IN = 10_000
#: Comparisons (an $in list is one) in one filter: bounds SQLite's expression
#: depth (at most 1000), which grows with the length of $and/$or chains.
_MAX_TERMS = 500
#: Values listed in all the $in/$nin lists of one filter: bounds the bound
#: parameters of one statement (SQLite allows at least 32766).
_MAX_VALUES = 30_000
#: Bytes of a $like pattern: SQLite's default SQLITE_MAX_LIKE_PATTERN_LENGTH.
_MAX_LIKE = 50_000
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
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
        if not value.isascii():
            _check_text(value, where)
        return "text"
    if isinstance(value, (list, tuple, dict)):
        return "json"
    raise InvalidFilter(f"{where}: a value of type {type(value).__name__} cannot be compared")


def _check_text(value: str, where: str) -> None:
    """Refuse text SQLite cannot bind (a lone surrogate is not UTF-8)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidFilter(
            f"{where}: the text holds a lone surrogate {exc.object[exc.start]!r} at position "
            f"{exc.start}, which is not valid Unicode and can never be stored; remove it"
        ) from None


def _number(value: Any) -> Any:
    """``value`` as SQLite compares it: an integer outside 64 bits is read back as a real."""
    if type(value) is not float and not _INT64_MIN <= value <= _INT64_MAX:
        try:
            return float(value)
        except OverflowError:  # SQLite reads such a stored integer as infinity too
            return math.inf if value > 0 else -math.inf
    return value


def _json_text(value: Any, where: str) -> str:
    try:
        return _encode(value).decode()
    except UnicodeEncodeError as exc:
        raise InvalidFilter(
            f"{where}: the value holds a lone surrogate {exc.object[exc.start]!r}, which is not "
            "valid Unicode and can never be stored; remove it"
        ) from None
    except (TypeError, ValueError, msgspec.EncodeError) as exc:
        raise InvalidFilter(f"{where}: the value {value!r} is not JSON ({exc})") from None


def _join(parts: list[str], op: str) -> str:
    """``parts`` joined by ``op`` ("AND" or "OR") as one flat chain.

    Every part is a comparison that binds tighter than AND, an AND chain, or
    an OR chain, which alone is parenthesized. Parentheses cost SQLite's
    parser stack (100 entries) at every nesting level, the tightest limit on
    how deep a filter may nest; a flat chain costs none, and its expression
    depth (SQLite allows 1000) grows with its length, bounded by ``_MAX_TERMS``.
    """
    if len(parts) == 1:
        return parts[0]
    chain = f" {op} ".join(parts)
    return f"({chain})" if op == "OR" else chain


def _not(sql: str) -> str:
    """True when ``sql`` (0, 1 or NULL) is not true: ``NOT coalesce(sql, 0)`` without
    the function call, whose arguments cost SQLite's parser stack at every nesting."""
    return f"({sql}) IS NOT 1"


def equals(path: str, value: Any, params: list[Any]) -> str:
    """SQL true when field ``path`` equals ``value`` (same JSON kind and value)."""
    expr, typ = field_sql(path)
    kind = _kind(value, f"filter on {path!r}")
    if kind == "null":
        return f"{expr} IS NULL"
    if kind == "bool":
        return f"{typ} = '{'true' if value else 'false'}'"
    if kind == "number":
        params.append(_number(value))
        return f"({expr} = ? AND {typ} IN {_NUMBER_TYPES})"
    if kind == "text":
        params.append(value)
        return f"({expr} = ? AND {typ} = 'text')"
    params.append(_json_text(value, f"filter on {path!r}"))
    return f"({expr} = ? AND {typ} IN ('object','array'))"


class _Compiling:
    """The bound values of one filter so far, and how many terms it has used."""

    __slots__ = ("params", "terms", "values", "d")

    def __init__(self, dialect: Any = None) -> None:
        self.d = _SQLITE if dialect is None else dialect
        self.params: list[Any] = []
        self.terms = 0
        self.values = 0

    def spend(self, terms: int, values: int = 0) -> None:
        self.terms += terms
        self.values += values
        if self.terms > _MAX_TERMS:
            raise InvalidFilter(
                f"filter has more than {_MAX_TERMS} comparisons; for many values of one field "
                "use $in, otherwise split it into several queries"
            )
        if self.values > _MAX_VALUES:
            raise InvalidFilter(
                f"filter lists more than {_MAX_VALUES} values in its $in/$nin lists; "
                "split it into several queries"
            )


def _in(path: str, values: Any, st: _Compiling) -> str:
    if not isinstance(values, (list, tuple)) or len(values) > _MAX_IN:
        raise InvalidFilter(
            f"filter on {path!r}: $in/$nin needs a list of at most {_MAX_IN} values, got "
            + (f"{len(values)} values" if isinstance(values, (list, tuple)) else type(values).__name__)
        )
    st.spend(1, len(values))
    expr, typ = field_sql(path)
    where = f"filter on {path!r}"
    numbers: list[Any] = []
    texts: list[str] = []
    jsons: list[str] = []
    consts: set[Any] = set()  # None, True, False: one term each however often listed
    for v in values:
        kind = _kind(v, where)
        if kind == "number" and st.d is _SQLITE:
            numbers.append(_number(v))
        elif kind == "text":
            texts.append(v)
        elif kind == "json":
            jsons.append(_json_text(v, where))
        elif kind == "number" and st.d is not _SQLITE:
            numbers.append(v)
        else:
            consts.add(v)
    if st.d is not _SQLITE:
        return st.d.in_(path, numbers, texts, jsons, consts, st.params)
    parts = []
    if None in consts:
        parts.append(f"{expr} IS NULL")
    bools = [b for b in ("true", "false") if (b == "true") in consts]
    if bools:
        parts.append(f"{typ} IN ({','.join(repr(b) for b in bools)})")
    for group, guard in ((numbers, f"IN {_NUMBER_TYPES}"), (texts, "= 'text'"),
                         (jsons, "IN ('object','array')")):
        if group:
            st.params.extend(group)
            parts.append(f"({typ} {guard} AND {expr} IN ({','.join('?' * len(group))}))")
    return "(" + " OR ".join(parts) + ")" if parts else "0"


def _operator(path: str, op: str, arg: Any, st: _Compiling, depth: int) -> str:
    expr, typ = field_sql(path)
    where = f"filter on {path!r}: {op}"
    d = st.d
    if op == "$not":
        return d.not_(_field(path, arg, st, depth + 1))
    if op == "$in":
        return _in(path, arg, st)
    if op == "$nin":
        return d.not_(_in(path, arg, st))
    st.spend(1)
    params = st.params
    if op == "$eq":
        return d.equals(path, arg, params)
    if op == "$ne":
        return d.not_(d.equals(path, arg, params))
    if op in _RANGE:
        kind = _kind(arg, where)
        if kind not in ("number", "text"):
            raise InvalidFilter(f"{where} needs a number or a text, got {kind}")
        if d is not _SQLITE:
            return d.range(path, _RANGE[op], kind, arg, params)
        params.append(_number(arg) if kind == "number" else arg)
        guard = f"IN {_NUMBER_TYPES}" if kind == "number" else "= 'text'"
        return f"({typ} {guard} AND {expr} {_RANGE[op]} ?)"
    if op == "$like":
        if not isinstance(arg, str):
            raise InvalidFilter(f"{where} needs a text pattern (% any run, _ one character)")
        size = len(arg)
        if not arg.isascii():
            _check_text(arg, where)
            size = len(arg.encode("utf-8"))
        if size > _MAX_LIKE:
            raise InvalidFilter(
                f"{where}: the pattern is {size} bytes, SQLite's limit is {_MAX_LIKE}; "
                "use a shorter pattern (or $eq to compare a whole text)"
            )
        if d is not _SQLITE:
            return d.like(path, arg, params)
        params.append(arg)
        return f"({typ} = 'text' AND {expr} LIKE ? ESCAPE '\\')"
    if op == "$exists":
        if arg is not True and arg is not False:
            raise InvalidFilter(f"{where} needs true or false")
        if d is not _SQLITE:
            return d.exists(path, arg)
        if path in COLUMNS:
            return "1" if arg else "0"
        return f"{typ} IS {'NOT ' if arg else ''}NULL"
    hint = did_you_mean(op, _OPERATORS)
    raise InvalidFilter(f"filter on {path!r}: unknown operator {op!r}" + (f"; {hint}" if hint else ""))


def _too_deep() -> InvalidFilter:
    return InvalidFilter(
        f"filter nests deeper than {_MAX_FILTER_DEPTH} levels ($and, $or and $not count, "
        "also a $not inside a field); write it flatter"
    )


def _field(path: str, cond: Any, st: _Compiling, depth: int) -> str:
    if depth > _MAX_FILTER_DEPTH:
        raise _too_deep()
    if isinstance(cond, Mapping) and cond and any(str(k).startswith("$") for k in cond):
        if not all(isinstance(k, str) and k.startswith("$") for k in cond):
            raise InvalidFilter(
                f"filter on {path!r} mixes operators and plain keys: {sorted(map(str, cond))}; "
                "use only operators ($eq, $gt...) or only an object to compare with"
            )
        return _join([_operator(path, op, arg, st, depth) for op, arg in cond.items()], "AND")
    st.spend(1)
    return st.d.equals(path, cond, st.params)


def _node(flt: Any, st: _Compiling, depth: int) -> str:
    if not isinstance(flt, Mapping):
        raise InvalidFilter(f"a filter must be an object, got {type(flt).__name__}")
    if depth > _MAX_FILTER_DEPTH:
        raise _too_deep()
    parts = []
    for key, cond in flt.items():
        if not isinstance(key, str):
            raise InvalidName(f"field name {key!r} is not valid: use a text name", name=repr(key))
        if key in ("$and", "$or"):
            if not isinstance(cond, (list, tuple)) or not all(isinstance(c, Mapping) for c in cond):
                raise InvalidFilter(f"{key} needs a list of filter objects")
            subs = [_node(c, st, depth + 1) for c in cond]
            if not subs:
                parts.append(st.d.true if key == "$and" else st.d.false)
            else:
                parts.append(_join(subs, key[1:].upper()))
        elif key == "$not":
            parts.append(st.d.not_(_node(cond, st, depth + 1)))
        elif key.startswith("$"):
            hint = did_you_mean(key, _LOGICAL)
            raise InvalidFilter(
                f"unknown operator {key!r} at the top of a filter (use $and, $or, $not or a field "
                "name)" + (f"; {hint}" if hint else "")
            )
        else:
            parts.append(_field(check_field(key), cond, st, depth))
    if not parts:
        st.spend(1)  # counts as a term: a list of many {} must be bounded too
        return st.d.true
    return _join(parts, "AND")


def compile_filter(
    flt: Mapping[str, Any] | None, dialect: Any = None, params: list[Any] | None = None
) -> tuple[str, list[Any]]:
    """``(where_sql, params)`` for a filter; no filter (or ``{}``) matches every record.

    ``dialect`` (None: SQLite) writes the SQL of each comparison; the checks,
    limits and errors are the same for every dialect. ``params`` are values
    already bound before the filter's (a dialect with numbered placeholders
    counts from them); the result's list starts with them.
    """
    st = _Compiling(dialect)
    if params:
        st.params.extend(params)
    if flt is None:
        return st.d.true, st.params
    return _node(flt, st, 0), st.params


def _sort_part(part: Any, dialect: Any = None) -> str:
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
    if dialect is not None:
        return dialect.sort_key(check_field(field), direction.upper())
    return f"{field_sql(check_field(field))[0]} {direction.upper()}"


def compile_sort(sort: str | list[Any] | None, dialect: Any = None) -> str:
    """An ORDER BY list; ties (and no sort) keep insertion order (``dialect`` as ``compile_filter``'s)."""
    tie = "rowid" if dialect is None else dialect.insertion_order
    if sort is None or sort == "" or sort == []:
        return tie
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
    return ", ".join(_sort_part(p, dialect) for p in entries) + f", {tie}"


def check_count(value: Any, what: str) -> int | None:
    """A limit or offset: None, or a whole number >= 0.

    Numbers above 2**63-1 (SQLite's largest integer) are clamped to it rather
    than refused: no table can hold that many records, so a limit that large
    means "no limit" and an offset that large "past the end", exactly as the
    user asked, and the result is the same.
    """
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidFilter(f"{what} must be a whole number >= 0, got {value!r}")
    return min(value, _INT64_MAX)


class _SQLiteDialect:
    """SQLite's SQL for the comparisons (the module's own functions); ``_in`` and
    ``_operator`` write SQLite's SQL inline and consult the dialect only for others."""

    true = "1"
    false = "0"
    insertion_order = "rowid"
    not_ = staticmethod(_not)
    equals = staticmethod(equals)


_SQLITE = _SQLiteDialect()
