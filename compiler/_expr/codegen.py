"""Code generation: turns a folded AST into the source of one Python expression.

The generated code inlines the fast path of the common case (an ``int``
operand, a ``dict`` read, a ``list`` length) and falls back to the checked
helpers of ``runtime._values`` for everything else, so the semantics live in
one place. Every piece of user text reaches the generated source through
``repr()`` of a str/int/float -- names, keys and literals are data, never
code -- and the namespace the code runs in holds only the helpers below.

A small static type pass rides along: each generated piece comes with a
``Ty``, what it is guaranteed to produce when it does not raise (``length``
gives an int of at most 63 bits, a comparison a bool, ``-`` a number...).
A check that such a guarantee makes redundant is left out: ``(items|length)
* 2`` multiplies without a class or size test, ``a.b + <an int>`` tests only
``a.b``, and a number compared with ``x`` tests only ``x``. Whatever is left
out, the helper would have done the same thing with those types.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
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

__all__ = ("CodeGen", "Ty", "literal", "NAMESPACE")

#: the largest finite float: a float sum or difference beyond it is refused by the helper
_FMAX = repr(1.7976931348623157e308)
#: one-digit ints of CPython: comparisons between them are specialised
_COMPACT = 2**30 - 1
#: ``len()`` returns a Py_ssize_t: at most 63 bits on any CPython we run on
_LEN_BITS = 63
#: longest code ``order`` repeats in its two branches (the repeats could nest)
_COPY_LIMIT = 400
_SYM = {"add": "+", "sub": "-", "mul": "*", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}


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


@dataclass(frozen=True, slots=True)
class Ty:
    """What a piece of generated code produces when it does not raise: its exact classes.

    ``types`` None means anything (a scope value, a member, most filters).
    ``bits``, for an int-only piece, bounds the result's ``bit_length()``.
    """

    types: frozenset[type] | None
    bits: int = 0

    @property
    def is_int(self) -> bool:
        return self.types == _INT

    @property
    def is_num(self) -> bool:
        """int or float, never bool: what the arithmetic helpers return."""
        return self.types is not None and self.types <= _NUMS

    def union(self, other: Ty) -> Ty:
        """Either of two pieces (the sides of ``and``/``or``, the branches of ``? :``)."""
        if self.types is None or other.types is None:
            return ANY
        return Ty(self.types | other.types, max(self.bits, other.bits))


_INT = frozenset({int})
_NUMS = frozenset({int, float})
ANY = Ty(None)
NUM = Ty(_NUMS)
FLOAT = Ty(frozenset({float}))
BOOL = Ty(frozenset({bool}))
STR = Ty(frozenset({str}))


def _int(bits: int) -> Ty:
    return Ty(_INT, bits)


def _const_ty(v: Any) -> Ty:
    if type(v) is int:
        return _int(v.bit_length())
    return Ty(frozenset({type(v)}))


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
        #: scope names already read into a temporary on every path before the current point
        self.seen: dict[str, str] = {}
        #: > 0 while generating code that may not run (a branch of ``? :``, the right of ``and``/``or``/``??``)
        self.maybe = 0
        #: code of an int-first ``+``/``-`` -> (class test, name of the int result, its code, the
        #: other cases), for ``fused``: the code is ``(s if test and lo < (s := sum) < hi else rest)``
        self.parts: dict[str, tuple[str, str, str, str]] = {}
        #: code of a float-first ``+``/``-`` -> (test, float result, the other cases), for ``order``
        self.fparts: dict[str, tuple[str, str, str]] = {}

    def tmp(self) -> str:
        self.n += 1
        return f"_t{self.n}"

    def gen(self, node: Node) -> str:
        return self.typed(node)[0]

    def typed(self, node: Node) -> tuple[str, Ty]:
        """The source of ``node`` and what it is guaranteed to produce."""
        if isinstance(node, Const):
            return literal(node.value), _const_ty(node.value)
        if isinstance(node, Name):
            if node.name == "now":
                return "scope['__now__']()", ANY  # a test clock may give ints: no promise
            if node.name == "uuid":
                return "_uuid()", STR
            return f"scope[{node.name!r}]", ANY
        if isinstance(node, Member):
            return self.member(node.obj, node.name), ANY
        if isinstance(node, Index):
            if isinstance(node.key, Const) and type(node.key.value) is str:
                return self.member(node.obj, node.key.value), ANY
            return f"_index({self.gen(node.obj)}, {self.gen(node.key)})", ANY
        if isinstance(node, Unary):
            return self.unary(node)
        if isinstance(node, Binary):
            return self.binary(node)
        if isinstance(node, Logical):
            left, lt = self.typed(node.left)
            right, rt = self.branch(node.right)
            if node.op == "??":
                t = self.tmp()
                if lt.types is not None:
                    lt = Ty(lt.types - {type(None)}, lt.bits)
                return f"({right} if ({t} := {left}) is None else {t})", lt.union(rt)
            return f"({left} {node.op} {right})", lt.union(rt)
        if isinstance(node, Cond):
            test = self.gen(node.test)
            (then, tt), (other, ot) = self.branch(node.then), self.branch(node.other)
            return f"({then} if {test} else {other})", tt.union(ot)
        if isinstance(node, ListLit):
            return "[" + ", ".join(self.gen(i) for i in node.items) + "]", Ty(frozenset({list}))
        if isinstance(node, ObjLit):
            return "{" + ", ".join(f"{k!r}: {self.gen(v)}" for k, v in node.pairs) + "}", Ty(frozenset({dict}))
        if isinstance(node, Filter):
            return self.filter(node)
        raise AssertionError(f"unknown node {node!r}")  # pragma: no cover

    def branch(self, node: Node) -> tuple[str, Ty]:
        """``typed`` for code that may not run: the names it reads are not reused after it."""
        self.maybe += 1
        try:
            return self.typed(node)
        finally:
            self.maybe -= 1

    def member(self, obj: Node, key: str) -> str:
        """``obj.key``; a scope name already read on every path to here is not read again.

        Nothing an expression does changes the scope, so a second ``scope['x']``
        would give the object the first one bound (``stats.done + stats.failed``).
        """
        if isinstance(obj, Name) and obj.name not in ("now", "uuid"):
            t = self.seen.get(obj.name)
            if t is not None:
                return f"({t}.get({key!r}) if {t}.__class__ is dict else _member({t}, {key!r}))"
            code = self.read(self.gen(obj), key)
            if not self.maybe:
                self.seen[obj.name] = f"_t{self.n}"  # the temporary ``read`` just bound
            return code
        return self.read(self.gen(obj), key)

    def read(self, obj: str, key: str) -> str:
        t = self.tmp()
        return f"({t}.get({key!r}) if ({t} := {obj}).__class__ is dict else _member({t}, {key!r}))"

    def unary(self, node: Unary) -> tuple[str, Ty]:
        operand, ty = self.typed(node.operand)
        if node.op == "not":
            return f"(not {operand})", BOOL
        if ty.is_num:  # -int is an int one bit longer at most; -float is finite
            return f"(-{operand})", Ty(ty.types, ty.bits + 1)
        return f"_neg({operand})", NUM

    def filter(self, node: Filter) -> tuple[str, Ty]:
        value, ty = self.typed(node.value)
        if node.name in ("length", "count") and not node.args:
            # len() of a list, text or dict is what the filter returns; len() gives an int of 63 bits at most
            if ty.types is not None and ty.types <= {list, str, dict}:
                return f"len({value})", _int(_LEN_BITS)
            t = self.tmp()
            return f"(len({t}) if ({t} := {value}).__class__ is list else _f_{node.name}({t}))", _int(_LEN_BITS)
        args = "".join(", " + self.gen(a) for a in node.args)
        return f"_f_{node.name}({value}{args})", ANY

    def bind(self, left: str, right: str) -> tuple[str, str, str]:
        """A test that evaluates ``left`` then ``right`` into temporaries and is always true."""
        a, b = self.tmp(), self.tmp()
        return f"(({a} := {left}) is not ({b} := {right}) or True)", a, b

    def binary(self, node: Binary) -> tuple[str, Ty]:
        op, ln, rn = node.op, node.left, node.right
        if op in ("add", "sub"):
            fl, fr = _field(ln), _field(rn)
            if fl is not None and fr is not None and fl[0] == fr[0]:
                return self.pair(op, ln, rn, fl[0], fl[1], fr[1])
        (left, lt), (right, rt) = self.typed(ln), self.typed(rn)
        if op in ("add", "sub", "mul"):
            return self.arith(op, ln, rn, left, lt, right, rt)
        if op in ("lt", "le", "gt", "ge"):
            return self.order(op, rn, left, lt, right, rt), BOOL
        if op == "mod" and rt.is_int and isinstance(rn, Const) and rn.value != 0:
            # an int % a non-zero int constant: the result is smaller than the constant, no check needed
            if lt.is_int:
                return f"({left} % {right})", rt
            a = self.tmp()
            return f"({a} % {right} if ({a} := {left}).__class__ is int else _mod({a}, {right}))", NUM
        if op in ("eq", "ne"):
            return self.equality(op, ln, rn, left, lt, right, rt), BOOL
        if op == "concat":
            return self.concat(ln, rn, left, right), STR
        if op in ("in", "not_in"):
            return f"_{op}({left}, {right})", BOOL
        return f"_{op}({left}, {right})", FLOAT if op == "div" else NUM

    def arith(self, op: str, ln: Node, rn: Node, left: str, lt: Ty, right: str, rt: Ty) -> tuple[str, Ty]:
        """``+``, ``-``, ``*``: plain Python where the types make the helper's checks pass, else guarded."""
        sym = _SYM[op]
        if lt.is_int and rt.is_int:
            if op != "mul":
                bits = max(lt.bits, rt.bits) + 1
                if bits <= V.MAX_INT_BITS:  # the sum or difference cannot pass the limit
                    return f"({left} {sym} {right})", _int(bits)
                return f"_{op}({left}, {right})", _int(V.MAX_INT_BITS)
            if lt.bits + rt.bits <= V.MAX_INT_BITS:  # the product cannot pass the limit
                return f"({left} * {right})", _int(lt.bits + rt.bits)
            return f"_mul({left}, {right})", _int(V.MAX_INT_BITS)
        # the result of a number and anything, when there is one, is a number (only text + text
        # and list + list give something else)
        ty = NUM if op != "add" or lt.is_num or rt.is_num else ANY
        if lt.is_int or rt.is_int:
            return self.one_int(op, ln, rn, left, lt, right, rt), ty
        a, b = self.tmp(), self.tmp()
        test = f"({a} := {left}).__class__ is ({b} := {right}).__class__ is int"
        if op == "mul":
            small = f"-{_small(0)} < {a} < {_small(0)} and -{_small(0)} < {b} < {_small(0)}"
            return f"({a} * {b} if {test} and {small} else _mul({a}, {b}))", ty
        # two floats (Unix times, amounts): the result only needs to stay finite
        r = self.tmp()
        finite = f"-{_FMAX} <= ({r} := {a} {sym} {b}) <= {_FMAX}"
        if _likely_float(ln) or _likely_float(rn):  # test for floats first: one class test fewer
            # (no chained ``is``: a chain compiles to extra stack shuffles on the path taken)
            ftest = (f"({a} := {left}).__class__ is ({b} := {right}).__class__ and {a}.__class__ is float"
                     f" and -{_FMAX} <= ({r} := {a} {sym} {b}) and {r} <= {_FMAX}")
            s = self.tmp()
            ints = f"({s} if {a}.__class__ is {b}.__class__ is int and {_fits(s, f'{a} {sym} {b}')} else _{op}({a}, {b}))"
            code = f"({r} if {ftest} else {ints})"
            self.fparts[code] = (ftest, r, ints)
            return code, ty
        rest = f"({r} if {a}.__class__ is {b}.__class__ is float and {finite} else _{op}({a}, {b}))"
        s = self.tmp()
        code = f"({s} if {test} and {_fits(s, f'{a} {sym} {b}')} else {rest})"
        self.parts[code] = (test, s, f"{a} {sym} {b}", rest)
        return code, ty

    def pair(self, op: str, ln: Node, rn: Node, name: str, k1: str, k2: str) -> tuple[str, Ty]:
        """``x.a + x.b`` (or ``-``): one test that ``x`` is a dict, then both fields' classes at once.

        When that fails, the usual code runs on the same object (read once,
        in the test); it evaluates the fields again, which reads data only.
        """
        sym, o = _SYM[op], self.seen.get(name)
        first = o
        if o is None:
            o = self.tmp()
            first = f"({o} := scope[{name!r}])"
        a, b = self.tmp(), self.tmp()
        s = self.tmp()
        test = (f"{first}.__class__ is dict and "
                f"({a} := {o}.get({k1!r})).__class__ is ({b} := {o}.get({k2!r})).__class__ is int")
        saved = dict(self.seen)
        self.seen[name] = o  # bound by the test, which runs before the usual code
        (left, lt), (right, rt) = self.typed(ln), self.typed(rn)
        usual, ty = self.arith(op, ln, rn, left, lt, right, rt)
        if self.maybe:
            self.seen = saved
        code = f"({s} if {test} and {_fits(s, f'{a} {sym} {b}')} else {usual})"
        self.parts[code] = (test, s, f"{a} {sym} {b}", usual)
        return code, ty

    def fused(self, op: str, inner: str, k: str, kv: int, k_left: bool) -> str | None:
        """``inner ± k`` (k an int constant) where ``inner`` is an int-first ``+``/``-``: one test, not two.

        In the inner's int branch the sum is an int, so ``± k`` needs no test
        there (``stats.done + stats.failed + 1``); its other cases go through
        the usual one-sided test.
        """
        parts = self.parts.get(inner)
        if parts is None or op == "mul":
            return None
        test, s, ints, rest = parts
        sym, x, f = _SYM[op], self.tmp(), self.tmp()
        fast = f"{k} {sym} {s}" if k_left else f"{s} {sym} {k}"
        ea, eb = (k, x) if k_left else (x, k)
        # one test bounds the inner sum so that both it and the result are within the limit;
        # failing it (near the limit) leads to the other cases, whose helpers decide exactly
        lim = V.INT_LIMIT
        if op == "add":  # -lim < s + k < lim
            lo, hi = max(-lim, -lim - kv), min(lim, lim - kv)
        else:  # -lim < s - k < lim, or k - s: the same bounds
            lo, hi = max(-lim, kv - lim), min(lim, kv + lim)
        slow = f"({f} if ({x} := {rest}).__class__ is int and {_fits(f, f'{ea} {sym} {eb}')} else _{op}({ea}, {eb}))"
        return f"({fast} if {test} and {_within(s, ints, lo, hi)} else {slow})"

    def one_int(self, op: str, ln: Node, rn: Node, left: str, lt: Ty, right: str, rt: Ty) -> str:
        """One side is a known int: only the other side is tested (its class, and its size for ``*``)."""
        sym = _SYM[op]
        known_left = lt.is_int
        known, other = (lt, rt) if known_left else (rt, lt)
        if other.types is not None and int not in other.types:
            return f"_{op}({left}, {right})"  # never two ints: the helper decides
        if isinstance(ln if known_left else rn, Const):
            kv = (ln if known_left else rn).value  # type: ignore[attr-defined]
            fused = self.fused(op, right if known_left else left, left if known_left else right, kv, known_left)
            if fused is not None:
                return fused
        x = self.tmp()
        if not known_left and not isinstance(rn, Const) and len(right) <= _COPY_LIMIT:
            # ``a.b + (items|length) * 2``: test the left side as soon as it is known, then evaluate
            # the right side in whichever branch runs (its code is repeated, evaluated once, after
            # the left side as always): no binding of the right side, no test of it
            test = f"({x} := {left}).__class__ is int"
            test += " and " + self.bounded(op, x, known.bits)
            return f"({x} {sym} {right} if {test} else _{op}({x}, {right}))"
        if isinstance(ln if known_left else rn, Const):
            # the constant has no effects: testing the other side first reorders nothing
            test = f"({x} := {right if known_left else left}).__class__ is int"
            ea, eb = (left, x) if known_left else (x, right)
        else:
            a, b = (self.tmp(), x) if known_left else (x, self.tmp())
            test = f"(({a} := {left}) is not ({b} := {right}) or True) and {x}.__class__ is int"
            ea, eb = a, b
        # ``*``: bit_length(x) + known.bits <= MAX_INT_BITS keeps the product within the limit;
        # ``+``/``-``: |x| < 2**MAX_INT_BITS - 2**known.bits keeps the sum within it (near the limit
        # the helper decides exactly)
        test += " and " + self.bounded(op, x, known.bits)
        return f"({ea} {sym} {eb} if {test} else _{op}({ea}, {eb}))"

    @staticmethod
    def bounded(op: str, x: str, bits: int) -> str:
        """A test that the int ``x`` times / plus / minus an int of ``bits`` bits stays within the limit."""
        if op == "mul":
            bound = _small(bits)
            return f"-{bound} < {x} < {bound}"
        room = V.INT_LIMIT - 2**bits
        if room >= _COMPACT:  # see ``_within``
            return f"(-{_COMPACT} < {x} < {_COMPACT} or -{room} < {x} < {room})"
        return f"-{room} < {x} < {room}"

    def order(self, op: str, rn: Node, left: str, lt: Ty, right: str, rt: Ty) -> str:
        """``<`` ``<=`` ``>`` ``>=``: a side known to be a number (or both texts) needs no test."""
        sym = _SYM[op]
        if (lt.is_num and rt.is_num) or (lt.types == rt.types == STR.types):
            return f"({left} {sym} {right})"
        if rt.is_num and isinstance(rn, Const):
            a = self.tmp()
            return f"({a} {sym} {right} if ({a} := {left}).__class__ is int or {a}.__class__ is float else _{op}({a}, {right}))"
        fparts = self.fparts.get(left)
        if fparts is not None and not isinstance(rn, Const) and len(right) <= _COPY_LIMIT:
            # ``(now - x) > y``: compared inside the float branch, where the left side is a known
            # float, without binding it first; the other branch repeats ``y``'s code (each path
            # evaluates it once, after the left side, and binds the same temporaries)
            ftest, r, others = fparts
            b, c = self.tmp(), self.tmp()
            inner = f"({r} {sym} {b} if (({c} := ({b} := {right}).__class__) is int or {c} is float) else _{op}({r}, {b}))"
            return f"({inner} if {ftest} else _{op}({others}, {right}))"
        if lt.is_num or rt.is_num:
            test, a, b = self.bind(left, right)
            x, c = (b if lt.is_num else a), self.tmp()
            return f"({a} {sym} {b} if {test} and (({c} := {x}.__class__) is int or {c} is float) else _{op}({a}, {b}))"
        test, a, b = self.bind(left, right)
        return f"({a} {sym} {b} if {test} and {a}.__class__ in _NUM and {b}.__class__ in _NUM else _{op}({a}, {b}))"

    def concat(self, ln: Node, rn: Node, left: str, right: str) -> str:
        if isinstance(ln, Const) and type(ln.value) is str:
            b = self.tmp()
            room = V.MAX_STRING_LENGTH - len(ln.value)
            return f"({left} + {b} if ({b} := {right}).__class__ is str and len({b}) <= {room} else _concat({left}, {b}))"
        if isinstance(rn, Const) and type(rn.value) is str:
            a = self.tmp()
            room = V.MAX_STRING_LENGTH - len(rn.value)
            return f"({a} + {right} if ({a} := {left}).__class__ is str and len({a}) <= {room} else _concat({a}, {right}))"
        return f"_concat({left}, {right})"

    def equality(self, op: str, ln: Node, rn: Node, left: str, lt: Ty, right: str, rt: Ty) -> str:
        neg = "not " if op == "ne" else ""
        if (lt.is_num and rt.is_num) or (lt.types == rt.types and lt.types in (STR.types, BOOL.types)):
            return f"({left} {'!=' if neg else '=='} {right})"  # numbers by value, texts, booleans: Python's ==
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


