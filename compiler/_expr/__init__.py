"""The expression language (SPEC section 2): templates and expressions compiled to ``runtime.Value``.

Pipeline: lexer (text -> tokens) -> parser (tokens -> AST) -> fold (filter
checks, constant folding) -> codegen (AST -> Python source) -> ``compile()``
once per field. ``compile_value`` compiles a whole step field (a template
string, or a dict/list walked recursively) into ONE Python function that
rebuilds fresh containers on every call.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from typing import Any

from compiler._errors import CompileError, Diagnostic
from compiler._expr.codegen import NAMESPACE, CodeGen
from compiler._expr.fold import Folder
from compiler._expr.lexer import split_template, tokenize
from compiler._expr.nodes import Name, Node, children
from compiler._expr.parser import MAX_EXPRESSION_DEPTH, parse
from runtime import CronstackError, LimitExceeded, Value
from runtime._limits import MAX_EXPRESSION_LENGTH, MAX_NESTING_DEPTH, MAX_STRING_LENGTH
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


@dataclass(frozen=True, slots=True)
class NameRef:
    """A free name an expression reads (built-ins included), where, and at which 1-based column."""

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
#: The names the code of ``field_code`` may reference (read-only: copy it before adding names).
EXPRESSION_NAMESPACE = _NS


def _names(node: Node, path: str, out: list[NameRef]) -> None:
    stack = [node]
    found: list[Name] = []
    while stack:
        n = stack.pop()
        if isinstance(n, Name):
            found.append(n)
        stack.extend(children(n))
    out.extend(NameRef(n.name, path, n.col + 1) for n in sorted(found, key=lambda n: n.col))


def _check_length(source: str, path: str) -> None:
    if len(source) > MAX_EXPRESSION_LENGTH:
        raise CompileError(
            Diagnostic(
                f"this expression is {len(source):,} characters long; the limit is {MAX_EXPRESSION_LENGTH:,}",
                path=path,
                hint="move the data into a variable or a table",
            )
        )


class _Unit:
    """Collects the statements and name reads of one compiled field."""

    def __init__(self, path: str) -> None:
        self.gen = CodeGen()
        self.stmts: list[str] = []
        self.refs: list[NameRef] = []
        self.path = path
        self.exprs = 0

    def expression(self, tokens: list[Any], text: str, path: str) -> tuple[str, Node]:
        ast = parse(tokens, text, path)
        _names(ast, path, self.refs)
        folded = Folder(text, path).visit(ast)
        self.exprs += 1
        return self.gen.gen(folded), folded

    def template(self, text: str, path: str, top: bool = False) -> tuple[str, bool]:
        """Source of a string field; True when it holds an expression.

        ``top``: the string is the whole field, so a lone ``{{ }}`` needs no
        statement (its errors are already named by the Value's source).
        """
        if "{{" not in text:
            return repr(text), False
        pieces = split_template(text, path)
        for piece in pieces:
            if not isinstance(piece, str):
                _check_length(piece[1], path)
        if len(pieces) == 1 and not isinstance(pieces[0], str):
            code, _ = self.expression(pieces[0][0], text, path)
            return (code if top else self.bind(code, pieces[0][1])), True
        parts = []
        for piece in pieces:
            if isinstance(piece, str):
                parts.append(repr(piece))
            else:
                code, _ = self.expression(piece[0], text, path)
                v = self.bind(code, piece[1])
                parts.append(f"({v} if {v}.__class__ is str else _text({v}))")
        t = self.gen.tmp()
        self.stmts.append(f"{t} = {' + '.join(parts)}")
        self.stmts.append(f"if len({t}) > {MAX_STRING_LENGTH}: raise _limit({path!r})")
        return t, True

    def bind(self, code: str, source: str) -> str:
        t = self.gen.tmp()
        self.stmts.append(f"try:\n        {t} = {code}\n    except _Err as e:\n        raise _annotate(e, {source!r}) from None")
        return t

    def value(self, v: Any, path: str, depth: int) -> tuple[str, bool]:
        t = type(v)
        if t is str:
            return self.template(v, path)
        if v is None or t in (bool, int):
            return repr(v), False
        if t is float:
            if not math.isfinite(v):
                raise CompileError(Diagnostic(f"{v!r} is not a JSON number", path=path))
            return repr(v), False
        if t not in (list, dict):
            raise CompileError(Diagnostic(f"a {t.__name__} is not JSON data", path=path))
        if depth >= MAX_NESTING_DEPTH:
            raise CompileError(Diagnostic(f"this value nests deeper than {MAX_NESTING_DEPTH} lists/objects", path=path))
        if t is list:
            parts = [self.value(x, f"{path}[{i}]", depth + 1) for i, x in enumerate(v)]
            return "[" + ", ".join(p for p, _ in parts) + "]", any(d for _, d in parts)
        items = []
        dynamic = False
        for k, x in v.items():
            if type(k) is not str:
                raise CompileError(Diagnostic(f"object keys must be text, got {k!r}", path=path))
            code, d = self.value(x, f"{path}.{k}" if path else k, depth + 1)
            dynamic = dynamic or d
            items.append(f"{k!r}: {code}")
        return "{" + ", ".join(items) + "}", dynamic

    def build(self, result: str, source: str) -> Value:
        body = "".join(f"    {s}\n" for s in self.stmts) + f"    return {result}"
        src = f"def _value(scope):\n{body}\n"
        ns = dict(_NS)
        exec(compile(src, f"<expression at {self.path}>", "exec"), ns)
        constant = not self.refs
        return Value(ns["_value"], source, constant)


def _source(value: Any) -> str:
    if type(value) is str:
        return value
    try:
        text = json_dumps(value)
    except CronstackError:
        text = repr(value)
    return text if len(text) <= 500 else text[:497] + "..."


def _value_unit(value: Any, path: str) -> tuple[_Unit, str]:
    unit = _Unit(path)
    if type(value) is str:
        result, _ = unit.template(value, path, top=True)
    else:
        result, _ = unit.value(value, path, 0)
    return unit, result


def compile_value(value: Any, path: str) -> tuple[Value, tuple[NameRef, ...]]:
    """A step field: templates in strings, dicts/lists walked (keys never templates), other JSON as is."""
    unit, result = _value_unit(value, path)
    return unit.build(result, _source(value)), tuple(unit.refs)


def compile_expression(src: str, path: str) -> tuple[Value, tuple[NameRef, ...]]:
    """A bare expression (no braces)."""
    if type(src) is not str:
        raise CompileError(Diagnostic(f"expected an expression (text), got {type(src).__name__}", path=path))
    unit = _Unit(path)
    _check_length(src, path)
    tokens, _ = tokenize(src, path)
    code, _ = unit.expression(tokens, src, path)
    return unit.build(code, src), tuple(unit.refs)


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
        pieces = split_template(text, path)
        exprs = [p for p in pieces if not isinstance(p, str)]
        if len(exprs) != 1 or any(isinstance(p, str) and p.strip() for p in pieces):
            raise CompileError(
                Diagnostic(
                    "a condition must be a single expression",
                    path=path,
                    hint="combine tests inside one {{ }} with 'and' / 'or'",
                )
            )
        _check_length(exprs[0][1], path)
        tokens = exprs[0][0]
    else:
        _check_length(text, path)
        tokens, _ = tokenize(text, path)
    code, _ = unit.expression(tokens, text, path)
    return unit, f"(True if {code} else False)"


def field_code(value: Any, path: str, *, condition: bool = False) -> tuple[tuple[str, ...], str]:
    """The Python statements and result expression a field compiles to, for backends that inline them.

    The same code ``compile_value``/``compile_condition`` wrap in a function:
    it reads variables from a dict named ``scope``, needs the names of
    ``EXPRESSION_NAMESPACE``, and its statements are dedented to column 0.
    """
    if condition and (value is None or type(value) in (bool, int, float)):
        return (), repr(bool(value))
    unit, result = (_condition_unit if condition else _value_unit)(value, path)
    return tuple(textwrap.dedent("    " + s) for s in unit.stmts), result
