"""Property tests: compiled code against a tiny reference evaluator, and fuzzing the compiler."""

import math

import pytest
from hypothesis import given, settings
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


# -- the inlined fast paths against the helpers they stand in for ----------------------
#
# codegen inlines int/float/text/dict fast paths and, where its static type pass
# knows a side's type (``length`` gives an int of at most 63 bits, a difference is
# a number...), drops tests. Whatever path the generated code takes, it must give
# what the helpers of runtime._values give: the same value of the same type, or the
# same error with the same message.

from runtime import _values as V  # noqa: E402
from runtime._limits import MAX_LIST_LENGTH, MAX_STRING_LENGTH  # noqa: E402

FMAX = 1.7976931348623157e308
EDGE_INTS = [0, 1, -1, 2, 2**30, 2**62, 2**63 - 1, -(2**63), 2**64, 2**127 - 1, 2**127, -(2**127), 2**128,
             2**192, 2**254, 2**255 - 1, 2**255, -(2**255), 2**256 - 1, 2**256, 2**300]  # fmt: skip
EDGE_FLOATS = [0.0, -0.0, 0.5, -2.5, 1e300, -1e300, 1e308, FMAX, -FMAX, 8.98846567431158e307, 1_700_000_000.25]
LONG_TEXT = "x" * (MAX_STRING_LENGTH - 3)
LONG_LIST = [0] * MAX_LIST_LENGTH
VALUES = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from(EDGE_INTS).flatmap(lambda i: st.sampled_from([i, -i, i + 1, i - 1])),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(EDGE_FLOATS),
    st.booleans(),
    st.none(),
    st.text(max_size=5),
    st.sampled_from([LONG_TEXT, LONG_TEXT + "yz", LONG_LIST]),
    st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(st.sampled_from("abc"), st.integers(-3, 3), max_size=2),
)
#: a folded constant of 252 bits (int literals stop at 64 bits; products of them fold)
BIG = "((9223372036854775807 * 9223372036854775807) * (9223372036854775807 * 9223372036854775807))"
BIG_VALUE = (9223372036854775807 * 9223372036854775807) ** 2


from runtime.filters import FILTERS  # noqa: E402

_length = FILTERS["length"].fn
_count = FILTERS["count"].fn

# (expression, the same through the helpers); x, y, z and l come from VALUES, n is now
FAST_PATHS = [
    ("x + y", lambda s: V.add(s["x"], s["y"])),
    ("x - y", lambda s: V.sub(s["x"], s["y"])),
    ("x * y", lambda s: V.mul(s["x"], s["y"])),
    ("x + 1", lambda s: V.add(s["x"], 1)),
    ("1 - x", lambda s: V.sub(1, s["x"])),
    ("x * 3", lambda s: V.mul(s["x"], 3)),
    ("3 * x", lambda s: V.mul(3, s["x"])),
    (f"x * {BIG}", lambda s: V.mul(s["x"], BIG_VALUE)),
    ("x * 9223372036854775807", lambda s: V.mul(s["x"], 9223372036854775807)),
    ("(l|length) * 2", lambda s: V.mul(_length(s["l"]), 2)),
    ("(l|length) * x", lambda s: V.mul(_length(s["l"]), s["x"])),
    ("x * (l|count)", lambda s: V.mul(s["x"], _count(s["l"]))),
    ("x + (l|length) * 2", lambda s: V.add(s["x"], V.mul(_length(s["l"]), 2))),
    ("(l|length) - x", lambda s: V.sub(_length(s["l"]), s["x"])),
    ("(l|length) + 2.5", lambda s: V.add(_length(s["l"]), 2.5)),
    ("x + y + 1", lambda s: V.add(V.add(s["x"], s["y"]), 1)),
    ("1 - (x - y)", lambda s: V.sub(1, V.sub(s["x"], s["y"]))),
    ("x - y - 2", lambda s: V.sub(V.sub(s["x"], s["y"]), 2)),
    ("now - x", lambda s: V.sub(s["__now__"](), s["x"])),
    ("x + now", lambda s: V.add(s["x"], s["__now__"]())),
    ("(now - x) > y", lambda s: V.gt(V.sub(s["__now__"](), s["x"]), s["y"])),
    ("(x - y) <= z", lambda s: V.le(V.sub(s["x"], s["y"]), s["z"])),
    ("z < (x * 2)", lambda s: V.lt(s["z"], V.mul(s["x"], 2))),
    ("(l|length) >= x", lambda s: V.ge(_length(s["l"]), s["x"])),
    ("x < 5", lambda s: V.lt(s["x"], 5)),
    ("x < y", lambda s: V.lt(s["x"], s["y"])),
    ("(x - y) == z", lambda s: V.eq(V.sub(s["x"], s["y"]), s["z"])),
    ("(x - y) != (l|length)", lambda s: V.ne(V.sub(s["x"], s["y"]), _length(s["l"]))),
    ("x == y", lambda s: V.eq(s["x"], s["y"])),
    ("x == 1", lambda s: V.eq(s["x"], 1)),
    ("'a' ~ x", lambda s: V.concat("a", s["x"])),
    ("x ~ 'ab'", lambda s: V.concat(s["x"], "ab")),
    ("-(x - y)", lambda s: V.neg(V.sub(s["x"], s["y"]))),
    ("-x", lambda s: V.neg(s["x"])),
    ("x % 3", lambda s: V.mod(s["x"], 3)),
    ("(l|length) % 3", lambda s: V.mod(_length(s["l"]), 3)),
    ("(x ?? 2) + 1", lambda s: V.add(2 if s["x"] is None else s["x"], 1)),
    ("(z ? x : 1) * 2", lambda s: V.mul(s["x"] if s["z"] else 1, 2)),
]


