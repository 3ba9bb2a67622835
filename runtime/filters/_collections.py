"""Filters over lists and objects: size, order, selection, grouping, aggregates.

Every filter returns a new container; the input is never changed (the VM
mutates variables in place, so sharing would leak changes between values).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from runtime._errors import ExpressionError
from runtime._values import eq, fits_int, show, type_name
from runtime.filters._registry import (
    ABSENT,
    check_list,
    group_key,
    measured,
    need_int,
    need_list,
    need_object,
    need_text,
    pluck,
    register,
)

__all__ = ()


def _sized(name: str, v: Any) -> int:
    if type(v) in (list, str) or isinstance(v, Mapping):
        return len(v)
    raise ExpressionError(f"filter '{name}' needs a list, text or object, got {type_name(v)} {show(v)}")


@register("length")
def f_length(value):
    """Number of entries of a list, characters of a text, or keys of an object."""
    return _sized("length", value)


@register("count")
def f_count(value):
    """Same as length: entries of a list, characters of a text, keys of an object."""
    return _sized("count", value)


@register("first")
def f_first(value):
    """First entry of a list (or first character of a text); null when empty."""
    if type(value) not in (list, str):
        need_list("first", value)
    return value[0] if value else None


@register("last")
def f_last(value):
    """Last entry of a list (or last character of a text); null when empty."""
    if type(value) not in (list, str):
        need_list("last", value)
    return value[-1] if value else None


@register("unique")
def f_unique(value):
    """The list without repeated entries (by ==), keeping first appearances in order."""
    seen: set[Any] = set()
    out = []
    for x in measured(need_list("unique", value)):
        k = group_key(x)
        if k not in seen:
            seen.add(k)
            out.append(x)
    return out


def _sort_key(name: str, values: list[Any]) -> Any:
    kinds = {type_name(v) for v in values if v is not None}
    if len(kinds) > 1:
        raise ExpressionError(f"filter '{name}' cannot order a mix of {' and '.join(sorted(kinds))}")
    if kinds and kinds.pop() not in ("number", "text"):
        raise ExpressionError(f"filter '{name}' orders numbers or texts only")
    return lambda v: (v is not None, v if v is not None else 0)


@register("sort")
def f_sort(value, attribute=None, reverse=False):
    """Sorted copy of a list of numbers or texts, or of objects by a field (nulls first); stable."""
    items = need_list("sort", value)
    if type(reverse) is not bool:
        raise ExpressionError(f"filter 'sort' needs true or false as reverse, got {show(reverse)}")
    if attribute is None:
        keys = list(items)
    else:
        path = need_text("sort", attribute, "its attribute")
        keys = [pluck(x, path) for x in items]
    key = _sort_key("sort", keys)
    order = sorted(range(len(items)), key=lambda i: key(keys[i]), reverse=reverse)
    return [items[i] for i in order]


@register("reverse")
def f_reverse(value):
    """The list (or text) in reverse order."""
    if type(value) is str:
        return value[::-1]
    return need_list("reverse", value)[::-1]


@register("map")
def f_map(value, attribute):
    """The value of a field (a dotted path like "user.id" works) of each object of a list."""
    path = need_text("map", attribute, "its attribute")
    return [pluck(x, path) for x in need_list("map", value)]


@register("filter")
def f_filter(value, attribute, value_=ABSENT):
    """Entries whose field equals value, or, without value, whose field is truthy."""
    path = need_text("filter", attribute, "its attribute")
    items = need_list("filter", value)
    if value_ is ABSENT:
        return [x for x in items if pluck(x, path)]
    return [x for x in items if eq(pluck(x, path), value_)]


@register("group_by")
def f_group_by(value, key):
    """Groups of a list by a field: [{key, count, items}] in order of first appearance."""
    path = need_text("group_by", key, "its key")
    groups: dict[Any, dict[str, Any]] = {}
    for x in measured(need_list("group_by", value)):
        k = pluck(x, path)
        g = groups.get(group_key(k))
        if g is None:
            groups[group_key(k)] = {"key": k, "count": 1, "items": [x]}
        else:
            g["count"] += 1
            g["items"].append(x)
    return list(groups.values())


def _seq(name: str, value: Any) -> Any:
    if type(value) is str:
        return value
    return need_list(name, value)


@register("limit")
def f_limit(value, n):
    """The first n entries of a list (or characters of a text)."""
    return _seq("limit", value)[: need_int("limit", n, "n", 0)]


@register("offset")
def f_offset(value, n):
    """The list (or text) without its first n entries."""
    return _seq("offset", value)[need_int("offset", n, "n", 0) :]


@register("slice")
def f_slice(value, start, end=None):
    """Entries from start up to (not including) end; negative positions count from the end."""
    seq = _seq("slice", value)
    a = need_int("slice", start, "start")
    b = None if end is None else need_int("slice", end, "end")
    return seq[a:b]


@register("batch")
def f_batch(value, size):
    """The list cut into lists of size entries (the last may be shorter)."""
    items = need_list("batch", value)
    n = need_int("batch", size, "size", 1)
    return [items[i : i + n] for i in range(0, len(items), n)]


@register("flatten")
def f_flatten(value):
    """Lists inside the list spliced in, one level deep."""
    out: list[Any] = []
    for x in need_list("flatten", value):
        if type(x) is list:
            check_list("flatten", len(out) + len(x))
            out.extend(x)
        else:
            out.append(x)
    check_list("flatten", len(out))
    return out


def _numbers(name: str, value: Any, attribute: Any) -> list[int | float]:
    items = need_list(name, value)
    if attribute is not None:
        path = need_text(name, attribute, "its attribute")
        items = [pluck(x, path) for x in items]
    for x in items:
        if type(x) is not int and type(x) is not float:
            raise ExpressionError(f"filter '{name}' adds numbers only, found {type_name(x)} {show(x)}")
    return items


@register("sum")
def f_sum(value, attribute=None):
    """Sum of a list of numbers (or of a field of objects); 0 for an empty list; an error past the number limits."""
    nums = _numbers("sum", value, attribute)
    try:
        r = sum(nums)
    except OverflowError:
        raise ExpressionError("filter 'sum' got numbers too large to add") from None
    # a float sum past the largest float is infinite, an int one may pass the int limit: both are errors
    if type(r) is float and not math.isfinite(r) or type(r) is int and not fits_int(r):
        raise ExpressionError("filter 'sum' got numbers too large to add")
    return r


@register("average")
def f_average(value, attribute=None):
    """Mean of a list of numbers (or of a field of objects); null for an empty list; an error past the number limits."""
    nums = _numbers("average", value, attribute)
    try:
        r = sum(nums) / len(nums) if nums else None
    except OverflowError:
        raise ExpressionError("filter 'average' got numbers too large to average") from None
    if r is not None and not math.isfinite(r):  # the float sum overflowed to infinity
        raise ExpressionError("filter 'average' got numbers too large to average")
    return r


def _extreme(name: str, value: Any, attribute: Any, pick: Any) -> Any:
    items = need_list(name, value)
    if attribute is not None:
        path = need_text(name, attribute, "its attribute")
        items = [pluck(x, path) for x in items]
    items = [x for x in items if x is not None]
    _sort_key(name, items)
    return pick(items) if items else None


@register("min")
def f_min(value, attribute=None):
    """Smallest number or text of a list (or of a field of objects), nulls ignored; null when empty."""
    return _extreme("min", value, attribute, min)


@register("max")
def f_max(value, attribute=None):
    """Largest number or text of a list (or of a field of objects), nulls ignored; null when empty."""
    return _extreme("max", value, attribute, max)


@register("keys")
def f_keys(value):
    """The keys of an object, in order."""
    return list(need_object("keys", value).keys())


@register("values")
def f_values(value):
    """The values of an object, in order."""
    return list(need_object("values", value).values())


@register("merge")
def f_merge(value, other):
    """Object with other's keys laid over it (shallow), or two lists joined."""
    if type(value) is list and type(other) is list:
        check_list("merge", len(value) + len(other))
        return value + other
    a = need_object("merge", value)
    b = need_object("merge", other, "its argument")
    return {**a, **b}


