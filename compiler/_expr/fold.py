"""Checks filters against the registry and folds constant sub-expressions into ``Const`` nodes.

Filter calls come out with keyword arguments turned into positional ones (gaps
filled with the declared defaults), so the code generator only sees
positional calls. A constant sub-expression whose evaluation fails (``1/0``)
is left alone: it fails at run time, where a ``try_catch`` can see it -- also
when it fails with something other than the engine's own errors (the run
reports that as a run error), and when it gives a float that is not finite
(never folded: generated code has no literal for it, and such a value is an
error wherever it is made).
Results bigger than ``FOLD_LIMIT`` characters of JSON are not folded, so that
``0|range(999999)`` does not land in the generated source.
"""

from __future__ import annotations

import math
from typing import Any

from compiler._errors import CompileError, did_you_mean
from compiler._expr.lexer import syntax_error
from compiler._expr.nodes import (
    Binary,
    Cond,
    Const,
    Filter,
    Index,
    ListLit,
    Logical,
    Member,
    Name,
    Node,
    ObjLit,
    Unary,
)
from runtime import CronstackError
from runtime import _values as V
from runtime.filters import ABSENT, FILTERS

__all__ = ("Folder", "BINARY_OPS", "FOLD_LIMIT")

FOLD_LIMIT = 1000

BINARY_OPS = {
    "add": V.add,
    "sub": V.sub,
    "mul": V.mul,
    "div": V.div,
    "floordiv": V.floordiv,
    "mod": V.mod,
    "concat": V.concat,
    "eq": V.eq,
    "ne": V.ne,
    "lt": V.lt,
    "le": V.le,
    "gt": V.gt,
    "ge": V.ge,
    "in": V.contains,
    "not_in": V.not_contains,
}


def _finite(v: Any) -> bool:
    """False when a float in ``v`` is infinite or NaN."""
    t = type(v)
    if t is float:
        return math.isfinite(v)
    if t is list:
        return all(_finite(x) for x in v)
    if t is dict:
        return all(_finite(x) for x in v.values())
    return True


def _small(v: Any) -> bool:
    if v is None or type(v) in (bool, int, float):
        return True
    if type(v) is str:
        return len(v) <= FOLD_LIMIT
    try:
        return len(V.json_dumps(v)) <= FOLD_LIMIT
    except CronstackError:
        return False


class Folder:
    """One pass over an AST: check filters, fold constants. Errors point into ``text``."""

    def __init__(self, text: str, path: str) -> None:
        self.text = text
        self.path = path

    def _try(self, node: Node, compute: Any) -> Node:
        try:
            value = compute()
        except CronstackError:
            return node
        except Exception:  # noqa: BLE001 - a bug of a helper or filter shows at run time, not as a compile traceback
            return node
        return Const(node.col, value) if _small(value) and _finite(value) else node

    def visit(self, node: Node) -> Node:
        if isinstance(node, Const | Name):
            return node
        if isinstance(node, Member):
            obj = self.visit(node.obj)
            new = Member(node.col, obj, node.name)
            if isinstance(obj, Const):
                return self._try(new, lambda: V.member(obj.value, node.name))
            return new
        if isinstance(node, Index):
            obj, key = self.visit(node.obj), self.visit(node.key)
            new = Index(node.col, obj, key)
            if isinstance(obj, Const) and isinstance(key, Const):
                return self._try(new, lambda: V.index(obj.value, key.value))
            return new
        if isinstance(node, Unary):
            operand = self.visit(node.operand)
            new = Unary(node.col, node.op, operand)
            if isinstance(operand, Const):
                fn = V.neg if node.op == "neg" else (lambda v: not v)
                return self._try(new, lambda: fn(operand.value))
            return new
        if isinstance(node, Binary):
            left, right = self.visit(node.left), self.visit(node.right)
            new = Binary(node.col, node.op, left, right)
            if isinstance(left, Const) and isinstance(right, Const):
                return self._try(new, lambda: BINARY_OPS[node.op](left.value, right.value))
            return new
        if isinstance(node, Logical):
            left, right = self.visit(node.left), self.visit(node.right)
            if isinstance(left, Const):
                v = left.value
                if node.op == "??":
                    return right if v is None else left
                if node.op == "and":
                    return right if v else left
                return left if v else right
            return Logical(node.col, node.op, left, right)
        if isinstance(node, Cond):
            test, then, other = self.visit(node.test), self.visit(node.then), self.visit(node.other)
            if isinstance(test, Const):
                return then if test.value else other
            return Cond(node.col, test, then, other)
        if isinstance(node, ListLit):
            items = tuple(self.visit(i) for i in node.items)
            if all(isinstance(i, Const) for i in items):
                return self._try(ListLit(node.col, items), lambda: [i.value for i in items])  # type: ignore[attr-defined]
            return ListLit(node.col, items)
        if isinstance(node, ObjLit):
            pairs = tuple((k, self.visit(v)) for k, v in node.pairs)
            if all(isinstance(v, Const) for _, v in pairs):
                return self._try(ObjLit(node.col, pairs), lambda: {k: v.value for k, v in pairs})  # type: ignore[attr-defined]
            return ObjLit(node.col, pairs)
        if isinstance(node, Filter):
            return self.filter(node)
        raise AssertionError(f"unknown node {node!r}")  # pragma: no cover

    def error(self, col: int, message: str, hint: str | None = None) -> CompileError:
        return syntax_error(self.text, col, message, self.path, hint)

    def filter(self, node: Filter) -> Node:
        spec = FILTERS.get(node.name)
        if spec is None:
            hint = did_you_mean(node.name, FILTERS) or "see docs/filters.md for the list of filters"
            raise self.error(node.col, f"unknown filter '{node.name}'", hint)
        sig = f"signature: {spec.signature}"
        if len(node.args) > len(spec.params):
            raise self.error(
                node.col,
                f"filter '{node.name}' takes at most {len(spec.params)} argument(s), got {len(node.args)}",
                sig,
            )
        slots: list[Node | None] = [*node.args] + [None] * (len(spec.params) - len(node.args))
        for key, value in node.kwargs:
            if key not in spec.params:
                hint = did_you_mean(key, spec.params)
                raise self.error(value.col, f"filter '{node.name}' has no argument '{key}'", f"{hint + '; ' if hint else ''}{sig}")
            i = spec.params.index(key)
            if slots[i] is not None:
                raise self.error(value.col, f"argument '{key}' of filter '{node.name}' is given twice", sig)
            slots[i] = value
        for i in range(spec.required):
            if slots[i] is None:
                raise self.error(node.col, f"filter '{node.name}' needs its argument '{spec.params[i]}'", sig)
        while slots and slots[-1] is None:
            slots.pop()
        args: list[Node] = []
        for i, s in enumerate(slots):
            if s is None:
                default = spec.defaults[i - spec.required]
                if default is ABSENT:  # pragma: no cover - only trailing parameters may be absent
                    raise self.error(node.col, f"filter '{node.name}' needs its argument '{spec.params[i]}'", sig)
                s = Const(node.col, default)
            args.append(self.visit(s))
        value = self.visit(node.value)
        new = Filter(node.col, value, node.name, tuple(args), ())
        if isinstance(value, Const) and all(isinstance(a, Const) for a in args):
            return self._try(new, lambda: spec.fn(value.value, *(a.value for a in args)))  # type: ignore[attr-defined]
        return new
