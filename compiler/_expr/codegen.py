"""Code generation: turns a folded AST into the source of one Python expression.

The generated code inlines the fast path of the common case (an ``int``
operand, a ``dict`` read, a ``list`` length) and falls back to the checked
helpers of ``runtime._values`` for everything else, so the semantics live in
one place. Every piece of user text reaches the generated source through
``repr()`` of a str/int/float -- names, keys and literals are data, never
code -- and the namespace the code runs in holds only the helpers below.
"""

from __future__ import annotations

import uuid
from typing import Any

from compiler._expr.fold import BINARY_OPS
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
from runtime import _values as V
from runtime.filters import FILTERS

__all__ = ("CodeGen", "literal", "NAMESPACE")

#: ints below this magnitude multiply without exceeding MAX_INT_BITS: no check needed
_SMALL = repr(2 ** (V.MAX_INT_BITS // 2 - 1))
#: the largest finite float: a float sum or difference beyond it is refused by the helper
_FMAX = repr(1.7976931348623157e308)


def _uuid() -> str:
    return str(uuid.uuid4())


#: Everything generated code may reference; builtins are cut off.
NAMESPACE: dict[str, Any] = {
    "__builtins__": {},
    "type": type,
    "len": len,
    "dict": dict,
    "list": list,
    "int": int,
    "float": float,
    "str": str,
    "bool": bool,
    "_uuid": _uuid,
    "_NUM": frozenset({int, float}),
    "_member": V.member,
    "_index": V.index,
    "_neg": V.neg,
    "_text": V.to_text,
    **{f"_{op}": fn for op, fn in BINARY_OPS.items()},
    **{f"_f_{name}": f.fn for name, f in FILTERS.items()},
}


def literal(v: Any) -> str:
    """Python source that builds ``v`` afresh each time it runs (containers are never shared)."""
    if v is None or type(v) in (bool, int, str):
        return repr(v)
    if type(v) is float:
        return repr(v)  # finite: the lexer and the fold refuse inf and nan
    if type(v) is list:
        return "[" + ", ".join(literal(x) for x in v) + "]"
    if type(v) is dict:
        return "{" + ", ".join(f"{literal(k)}: {literal(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"not JSON data: {type(v).__name__}")  # pragma: no cover - callers check first


class CodeGen:
    """Generates expression source; temporaries are walrus-bound locals ``_t1``, ``_t2``...

    Each expression numbers its temporaries from 1: they are dead once it is
    evaluated, so expressions evaluated one after the other in the same
    function may reuse them, and the code of an expression text does not
    depend on where it lands (``compiler._expr.cache`` reuses it verbatim).
    """

    def __init__(self) -> None:
        self.n = 0

    def tmp(self) -> str:
        self.n += 1
        return f"_t{self.n}"

    def gen(self, node: Node) -> str:
        if isinstance(node, Const):
            return literal(node.value)
        if isinstance(node, Name):
            if node.name == "now":
                return "scope['__now__']()"
            if node.name == "uuid":
                return "_uuid()"
            return f"scope[{node.name!r}]"
        if isinstance(node, Member):
            return self.read(self.gen(node.obj), node.name)
        if isinstance(node, Index):
            if isinstance(node.key, Const) and type(node.key.value) is str:
                return self.read(self.gen(node.obj), node.key.value)
            return f"_index({self.gen(node.obj)}, {self.gen(node.key)})"
        if isinstance(node, Unary):
            if node.op == "not":
                return f"(not {self.gen(node.operand)})"
            return f"_neg({self.gen(node.operand)})"
        if isinstance(node, Binary):
            return self.binary(node)
        if isinstance(node, Logical):
            left, right = self.gen(node.left), self.gen(node.right)
            if node.op == "??":
                t = self.tmp()
                return f"({right} if ({t} := {left}) is None else {t})"
            return f"({left} {node.op} {right})"
        if isinstance(node, Cond):
            return f"({self.gen(node.then)} if {self.gen(node.test)} else {self.gen(node.other)})"
        if isinstance(node, ListLit):
            return "[" + ", ".join(self.gen(i) for i in node.items) + "]"
        if isinstance(node, ObjLit):
            return "{" + ", ".join(f"{k!r}: {self.gen(v)}" for k, v in node.pairs) + "}"
        if isinstance(node, Filter):
            value = self.gen(node.value)
            if node.name in ("length", "count") and not node.args:
                t = self.tmp()
                return f"(len({t}) if ({t} := {value}).__class__ is list else _f_{node.name}({t}))"
            args = "".join(", " + self.gen(a) for a in node.args)
            return f"_f_{node.name}({value}{args})"
        raise AssertionError(f"unknown node {node!r}")  # pragma: no cover

    def read(self, obj: str, key: str) -> str:
        t = self.tmp()
        return f"({t}.get({key!r}) if ({t} := {obj}).__class__ is dict else _member({t}, {key!r}))"

    def binary(self, node: Binary) -> str:
        op, ln, rn = node.op, node.left, node.right
        left, right = self.gen(ln), self.gen(rn)
        lc = isinstance(ln, Const) and type(ln.value) is int
        rc = isinstance(rn, Const) and type(rn.value) is int
        if op in ("add", "sub", "mul"):
            sym = {"add": "+", "sub": "-", "mul": "*"}[op]
            if lc and rc:  # a constant that did not fold: let the helper raise at run time
                return f"_{op}({left}, {right})"
            a, b = self.tmp(), self.tmp()
            if rc:
                test, ea, eb = f"({a} := {left}).__class__ is int", a, right
                small = [a]
            elif lc:  # the constant left side has no effects, so order is kept
                test, ea, eb = f"({b} := {right}).__class__ is int", left, b
                small = [b]
            else:
                test, ea, eb = f"({a} := {left}).__class__ is ({b} := {right}).__class__ is int", a, b
                small = [a, b]
            if op == "mul":
                test += "".join(f" and -{_SMALL} < {x} < {_SMALL}" for x in small)
            if op != "mul" and not (lc or rc):
                # two floats (Unix times, amounts): the result only needs to stay finite
                r = self.tmp()
                floats = (f"({r} if {a}.__class__ is {b}.__class__ is float and "
                          f"-{_FMAX} <= ({r} := {a} {sym} {b}) <= {_FMAX} else _{op}({a}, {b}))")
                return f"({ea} {sym} {eb} if {test} else {floats})"
            return f"({ea} {sym} {eb} if {test} else _{op}({ea}, {eb}))"
        if op in ("lt", "le", "gt", "ge"):
            sym = {"lt": "<", "le": "<=", "gt": ">", "ge": ">="}[op]
            a, b = self.tmp(), self.tmp()
            if isinstance(rn, Const) and type(rn.value) in (int, float):
                return f"({a} {sym} {right} if ({a} := {left}).__class__ is int or {a}.__class__ is float else _{op}({a}, {right}))"
            both = f"(({a} := {left}) is not ({b} := {right}) or True)"
            return f"({a} {sym} {b} if {both} and {a}.__class__ in _NUM and {b}.__class__ in _NUM else _{op}({a}, {b}))"
        if op == "mod" and rc and rn.value != 0:  # type: ignore[attr-defined]
            # an int % a non-zero int constant: the result is smaller than the constant, no check needed
            a = self.tmp()
            return f"({a} % {right} if ({a} := {left}).__class__ is int else _mod({a}, {right}))"
        if op in ("eq", "ne"):
            return self.equality(op, ln, rn, left, right)
        if op == "concat" and isinstance(ln, Const) and type(ln.value) is str:
            b = self.tmp()
            room = V.MAX_STRING_LENGTH - len(ln.value)
            return f"({left} + {b} if ({b} := {right}).__class__ is str and len({b}) <= {room} else _concat({left}, {b}))"
        return f"_{op}({left}, {right})"

    def equality(self, op: str, ln: Node, rn: Node, left: str, right: str) -> str:
        neg = "not " if op == "ne" else ""
        if isinstance(ln, Const) and not isinstance(rn, Const):
            ln, rn, left, right = rn, ln, right, left  # == is symmetric; put the constant right
        if isinstance(rn, Const):
            c = rn.value
            if c is None or type(c) is bool:
                return f"({left} is {'not ' if neg else ''}{right})"
            if type(c) is str:
                return f"({left} {'!=' if neg else '=='} {right})"
            if type(c) in (int, float):
                a = self.tmp()
                return f"({neg}(({a} := {left}).__class__ is not bool and {a} == {right}))"
        a, b = self.tmp(), self.tmp()
        same = f"({a} := {left}).__class__ is ({b} := {right}).__class__ and {a}.__class__ is not list and {a}.__class__ is not dict"
        return f"({neg}({a} == {b} if {same} else _eq({a}, {b})))"
