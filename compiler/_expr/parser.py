"""Parser: turns tokens into an AST by recursive descent, one method per precedence level.

Lowest precedence first: ``c ? a : b`` (right-associative), ``??``,
``or``/``||``, ``and``/``&&``, ``not``/``!``, comparisons and ``in`` (they do
not chain), ``+ - ~``, ``* / // %``, unary ``-``, filters, postfix ``.name``
and ``[expr]``, primaries. After a filter, postfix access applies to the
filter's result: ``rows|first.name`` is ``(rows|first).name``.
"""

from __future__ import annotations

from compiler._errors import CompileError
from compiler._expr.lexer import KEYWORDS, Token, syntax_error
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
    children,
)

__all__ = ("Parser", "parse", "MAX_EXPRESSION_DEPTH")

#: Deepest nesting of an expression's syntax tree (parentheses, operators, accesses).
MAX_EXPRESSION_DEPTH = 50

_COMPARE = {"==": "eq", "!=": "ne", "<": "lt", "<=": "le", ">": "gt", ">=": "ge"}
_ADD = {"+": "add", "-": "sub", "~": "concat"}
_MUL = {"*": "mul", "/": "div", "//": "floordiv", "%": "mod"}
_LITERALS = {"true": True, "false": False, "null": None}


class Parser:
    """Recursive descent over a token list; raises CompileError with a caret on bad syntax."""

    def __init__(self, tokens: list[Token], text: str, path: str) -> None:
        self.toks = tokens
        self.text = text
        self.path = path
        self.pos = 0
        self.depth = 0

    # -- token helpers --------------------------------------------------------------
    @property
    def tok(self) -> Token:
        return self.toks[self.pos]

    def at_op(self, *ops: str) -> bool:
        t = self.toks[self.pos]
        return t.kind == "op" and t.value in ops

    def at_word(self, *words: str) -> bool:
        t = self.toks[self.pos]
        return t.kind == "name" and t.value in words

    def next(self) -> Token:
        t = self.toks[self.pos]
        self.pos += 1
        return t

    def fail(self, message: str, tok: Token | None = None, hint: str | None = None) -> CompileError:
        return syntax_error(self.text, (tok or self.tok).col, message, self.path, hint)

    def describe(self, t: Token) -> str:
        if t.kind == "end":
            return "the end of the expression"
        if t.kind == "str":
            return "a string"
        return f"'{t.value}'"

    def expect(self, op: str, what: str) -> Token:
        if not self.at_op(op):
            raise self.fail(f"expected '{op}' {what}, found {self.describe(self.tok)}")
        return self.next()

    def enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_EXPRESSION_DEPTH:
            raise self.fail(
                f"the expression nests deeper than {MAX_EXPRESSION_DEPTH} levels",
                hint="split it into several variables",
            )

    # -- grammar --------------------------------------------------------------------
    def parse(self) -> Node:
        if self.tok.kind == "end":
            raise self.fail("empty expression", hint="write an expression between {{ and }}")
        node = self.expression()
        if self.tok.kind != "end":
            hint = "use == to compare" if self.at_op("=") else "is an operator missing?"
            raise self.fail(f"unexpected {self.describe(self.tok)} after a complete expression", hint=hint)
        return node

    def expression(self) -> Node:
        self.enter()
        try:
            return self.ternary()
        finally:
            self.depth -= 1

    def ternary(self) -> Node:
        test = self.coalesce()
        if self.at_op("?"):
            self.next()
            then = self.expression()
            self.expect(":", "in 'condition ? then : else'")
            other = self.expression()
            return Cond(test.col, test, then, other)
        return test

    def coalesce(self) -> Node:
        node = self.logic_or()
        while self.at_op("??"):
            self.next()
            node = Logical(node.col, "??", node, self.logic_or())
        return node

    def logic_or(self) -> Node:
        node = self.logic_and()
        while self.at_op("||") or self.at_word("or"):
            self.next()
            node = Logical(node.col, "or", node, self.logic_and())
        return node

    def logic_and(self) -> Node:
        node = self.logic_not()
        while self.at_op("&&") or self.at_word("and"):
            self.next()
            node = Logical(node.col, "and", node, self.logic_not())
        return node

    def logic_not(self) -> Node:
        if self.at_op("!") or self.at_word("not"):
            t = self.next()
            self.enter()
            try:
                return Unary(t.col, "not", self.logic_not())
            finally:
                self.depth -= 1
        return self.comparison()

    def comparison_op(self) -> str | None:
        t = self.tok
        if t.kind == "op" and t.value in _COMPARE:
            self.next()
            return _COMPARE[t.value]
        if self.at_word("in"):
            self.next()
            return "in"
        if self.at_word("not") and self.toks[self.pos + 1].kind == "name" and self.toks[self.pos + 1].value == "in":
            self.pos += 2
            return "not_in"
        return None

    def comparison(self) -> Node:
        node = self.additive()
        op = self.comparison_op()
        if op is None:
            return node
        node = Binary(node.col, op, node, self.additive())
        if self.tok.kind == "op" and self.tok.value in _COMPARE or self.at_word("in"):
            raise self.fail(
                "comparisons do not chain", hint="write 'a < b and b < c', or add parentheses"
            )
        return node

    def additive(self) -> Node:
        node = self.multiplicative()
        while self.tok.kind == "op" and self.tok.value in _ADD:
            op = _ADD[self.next().value]
            node = Binary(node.col, op, node, self.multiplicative())
        return node

    def multiplicative(self) -> Node:
        node = self.unary()
        while self.tok.kind == "op" and self.tok.value in _MUL:
            op = _MUL[self.next().value]
            node = Binary(node.col, op, node, self.unary())
        return node

    def unary(self) -> Node:
        if self.at_op("-"):
            t = self.next()
            self.enter()
            try:
                operand = self.unary()
            finally:
                self.depth -= 1
            if isinstance(operand, Const) and type(operand.value) in (int, float) and t.col + 1 == operand.col:
                return Const(t.col, -operand.value)  # a negative literal such as -5
            return Unary(t.col, "neg", operand)
        if self.at_op("+"):
            raise self.fail("unary '+' is not supported", hint="numbers need no sign; use |to_number to convert text")
        return self.filtered()

    def filtered(self) -> Node:
        node = self.postfix(self.primary())
        while self.at_op("|"):
            self.next()
            t = self.tok
            if t.kind != "name":
                raise self.fail(f"expected a filter name after '|', found {self.describe(t)}")
            self.next()
            args: list[Node] = []
            kwargs: list[tuple[str, Node]] = []
            if self.at_op("("):
                args, kwargs = self.arguments(t.value)
            node = self.postfix(Filter(t.col, node, t.value, tuple(args), tuple(kwargs)))
        return node

    def arguments(self, fname: str) -> tuple[list[Node], list[tuple[str, Node]]]:
        self.next()  # (
        args: list[Node] = []
        kwargs: list[tuple[str, Node]] = []
        while not self.at_op(")"):
            t = self.tok
            if t.kind == "name" and self.toks[self.pos + 1].kind == "op" and self.toks[self.pos + 1].value == "=":
                self.pos += 2
                if any(k == t.value for k, _ in kwargs):
                    raise self.fail(f"argument '{t.value}' of filter '{fname}' is given twice", t)
                kwargs.append((t.value, self.expression()))
            else:
                if kwargs:
                    raise self.fail("a positional argument cannot follow a keyword argument", t)
                args.append(self.expression())
            if not self.at_op(","):
                break
            self.next()
        self.expect(")", f"to close the arguments of filter '{fname}'")
        return args, kwargs

    def postfix(self, node: Node) -> Node:
        while True:
            if self.at_op("."):
                self.next()
                t = self.tok
                if t.kind != "name":
                    hint = "use [0] to read a list position" if t.kind == "num" else None
                    raise self.fail(f"expected a field name after '.', found {self.describe(t)}", hint=hint)
                self.next()
                node = Member(node.col, node, t.value)
            elif self.at_op("["):
                self.next()
                key = self.expression()
                self.expect("]", "to close '['")
                node = Index(node.col, node, key)
            elif self.at_op("("):
                raise self.fail(
                    "expressions cannot call functions",
                    hint="apply a filter instead: value|name(arguments)",
                )
            else:
                return node

    def primary(self) -> Node:
        t = self.tok
        if t.kind in ("num", "str"):
            self.next()
            return Const(t.col, t.value)
        if t.kind == "name":
            self.next()
            if t.value in _LITERALS:
                return Const(t.col, _LITERALS[t.value])
            if t.value in KEYWORDS:
                raise self.fail(f"unexpected keyword '{t.value}'", t)
            return Name(t.col, t.value)
        if self.at_op("("):
            self.next()
            node = self.expression()
            self.expect(")", "to close '('")
            return node
        if self.at_op("["):
            return self.list_literal()
        if self.at_op("{"):
            return self.object_literal()
        if t.kind == "end":
            raise self.fail("the expression ends too early", hint="an operand is missing")
        raise self.fail(f"unexpected {self.describe(t)}")

    def list_literal(self) -> Node:
        start = self.next()
        items: list[Node] = []
        while not self.at_op("]"):
            items.append(self.expression())
            if not self.at_op(","):
                break
            self.next()
        self.expect("]", "to close the list")
        return ListLit(start.col, tuple(items))

    def object_literal(self) -> Node:
        start = self.next()
        pairs: list[tuple[str, Node]] = []
        seen: set[str] = set()
        while not self.at_op("}"):
            t = self.tok
            if t.kind not in ("name", "str"):
                raise self.fail(f"expected a key (a name or a string), found {self.describe(t)}")
            self.next()
            key = str(t.value)
            if key in seen:
                raise self.fail(f"key '{key}' appears twice in this object", t)
            seen.add(key)
            self.expect(":", f"after the key '{key}'")
            pairs.append((key, self.expression()))
            if not self.at_op(","):
                break
            self.next()
        self.expect("}", "to close the object")
        return ObjLit(start.col, tuple(pairs))


def tree_depth(node: Node) -> int:
    """Depth of an AST, computed without recursion."""
    best = 0
    stack = [(node, 1)]
    while stack:
        n, d = stack.pop()
        best = max(best, d)
        stack.extend((c, d + 1) for c in children(n))
    return best


def parse(tokens: list[Token], text: str, path: str) -> Node:
    """The AST of one expression; CompileError on bad syntax or excessive nesting."""
    node = Parser(tokens, text, path).parse()
    if tree_depth(node) > MAX_EXPRESSION_DEPTH:
        raise syntax_error(
            text, node.col, f"the expression nests deeper than {MAX_EXPRESSION_DEPTH} levels", path,
            hint="split it into several variables",
        )  # fmt: skip
    return node