def _field(node: Node) -> tuple[str, str] | None:
    """``(name, key)`` of ``name.key`` / ``name['key']`` read from a scope name, else None."""
    if isinstance(node, Member):
        obj, key = node.obj, node.name
    elif isinstance(node, Index) and isinstance(node.key, Const) and type(node.key.value) is str:
        obj, key = node.obj, node.key.value
    else:
        return None
    if isinstance(obj, Name) and obj.name not in ("now", "uuid"):
        return obj.name, key
    return None


def _likely_float(node: Node) -> bool:
    """``now`` and sums or differences with it: Unix times are floats (a hint for test order only)."""
    if isinstance(node, Name):
        return node.name == "now"
    if isinstance(node, Binary) and node.op in ("add", "sub"):
        return _likely_float(node.left) or _likely_float(node.right)
    return False


def _within(name: str, code: str, lo: int, hi: int) -> str:
    """A test binding ``code`` (an int) to ``name`` and checking ``lo < name < hi``.

    One-digit ints (below 2**30) are tested first: CPython specialises a comparison of
    two of them, while one against a big bound takes the generic path (20% of a sum).
    """
    if lo <= -_COMPACT and hi >= _COMPACT:
        return f"(-{_COMPACT} < ({name} := {code}) < {_COMPACT} or {lo!r} < {name} < {hi!r})"
    return f"{lo!r} < ({name} := {code}) < {hi!r}"


def _fits(name: str, code: str) -> str:
    """A test binding the int ``code`` to ``name`` and checking it has at most ``MAX_INT_BITS`` bits."""
    return _within(name, code, -V.INT_LIMIT, V.INT_LIMIT)


def _small(known_bits: int) -> str:
    """Ints below this magnitude times an int of ``known_bits`` bits (0: one of the same bound) stay in the limit."""
    if known_bits == 0:
        return repr(2 ** (V.MAX_INT_BITS // 2 - 1))
    return repr(2 ** max(V.MAX_INT_BITS - known_bits, 0))
