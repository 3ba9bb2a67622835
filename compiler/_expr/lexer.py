"""Lexer: turns expression text into a list of ``Token`` records (kind, value, column).

It also splits template strings into literal text and ``{{ ... }}`` pieces:
the end of a template is the first ``}}`` outside an object literal and
outside a string, so ``{{ {a: {b: 1}} }}`` and ``{{ '}}' }}`` both work.
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple

from compiler._errors import CompileError, Diagnostic

__all__ = ("Token", "tokenize", "split_template", "KEYWORDS", "syntax_error")

KEYWORDS = frozenset({"and", "or", "not", "in", "true", "false", "null"})

# longest first, so that "//" wins over "/" and "??" over "?"
_OPERATORS = (
    "??", "||", "&&", "==", "!=", "<=", ">=", "//",
    "?", ":", "!", "<", ">", "+", "-", "~", "*", "/", "%", "|", ".", "[", "]", "(", ")",
    "{", "}", ",", "=",
)  # fmt: skip

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "0": "\0", "\\": "\\", "'": "'", '"': '"', "/": "/"}


def _digit(c: str) -> bool:
    return "0" <= c <= "9"


class Token(NamedTuple):
    """One token: ``kind`` is "num", "str", "name", "op" or "end"; ``col`` is 0-based in the whole text."""

    kind: str
    value: object
    col: int


def syntax_error(text: str, col: int, message: str, path: str, hint: str | None = None) -> CompileError:
    """A CompileError quoting the source with a caret under column ``col`` (0-based)."""
    start = max(0, col - 30)
    snippet = text[start : col + 30].replace("\n", " ")
    caret = " " * (col - start) + "^"
    return CompileError(
        Diagnostic(f"{message}\n    {snippet}\n    {caret}", path=path, column=col + 1, hint=hint)
    )


_HEX = "0123456789abcdefABCDEF"


def _string(text: str, i: int, path: str) -> tuple[str, int]:
    quote = text[i]
    out: list[str] = []
    j = i + 1
    n = len(text)
    while j < n:
        c = text[j]
        if c == quote:
            return "".join(out), j + 1
        if c == "\\":
            if j + 1 >= n:
                break
            e = text[j + 1]
            if e == "u":
                digits = text[j + 2 : j + 6]
                if len(digits) != 4 or not all(d in _HEX for d in digits):
                    raise syntax_error(text, j, "\\u needs four hex digits", path)
                code = int(digits, 16)
                j += 6
                if 0xD800 <= code <= 0xDFFF:
                    # UTF-16 surrogates: a high one followed by a low one's escape is one character
                    # (as in JSON: '\ud83d\ude00' is the emoji); alone, one is no character at all
                    low = text[j + 2 : j + 6] if text[j : j + 2] == "\\u" else ""
                    if code <= 0xDBFF and len(low) == 4 and all(d in _HEX for d in low) and 0xDC00 <= int(low, 16) <= 0xDFFF:
                        out.append(chr(0x10000 + ((code - 0xD800) << 10) + (int(low, 16) - 0xDC00)))
                        j += 6
                        continue
                    raise syntax_error(
                        text, j - 6, f"\\u{digits} is half of a UTF-16 surrogate pair, not a character", path,
                        hint="write the pair (\\ud83d\\ude00) or the character itself",
                    )
                out.append(chr(code))
                continue
            if e not in _ESCAPES:
                raise syntax_error(
                    text, j, f"unknown escape '\\{e}' in a string", path,
                    hint="known escapes: \\n \\t \\r \\b \\f \\0 \\\\ \\' \\\" \\/ \\uXXXX",
                )  # fmt: skip
            out.append(_ESCAPES[e])
            j += 2
            continue
        out.append(c)
        j += 1
    raise syntax_error(text, i, "this string is never closed", path, hint=f"add a closing {quote}")


def _number(text: str, i: int, path: str) -> tuple[int | float, int]:
    n = len(text)
    j = i
    while j < n and _digit(text[j]):
        j += 1
    is_float = False
    if j + 1 < n and text[j] == "." and _digit(text[j + 1]):
        is_float = True
        j += 1
        while j < n and _digit(text[j]):
            j += 1
    if j < n and text[j] in "eE":
        k = j + 1
        if k < n and text[k] in "+-":
            k += 1
        if k < n and _digit(text[k]):
            is_float = True
            j = k
            while j < n and _digit(text[j]):
                j += 1
    if j < n and (text[j].isalpha() or text[j] == "_"):
        raise syntax_error(text, j, f"unexpected '{text[j]}' right after the number {text[i:j]}", path)
    raw = text[i:j]
    if is_float:
        value = float(raw)
        if not math.isfinite(value):
            raise syntax_error(text, i, f"the number {raw} is too large", path)
        return value, j
    # 2**63 right after a minus: -9223372036854775808, the smallest 64-bit number
    if len(raw) > 19 or int(raw) > 2**63 - (i == 0 or text[i - 1] != "-"):
        as_float = float(raw)  # a digit string never overflows float(): it gives inf
        hint = f"write it as a float: {as_float!r}".replace("e+", "e") if math.isfinite(as_float) else None
        raise syntax_error(text, i, f"the whole number {raw} does not fit in 64 bits", path, hint=hint)
    return int(raw), j


def tokenize(text: str, path: str, start: int = 0, template: bool = False) -> tuple[list[Token], int]:
    """Tokens of ``text`` from ``start``; in template mode stop at the closing ``}}``.

    Returns the tokens (ending with an "end" token) and the index just past
    the last character consumed (past the ``}}`` in template mode). A whole
    expression made of plain tokens goes through one regular expression; the
    rest (template mode, escapes in strings, exponents, anything wrong) goes
    through the reference tokenizer, which alone words the errors.
    """
    if not template:
        toks = _tokenize_fast(text, start)
        if toks is not None:
            return toks, len(text)
    return _tokenize_slow(text, path, start, template)


_FAST = re.compile(
    r"""[ \t\r\n]*+(?:
      (?P<name>[A-Za-z_][A-Za-z0-9_]*+)
    | (?P<num>[0-9]++(?:\.[0-9]++)?+)
    | (?P<op>\?\?|\|\||&&|==|!=|<=|>=|//|[?:!<>+\-~*/%|.\[\](){},=])
    | (?P<str>'[^'\\]*+'|"[^"\\]*+")
    | (?P<end>\Z))""",
    re.X,
)


def _tokenize_fast(text: str, start: int) -> list[Token] | None:
    """Tokens of a plain expression, or None when the reference tokenizer must decide."""
    toks: list[Token] = []
    append = toks.append
    match = _FAST.match
    i = start
    while True:
        m = match(text, i)
        if m is None:
            return None
        kind = m.lastgroup
        col = m.start(kind)  # type: ignore[arg-type]
        i = m.end()
        if kind == "name" or kind == "op":
            append(Token(kind, m.group(kind), col))  # type: ignore[arg-type]
        elif kind == "str":
            append(Token("str", text[col + 1 : i - 1], col))
        elif kind == "num":
            raw = m.group(kind)  # type: ignore[arg-type]
            if i < len(text) and (text[i].isalpha() or text[i] == "_"):
                return None  # an exponent, or the error of a name glued to a number
            if "." in raw:
                value: int | float = float(raw)
                if not math.isfinite(value):
                    return None
            else:
                if len(raw) > 19 or int(raw) > 2**63 - 1:
                    return None
                value = int(raw)
            append(Token("num", value, col))
        else:
            append(Token("end", None, col))
            return toks


def _tokenize_slow(text: str, path: str, start: int, template: bool) -> tuple[list[Token], int]:
    """The reference tokenizer, character by character: template mode, and every error message."""
    toks: list[Token] = []
    n = len(text)
    i = start
    braces = 0
    while True:
        while i < n and text[i] in " \t\r\n":
            i += 1
        if i >= n:
            if template:
                raise syntax_error(text, start - 2, "this '{{' is never closed", path, hint="add '}}' after the expression")
            toks.append(Token("end", None, i))
            return toks, i
        c = text[i]
        if template and braces == 0 and text.startswith("}}", i):
            toks.append(Token("end", None, i))
            return toks, i + 2
        if c == "'" or c == '"':
            value, j = _string(text, i, path)
            toks.append(Token("str", value, i))
            i = j
            continue
        if _digit(c):
            num, j = _number(text, i, path)
            toks.append(Token("num", num, i))
            i = j
            continue
        if c.isalpha() or c == "_":
            j = i + 1
            while j < n and (text[j].isalnum() or text[j] == "_"):
                j += 1
            word = text[i:j]
            if not word.isascii():
                raise syntax_error(text, i, f"names are ASCII letters, digits and _; got {word!r}", path)
            toks.append(Token("name", word, i))
            i = j
            continue
        for op in _OPERATORS:
            if text.startswith(op, i):
                if op == "{":
                    braces += 1
                elif op == "}":
                    braces -= 1
                toks.append(Token("op", op, i))
                i += len(op)
                break
        else:
            hint = "use == to compare" if c == "=" else None
            raise syntax_error(text, i, f"unexpected character {c!r}", path, hint=hint)


def split_template(text: str, path: str) -> list[str | tuple[list[Token], str, int]]:
    """Pieces of a template: literal strings and ``(tokens, source, column)`` of each ``{{ }}``."""
    pieces: list[str | tuple[list[Token], str, int]] = []
    i = 0
    while True:
        j = text.find("{{", i)
        if j < 0:
            if i < len(text):
                pieces.append(text[i:])
            return pieces
        if j > i:
            pieces.append(text[i:j])
        toks, end = tokenize(text, path, j + 2, template=True)
        pieces.append((toks, text[j + 2 : end - 2].strip(), j + 2))
        i = end
