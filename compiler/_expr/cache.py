"""Expression code cache: the text of one expression into its generated code, worked out once per text.

A project repeats the same expressions over and over (``{{ now }}``,
``{{ item.id }}``, ``{{ env.API_KEY }}``), so lexing, parsing, folding and
code generation run once per distinct *text*, not once per field; so does
splitting a template string into its pieces. What is kept depends on the
text alone:

* the generated code, used verbatim wherever the text appears (an
  expression's temporaries are its own, see ``CodeGen``);
* the free names it reads, with columns relative to the text, which the
  caller shifts to where the text stands in its field;
* the folded value, when the whole expression folds to a constant.

Errors are never cached. When a text does not compile, it is compiled again
in place -- inside its whole field, under the field's JSON path -- by the same
code path as before caching existed, so the message, the column and the
quoted snippet are exactly those of an uncached compile.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

from compiler._errors import CompileError, Diagnostic
from compiler._expr.codegen import CodeGen
from compiler._expr.fold import Folder
from compiler._expr.lexer import tokenize
from compiler._expr.nodes import Const, Name, Node, children
from compiler._expr.parser import parse
from runtime._limits import MAX_EXPRESSION_LENGTH

__all__ = (
    "ExprCode",
    "Piece",
    "expression_code",
    "expression_at",
    "template_pieces",
    "parsed_template",
    "check_length",
    "CACHE_SIZE",
    "CACHED_TEXT_LIMIT",
)

#: distinct expression texts (and, apart, template strings) kept, least recently used dropped first
CACHE_SIZE = 8192
#: longer texts are compiled without caching (they are rare, and the cache holds its keys)
CACHED_TEXT_LIMIT = 2000


@dataclass(frozen=True, slots=True)
class ExprCode:
    """What one expression text compiles to, independent of where it stands."""

    #: the text without surrounding blanks (quoted in run-time errors)
    source: str
    #: one Python expression; reads ``scope``, uses temporaries ``_t1``, ``_t2``...
    code: str
    #: free names read, with their 0-based column in the text, in column order
    names: tuple[tuple[str, int], ...]
    #: ``(value,)`` when the whole expression folds to a constant, else None
    constant: tuple[Any] | None
    #: the source of ``def _value(scope)`` returning the expression (a whole field of it)
    function: str


#: a template piece: literal text, or (column where the expression's text starts, its code)
Piece = str | tuple[int, ExprCode]


def check_length(source: str, path: str) -> None:
    """Refuse an expression longer than ``MAX_EXPRESSION_LENGTH``."""
    if len(source) > MAX_EXPRESSION_LENGTH:
        raise CompileError(
            Diagnostic(
                f"this expression is {len(source):,} characters long; the limit is {MAX_EXPRESSION_LENGTH:,}",
                path=path,
                hint="move the data into a variable or a table",
            )
        )


def _names(node: Node) -> tuple[tuple[str, int], ...]:
    stack = [node]
    found: list[Name] = []
    while stack:
        n = stack.pop()
        if isinstance(n, Name):
            found.append(n)
        stack.extend(children(n))
    return tuple((n.name, n.col) for n in sorted(found, key=lambda n: n.col))


def _build(text: str) -> ExprCode:
    """Lex, parse, fold and generate ``text`` on its own; CompileError (worded for no field) on failure."""
    tokens, _ = tokenize(text, "")
    ast = parse(tokens, text, "")
    names = _names(ast)
    folded = Folder(text, "").visit(ast)
    constant = (folded.value,) if isinstance(folded, Const) else None
    code = CodeGen().gen(folded)
    return ExprCode(text.strip(), code, names, constant, f"def _value(scope):\n    return {code}\n")


_cached_build = functools.lru_cache(maxsize=CACHE_SIZE)(_build)


def expression_code(text: str) -> ExprCode:
    """The code of one expression text (without braces), from the cache when seen before."""
    if len(text) > CACHED_TEXT_LIMIT:
        return _build(text)
    return _cached_build(text)


def expression_at(field: str, start: int, end: int, path: str, *, template: bool) -> ExprCode:
    """The code of ``field[start:end]``; errors point into ``field`` at ``path``.

    ``template``: the text sits between ``{{`` and ``}}`` (tokenized in
    template mode when compiled again for an error).
    """
    try:
        return expression_code(field[start:end])
    except CompileError as exc:
        alone = exc
    _raise_in_place(field, start, path, template)
    raise _shifted(alone, start, path)


def _raise_in_place(field: str, start: int, path: str, template: bool) -> None:
    """Compile the expression at ``start`` where it stands, for the error's own column and quote."""
    tokens, _ = tokenize(field, path, start, template)
    Folder(field, path).visit(parse(tokens, field, path))


def _shifted(exc: CompileError, start: int, path: str) -> CompileError:
    """Only if the in-place compile disagrees with the standalone one: the standalone error, moved into place."""
    return CompileError(
        Diagnostic(d.message, path, column=None if d.column is None else d.column + start, hint=d.hint)
        for d in exc.diagnostics
    )


def _parse_template(text: str, path: str) -> tuple[Piece, ...]:
    out: list[Piece] = []
    for piece in template_pieces(text, path):
        if type(piece) is str:
            out.append(piece)
        else:
            start, end = piece  # type: ignore[misc]
            check_length(text[start:end].strip(), path)
            out.append((start, expression_code(text[start:end])))
    return tuple(out)


_cached_template = functools.lru_cache(maxsize=CACHE_SIZE)(_parse_template)


def parsed_template(text: str, path: str) -> tuple[Piece, ...]:
    """The pieces of a template string (it contains ``{{``), from the cache when seen before."""
    try:
        if len(text) > CACHED_TEXT_LIMIT:
            return _parse_template(text, "")
        return _cached_template(text, "")
    except CompileError:
        pass
    # the error again, worded for this field: the pieces one by one, each in place
    out: list[Piece] = []
    for piece in template_pieces(text, path):
        if type(piece) is str:
            out.append(piece)
        else:
            start, end = piece  # type: ignore[misc]
            check_length(text[start:end].strip(), path)
            out.append((start, expression_at(text, start, end, path, template=True)))
    return tuple(out)  # pragma: no cover - only if the cached parse failed where this one did not


# the inside of a {{ }} without braces: anything but quotes and braces, and whole strings
_BODY = re.compile(r"""(?:[^'"{}]++|'(?:[^'\\]|\\.)*+'|"(?:[^"\\]|\\.)*+")*+""", re.S)


def template_pieces(text: str, path: str) -> list[str | tuple[int, int]]:
    """A template's literal strings and the ``(start, end)`` of each ``{{ }}``'s inside.

    The end of a template is the first ``}}`` outside an object literal and a
    string. One regular expression finds it when the inside has no braces;
    otherwise (or when it is malformed) the tokenizer decides and words the
    error.
    """
    pieces: list[str | tuple[int, int]] = []
    i = 0
    body = _BODY.match
    while True:
        j = text.find("{{", i)
        if j < 0:
            if i < len(text):
                pieces.append(text[i:])
            return pieces
        if j > i:
            pieces.append(text[i:j])
        start = j + 2
        end = body(text, start).end()  # type: ignore[union-attr]
        if not text.startswith("}}", end):
            _, after = tokenize(text, path, start, template=True)
            end = after - 2
        pieces.append((start, end))
        i = end + 2