def _outcome(fn, scope):
    try:
        r = fn(scope)
    except (ExpressionError, LimitExceeded) as exc:
        return ("error", type(exc).__name__, exc.message)
    return ("value", type(r).__name__, repr(r) if type(r) is float else r)


@pytest.mark.parametrize("src, helpers", FAST_PATHS, ids=[s for s, _ in FAST_PATHS])
@settings(max_examples=100)
@given(x=VALUES, y=VALUES, z=VALUES, items=VALUES, now=VALUES)
def test_fast_paths_agree_with_the_helpers(src, helpers, x, y, z, items, now):
    scope = {"x": x, "y": y, "z": z, "l": items, "__now__": lambda: now}
    fn = compile_expression(src, "p")[0].fn
    assert _outcome(fn, dict(scope)) == _outcome(helpers, scope), src


FIELD_PAIRS = [
    ("x.a + x.b", lambda s: V.add(V.member(s["x"], "a"), V.member(s["x"], "b"))),
    ("x.a - x['b'] + 1", lambda s: V.add(V.sub(V.member(s["x"], "a"), V.member(s["x"], "b")), 1)),
    ("x.c + (x.a + x.b)", lambda s: V.add(V.member(s["x"], "c"), V.add(V.member(s["x"], "a"), V.member(s["x"], "b")))),
    ("(y ? x.a - x.b : 0) + x.c", lambda s: V.add(V.sub(V.member(s["x"], "a"), V.member(s["x"], "b")) if s["y"] else 0,
                                                  V.member(s["x"], "c"))),
]  # fmt: skip


class _Env(dict):
    """Not a dict for ``.__class__ is dict``: the checked path for any read-only mapping."""


@pytest.mark.parametrize("src, helpers", FIELD_PAIRS, ids=[s for s, _ in FIELD_PAIRS])
@settings(max_examples=150)
@given(
    x=st.one_of(
        st.dictionaries(st.sampled_from("abc"), VALUES, max_size=3),
        st.dictionaries(st.sampled_from("abc"), VALUES, max_size=3).map(_Env),
        VALUES,
    ),
    y=st.booleans(),
)
def test_field_pairs_agree_with_the_helpers(src, helpers, x, y):
    # x.a +/- x.b tests "x is a dict" once and both fields together; anything else takes the usual code
    scope = {"x": x, "y": y}
    fn = compile_expression(src, "p")[0].fn
    assert _outcome(fn, dict(scope)) == _outcome(helpers, scope), src
