"""The expression language (SPEC section 2): templates and expressions compiled to ``runtime.Value``.

Pipeline: lexer (text -> tokens) -> parser (tokens -> AST) -> fold (filter
checks, constant folding) -> codegen (AST -> Python source), run once per
distinct expression text (``cache``). ``compile_value`` turns a whole step
field (a template string, or a dict/list walked recursively) into the source
of ONE Python function that rebuilds fresh containers on every call; every
error is found at load, while ``compile()`` of that source waits for the
field's first evaluation (``lazy``). A field without templates needs no code.
"""

from __future__ import annotations

import math
import re
from typing import Any, NamedTuple

from compiler._errors import CompileError, Diagnostic
from compiler._expr.cache import ExprCode, check_length, expression_at, parsed_template
from compiler._expr.codegen import NAMESPACE
from compiler._expr.lazy import constant_fn, lazy_value
from compiler._expr.parser import MAX_EXPRESSION_DEPTH
from runtime import CronstackError, LimitExceeded, Value
from runtime._limits import MAX_NESTING_DEPTH, MAX_STRING_LENGTH
from runtime._values import json_dumps

__all__ = (
    "NameRef",
    "BUILTIN_NAMES",
    "MAX_EXPRESSION_DEPTH",
    "compile_value",
    "compile_condition",
    "compile_expression",
    "field_code",
    "EXPRESSION_NAMESPACE",
)

BUILTIN_NAMES: frozenset[str] = frozenset(
    {"item", "item_parent", "index", "error", "inputs", "env", "now", "uuid", "task"}
)


class NameRef(NamedTuple):
    """A free name an expression reads (built-ins included), where, and at which 1-based column.

    A named tuple: a load makes one per name read, and tuples are cheap to make.
    """

    name: str
    path: str
    column: int


def _annotate(exc: CronstackError, source: str) -> CronstackError:
    """The same error with the expression that failed named in its message."""
    new = type(exc)(f"{exc.message} (in {{{{ {source} }}}})", error_type=exc.error_type, **exc.extra)
    return new


def _limit(path: str) -> LimitExceeded:
    return LimitExceeded(f"the text built at {path} is longer than {MAX_STRING_LENGTH:,} characters")


_NS = dict(NAMESPACE, _annotate=_annotate, _limit=_limit, _Err=CronstackError)
#: the code of an expression that only reads one variable from the scope dict
_BARE_READ = re.compile(r"""scope\['[A-Za-z_][A-Za-z0-9_]*'\]""")
#: The names the code of ``field_code`` may reference (read-only: copy it before adding names).
EXPRESSION_NAMESPACE = _NS


