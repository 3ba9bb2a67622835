"""The filter registry and the checked argument readers every filter uses.

A filter is a plain function ``fn(value, *params)``; its signature is the
filter's signature (names, defaults), read once with ``inspect`` so that the
compiler can check arity and keyword names at load time. Filters never raise
anything but ``ExpressionError`` or ``LimitExceeded``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from runtime._errors import ExpressionError, LimitExceeded
from runtime._limits import MAX_LIST_LENGTH, MAX_STRING_LENGTH
from runtime._values import check_limits, json_dumps, show, to_text, type_name

__all__ = (
    "Filter",
    "REGISTRY",
    "ABSENT",
    "register",
    "need_list",
    "need_text",
    "need_int",
    "need_number",
    "need_object",
    "pluck",
    "group_key",
    "check_list",
    "check_text",
    "texts",
    "measured",
)


@dataclass(frozen=True, slots=True)
class Filter:
    """One filter: its function, parameter names, how many are required, one-line doc."""

    name: str
    fn: Callable[..., Any]
    params: tuple[str, ...]
    required: int
    defaults: tuple[Any, ...]
    doc: str

    @property
    def signature(self) -> str:
        parts = list(self.params[: self.required])
        parts += [f"{p}={_show_default(d)}" for p, d in zip(self.params[self.required :], self.defaults)]
        return f"{self.name}({', '.join(parts)})" if parts else self.name


def _show_default(d: Any) -> str:
    if d is ABSENT:
        return "(absent)"
    return "null" if d is None else json_dumps(d)


class _Absent:
    def __repr__(self) -> str:
        return "(absent)"


ABSENT: Any = _Absent()
REGISTRY: dict[str, Filter] = {}


def register(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: add ``fn`` to the registry under ``name``."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        params = list(inspect.signature(fn).parameters.values())[1:]
        required = sum(1 for p in params if p.default is inspect.Parameter.empty)
        defaults = tuple(p.default for p in params if p.default is not inspect.Parameter.empty)
        doc = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        REGISTRY[name] = Filter(name, fn, tuple(p.name.rstrip("_") for p in params), required, defaults, doc)
        return fn

    return deco


def _wrong(filter_name: str, what: str, v: Any, wanted: str) -> ExpressionError:
    return ExpressionError(f"filter '{filter_name}' needs {wanted} as {what}, got {type_name(v)} {show(v)}")


def need_list(name: str, v: Any, what: str = "its input") -> list[Any]:
    if type(v) is not list:
        raise _wrong(name, what, v, "a list")
    return v


def need_text(name: str, v: Any, what: str = "its input") -> str:
    if type(v) is not str:
        raise _wrong(name, what, v, "text")
    return v


def need_object(name: str, v: Any, what: str = "its input") -> Mapping[str, Any]:
    if not isinstance(v, Mapping):
        raise _wrong(name, what, v, "an object")
    return v


def need_number(name: str, v: Any, what: str = "its input") -> int | float:
    t = type(v)
    if t is not int and t is not float:
        raise _wrong(name, what, v, "a number")
    return v


def need_int(name: str, v: Any, what: str, minimum: int | None = None) -> int:
    if type(v) is float and v.is_integer():
        v = int(v)
    if type(v) is not int:
        raise _wrong(name, what, v, "a whole number")
    if minimum is not None and v < minimum:
        raise ExpressionError(f"filter '{name}' needs {what} of at least {minimum}, got {v}")
    return v


def pluck(item: Any, path: str) -> Any:
    """``item.a.b`` for a dotted ``path``; null when a step is missing; only objects have fields."""
    for part in path.split("."):
        if item is None:
            return None
        if isinstance(item, Mapping):
            item = item.get(part)
        elif type(item) is list and part.lstrip("-").isdigit():
            i = int(part)
            item = item[i] if -len(item) <= i < len(item) else None
        else:
            raise ExpressionError(f"cannot read .{part} of {type_name(item)} {show(item)}: only objects have fields")
    return item


def group_key(v: Any) -> Any:
    """A hashable key under which equal values (by ``==``) collide: 1 and 1.0 do, true and 1 do not."""
    t = type(v)
    if t is bool:
        return ("b", v)
    if t is int or t is float:
        return ("n", v)
    if t is str or v is None:
        return ("s", v)
    try:
        import msgspec

        return ("j", msgspec.json.encode(v, order="sorted"))
    except (TypeError, ValueError):
        return ("x", id(v))


def check_list(name: str, n: int) -> None:
    if n > MAX_LIST_LENGTH:
        raise LimitExceeded(f"filter '{name}' would build a list of {n:,} entries, more than the limit of {MAX_LIST_LENGTH:,}")


def check_text(name: str, n: int) -> None:
    if n > MAX_STRING_LENGTH:
        raise LimitExceeded(f"filter '{name}' would build a text of {n:,} characters, more than the limit of {MAX_STRING_LENGTH:,}")


def texts(name: str, values: Any, extra: int = 0) -> list[str]:
    """``to_text`` of each of ``values``, refused as soon as they add up to more than ``MAX_STRING_LENGTH``
    characters (plus ``extra`` per text: a separator).

    Summed as they are made, not after: a list may hold one list or object
    many times over, whose text form is made anew for each.
    """
    out: list[str] = []
    total = 0
    for v in values:
        text = to_text(v)
        total += len(text) + extra
        if total > MAX_STRING_LENGTH + extra:
            check_text(name, total - extra)
        out.append(text)
    return out


def measured(v: Any) -> Any:
    """``v`` once ``check_limits`` has measured it: for a filter that writes out each entry of a list
    (``unique``, ``group_by``), whose entries may share parts and each write out to far more than it holds."""
    check_limits(v)
    return v
