"""Property tests: compiled code against a tiny reference evaluator, and fuzzing the compiler."""

import math

from hypothesis import given
from hypothesis import strategies as st

from compiler._errors import CompileError
from compiler._expr import compile_expression
from runtime import ExpressionError, LimitExceeded

NUMS = st.one_of(st.integers(-1000, 1000), st.floats(-1e6, 1e6, allow_nan=False).map(lambda f: round(f, 3)))
LEAVES = st.one_of(NUMS, st.sampled_from(["'a'", "'b'", "true", "false", "null", "x", "y"]))


def _tree(children):
    ops = st.sampled_from(["+", "-", "*", "/", "//", "%", "==", "!=", "<", "<=", ">", ">=", "~", "and", "or", "??"])
    return st.one_of(
        st.tuples(ops, children, children),
        st.tuples(st.just("neg"), children),
        st.tuples(st.just("not"), children),
        st.tuples(st.just("?"), children, children, children),
    )


TREES = st.recursive(LEAVES, _tree, max_leaves=12)


class Fail(Exception):
    pass


def is_num(v):
    return type(v) in (int, float)


def text(v):
    if v is None:
        return ""
    if v is True or v is False:
        return "true" if v else "false"
    if type(v) is float and v.is_integer() and abs(v) < 1e16:
        return str(int(v))
    return str(v) if type(v) is not float else repr(v)


def ref(t, env):
    """Reference semantics, written independently of runtime._values."""
    if not isinstance(t, tuple):
        if isinstance(t, int | float):
            return t
        return {"'a'": "a", "'b'": "b", "true": True, "false": False, "null": None}.get(t, env.get(t))
    op = t[0]
    if op == "neg":
        v = ref(t[1], env)
        if not is_num(v):
            raise Fail
        return -v
    if op == "not":
        return not ref(t[1], env)
    if op == "?":
        return ref(t[2], env) if ref(t[1], env) else ref(t[3], env)
    a = ref(t[1], env)
    if op == "and":
        return ref(t[2], env) if a else a
    if op == "or":
        return a if a else ref(t[2], env)
    if op == "??":
        return ref(t[2], env) if a is None else a
    b = ref(t[2], env)
    if op == "~":
        return text(a) + text(b)
    if op in ("==", "!="):
        same = (a == b and type(a) is type(b)) or (is_num(a) and is_num(b) and a == b)
        return same if op == "==" else not same
    if op == "+" and type(a) is str and type(b) is str:
        return a + b
    if op in ("<", "<=", ">", ">=") and type(a) is str and type(b) is str:
        pass
    elif not (is_num(a) and is_num(b)):
        raise Fail
    if op in ("/", "//", "%") and b == 0:
        raise Fail
    r = {
        "+": lambda: a + b, "-": lambda: a - b, "*": lambda: a * b, "/": lambda: a / b,
        "//": lambda: a // b, "%": lambda: a % b, "<": lambda: a < b, "<=": lambda: a <= b,
        ">": lambda: a > b, ">=": lambda: a >= b,
    }[op]()  # fmt: skip
    if op == "/":
        r = float(r)
    if type(r) is float and not math.isfinite(r):
        raise Fail
    return r


def src(t):
    if not isinstance(t, tuple):
        return repr(t) if isinstance(t, int | float) else t
    if t[0] == "neg":
        return f"-({src(t[1])})"
    if t[0] == "not":
        return f"not ({src(t[1])})"
    if t[0] == "?":
        return f"(({src(t[1])}) ? ({src(t[2])}) : ({src(t[3])}))"
    return f"(({src(t[1])}) {t[0]} ({src(t[2])}))"


@given(TREES, NUMS, st.one_of(NUMS, st.just("x"), st.none(), st.booleans()))
def test_compiled_code_agrees_with_the_reference(tree, x, y):
    env = {"x": x, "y": y}
    try:
        expected = ref(tree, env)
    except Fail:
        expected = Fail
    fn = compile_expression(src(tree), "p")[0].fn
    try:
        got = fn(dict(env))
    except ExpressionError:
        got = Fail
    if isinstance(expected, float) and isinstance(got, float) and math.isnan(expected):
        return
    assert got == expected and type(got) is type(expected), src(tree)


ALPHABET = st.sampled_from(
    list("abxy0123456789 .,:?!|()[]{}'\"+-*/%~<>=&\\_")
    + ["and", "or", "not", "in", "true", "null", "|length", "|upper", "|sort(", "|date(", "??", "//", "{{", "}}"]
)


@given(st.lists(ALPHABET, max_size=30).map("".join))
def test_fuzz_compiles_or_fails_cleanly(text):
    try:
        value, _ = compile_expression(text, "p")
    except CompileError:
        return
    scope = {"x": [1, "a", None], "y": {"a": 1}, "a": "txt", "b": 2.5, "__now__": lambda: 0.0}
    try:
        value.fn(scope)
    except (ExpressionError, LimitExceeded):
        pass
    except KeyError as exc:
        assert exc.args[0] not in scope and isinstance(exc.args[0], str)


@given(st.text(max_size=40))
def test_fuzz_arbitrary_text_as_template(text):
    from compiler._expr import compile_value

    try:
        value, _ = compile_value("{{" + text, "p")
    except CompileError:
        return
    try:
        value.fn({"__now__": lambda: 0.0})
    except (ExpressionError, LimitExceeded, KeyError):
        pass