@register("contains")
def f_contains(value, needle):
    """True when a list has the entry, a text has the substring, or an object has the key."""
    if type(value) is list:
        return any(eq(needle, x) for x in value)
    if type(value) is str:
        return need_text("contains", needle, "its argument (to search a text)") in value
    if isinstance(value, Mapping):
        return type(needle) is str and needle in value
    raise ExpressionError(f"filter 'contains' needs a list, text or object, got {type_name(value)} {show(value)}")


@register("index_of")
def f_index_of(value, needle):
    """Position of the first equal entry of a list (or substring of a text); -1 when absent."""
    if type(value) is str:
        return value.find(need_text("index_of", needle, "its argument (to search a text)"))
    for i, x in enumerate(need_list("index_of", value)):
        if eq(needle, x):
            return i
    return -1


@register("pick")
def f_pick(value, keys):
    """The object with only the given key (text) or keys (list), in the object's order."""
    obj = need_object("pick", value)
    wanted = {keys} if type(keys) is str else set(need_list("pick", keys, "its keys"))
    return {k: v for k, v in obj.items() if k in wanted}


@register("unset")
def f_unset(value, keys):
    """The object without the given key (text) or keys (list)."""
    obj = need_object("unset", value)
    unwanted = {keys} if type(keys) is str else set(need_list("unset", keys, "its keys"))
    return {k: v for k, v in obj.items() if k not in unwanted}


@register("append")
def f_append(value, entry):
    """A new list with entry added at the end."""
    items = need_list("append", value)
    check_list("append", len(items) + 1)
    return [*items, entry]


@register("range")
def f_range(value, end, step=1):
    """Whole numbers from the input up to end, both included, by step (negative steps count down)."""
    a = need_int("range", value, "its input (the start)")
    b = need_int("range", end, "end")
    s = need_int("range", step, "step")
    if s == 0:
        raise ExpressionError("filter 'range' needs a step other than 0")
    stop = b + (1 if s > 0 else -1)
    check_list("range", max(0, len(range(a, stop, s))))
    return list(range(a, stop, s))


@register("is_empty")
def f_is_empty(value):
    """True for null, "", [] and {}; false for anything else (0 and false included)."""
    return value is None or (type(value) in (str, list) or isinstance(value, Mapping)) and len(value) == 0