class _Unit:
    """Collects the statements and name reads of one compiled field.

    Each expression's code comes from the cache as is, with its own
    temporaries ``_t1``, ``_t2``...; the field's own temporaries (a bound
    piece of a template, the text being built) are ``_t01``, ``_t02``... so
    that no expression can overwrite them.
    """

    def __init__(self, path: str) -> None:
        self.n = 0
        self.stmts: list[str] = []
        self.refs: list[NameRef] = []
        self.path = path
        self.single: ExprCode | None = None

    def tmp(self) -> str:
        self.n += 1
        return f"_t0{self.n}"

    def names(self, ec: ExprCode, start: int, path: str) -> None:
        """Record the names ``ec`` reads; its text starts at column ``start`` (0-based) of the field."""
        if ec.names:
            self.refs.extend(NameRef(name, path, start + col + 1) for name, col in ec.names)

    def template(self, text: str, path: str, top: bool = False) -> tuple[str, bool]:
        """Source of a string field; True when it holds an expression.

        ``top``: the string is the whole field, so a lone ``{{ }}`` needs no
        statement (its errors are already named by the Value's source).
        """
        if "{{" not in text:
            return repr(text), False
        pieces = parsed_template(text, path)
        if len(pieces) == 1 and type(pieces[0]) is tuple:
            start, ec = pieces[0]
            self.names(ec, start, path)
            if top:
                self.single = ec
                return ec.code, True
            return self.bind(ec.code, ec.source), True
        parts = []
        for piece in pieces:
            if type(piece) is str:
                parts.append(repr(piece))
            else:
                start, ec = piece  # type: ignore[misc]
                self.names(ec, start, path)
                v = self.bind(ec.code, ec.source)
                parts.append(f"({v} if {v}.__class__ is str else _text({v}))")
        t = self.tmp()
        self.stmts.append(f"{t} = {' + '.join(parts)}")
        self.stmts.append(f"if len({t}) > {MAX_STRING_LENGTH}: raise _limit({path!r})")
        return t, True

    def bind(self, code: str, source: str) -> str:
        """A temporary holding ``code``'s value, evaluated here (so in the field's order).

        A failure of ours is annotated with the expression's text; a bare read of
        a variable (``scope['x']`` on the scope dict) can only raise ``KeyError``,
        which ``_Err`` does not catch, so it is bound without the ``try``: three
        lines less for the compiler to parse per such piece of an object, list or
        template field.
        """
        t = self.tmp()
        if _BARE_READ.fullmatch(code):
            self.stmts.append(f"{t} = {code}")
        else:
            self.stmts.append(f"try:\n        {t} = {code}\n    except _Err as e:\n        raise _annotate(e, {source!r}) from None")
        return t

    def value(self, v: Any, path: str, depth: int) -> tuple[str, bool]:
        """Source of a JSON value walked recursively; True when a template is somewhere inside."""
        t = type(v)
        if t is str:
            return self.template(v, path)
        if v is None or t is bool or t is int:
            return repr(v), False
        if t is float:
            if not math.isfinite(v):
                raise CompileError(Diagnostic(f"{v!r} is not a JSON number", path=path))
            return repr(v), False
        if t is not list and t is not dict:
            raise CompileError(Diagnostic(f"a {t.__name__} is not JSON data", path=path))
        if depth >= MAX_NESTING_DEPTH:
            raise CompileError(Diagnostic(f"this value nests deeper than {MAX_NESTING_DEPTH} lists/objects", path=path))
        codes: list[str] = []
        dynamic = False
        if t is list:
            for i, x in enumerate(v):
                if type(x) is str and "{{" not in x:  # the common leaves, without a call
                    codes.append(repr(x))
                    continue
                code, d = self.value(x, f"{path}[{i}]", depth + 1)
                dynamic = dynamic or d
                codes.append(code)
            return "[" + ", ".join(codes) + "]", dynamic
        for k, x in v.items():
            if type(k) is not str:
                raise CompileError(Diagnostic(f"object keys must be text, got {k!r}", path=path))
            tx = type(x)
            if (tx is str and "{{" not in x) or x is None or tx is bool or tx is int:
                code = repr(x)
            else:
                code, d = self.value(x, f"{path}.{k}" if path else k, depth + 1)
                dynamic = dynamic or d
            codes.append(f"{k!r}: {code}")
        return "{" + ", ".join(codes) + "}", dynamic

    def build(self, result: str, source: str) -> Value:
        """The field's Value: code compiled at its first call; none at all for a folded constant."""
        single = self.single
        if single is not None and single.constant is not None and not self.stmts:
            return Value(constant_fn(single.constant[0]), source, not self.refs)
        body = "".join(f"    {s}\n" for s in self.stmts) + f"    return {result}"
        return lazy_value(f"def _value(scope):\n{body}\n", f"<expression at {self.path}>", _NS, source, not self.refs)


def _source(value: Any) -> str:
    if type(value) is str:
        return value
    try:
        text = json_dumps(value)
    except CronstackError:
        text = repr(value)
    return text if len(text) <= 500 else text[:497] + "..."


def _value_unit(value: Any, path: str) -> tuple[_Unit, str, bool]:
    """The unit of a field, its result expression, and whether any template is in it."""
    unit = _Unit(path)
    if type(value) is str:
        result, dynamic = unit.template(value, path, top=True)
    else:
        result, dynamic = unit.value(value, path, 0)
    return unit, result, dynamic


def compile_value(value: Any, path: str) -> tuple[Value, tuple[NameRef, ...]]:
    """A step field: templates in strings, dicts/lists walked (keys never templates), other JSON as is."""
    if type(value) is str:  # the common fields, without a unit: plain text, or one whole {{ }}
        if "{{" not in value:
            return Value(constant_fn(value), value, True), ()
        pieces = parsed_template(value, path)
        if len(pieces) == 1 and type(pieces[0]) is tuple:
            start, ec = pieces[0]
            refs = tuple(NameRef(name, path, start + col + 1) for name, col in ec.names)
            if ec.constant is not None:
                return Value(constant_fn(ec.constant[0]), value, not refs), refs
            return lazy_value(ec.function, f"<expression at {path}>", _NS, value, not refs), refs
    unit, result, dynamic = _value_unit(value, path)
    if not dynamic:  # plain JSON data, checked by the walk: no code needed
        return Value(constant_fn(value), _source(value), True), ()
    return unit.build(result, _source(value)), tuple(unit.refs)


def compile_expression(src: str, path: str) -> tuple[Value, tuple[NameRef, ...]]:
    """A bare expression (no braces)."""
    if type(src) is not str:
        raise CompileError(Diagnostic(f"expected an expression (text), got {type(src).__name__}", path=path))
    unit = _Unit(path)
    check_length(src, path)
    ec = unit.single = expression_at(src, 0, len(src), path, template=False)
    unit.names(ec, 0, path)
    return unit.build(ec.code, src), tuple(unit.refs)


def compile_condition(value: Any, path: str) -> tuple[Value, tuple[NameRef, ...]]:
    """A ``condition`` field: a boolean, or one expression with or without ``{{ }}``; yields a bool."""
    if value is None or type(value) in (bool, int, float):
        return Value(lambda scope, _v=bool(value): _v, _source(value), True), ()
    unit, result = _condition_unit(value, path)
    return unit.build(result, value), tuple(unit.refs)


def _condition_unit(value: Any, path: str) -> tuple[_Unit, str]:
    if type(value) is not str:
        raise CompileError(
            Diagnostic(f"a condition must be an expression or true/false, got a {type(value).__name__}", path=path)
        )
    unit = _Unit(path)
    text = value
    if "{{" in text:
        pieces = parsed_template(text, path)
        exprs = [p for p in pieces if type(p) is tuple]
        if len(exprs) != 1 or any(type(p) is str and p.strip() for p in pieces):
            raise CompileError(
                Diagnostic(
                    "a condition must be a single expression",
                    path=path,
                    hint="combine tests inside one {{ }} with 'and' / 'or'",
                )
            )
        start, ec = exprs[0]  # type: ignore[misc]
    else:
        check_length(text, path)
        start, ec = 0, expression_at(text, 0, len(text), path, template=False)
    unit.names(ec, start, path)
    code = ec.code
    if ec.constant is not None:
        unit.single = ExprCode(ec.source, ec.code, ec.names, (bool(ec.constant[0]),), ec.function)
    return unit, f"(True if {code} else False)"


def field_code(value: Any, path: str, *, condition: bool = False) -> tuple[tuple[str, ...], str]:
    """The Python statements and result expression a field compiles to, for backends that inline them.

    The same code ``compile_value``/``compile_condition`` wrap in a function:
    it reads variables from a dict named ``scope``, needs the names of
    ``EXPRESSION_NAMESPACE``, and its statements are dedented to column 0.
    """
    if condition and (value is None or type(value) in (bool, int, float)):
        return (), repr(bool(value))
    if not condition and type(value) is str:  # plain text, or one whole {{ }}: no statements
        if "{{" not in value:
            return (), repr(value)
        pieces = parsed_template(value, path)
        if len(pieces) == 1 and type(pieces[0]) is tuple:
            return (), pieces[0][1].code
    if condition:
        unit, result = _condition_unit(value, path)
    else:
        unit, result, _ = _value_unit(value, path)
    # statements start at column 0 and continue at 4 + 4k: drop 4 from those lines
    return tuple(s.replace("\n    ", "\n") for s in unit.stmts), result
