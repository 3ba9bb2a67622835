"""Limits of values: ints stay within MAX_INT_BITS under + and - (helpers and generated code alike),
no float result is infinite (operators, filters, constant folding), surrogate escapes, big literals."""

import pytest
from test_native_diff import cv, same

from compiler._errors import CompileError
from compiler._expr import compile_expression
from runtime import ExpressionError, LimitExceeded
from runtime import _values as V

TOP = 2**256 - 1  # the largest int within the limit

# every shape of + and - the code generator has a separate path for
SHAPES = [
    ("x + y", lambda x, y: x + y),
    ("x - y", lambda x, y: x - y),
    ("o.a + o.b", lambda x, y: x + y),
    ("o.a - o.b", lambda x, y: x - y),
    ("o.a + o.b + 1", lambda x, y: x + y + 1),
    ("1 + (o.a + o.b)", lambda x, y: 1 + x + y),
    ("x + y - 1", lambda x, y: x + y - 1),
    ("x + 1", lambda x, y: x + 1),
    ("1 + x", lambda x, y: 1 + x),
    ("x - 1", lambda x, y: x - 1),
    ("0 - x - 1", lambda x, y: -x - 1),
    ("x + (l|length)", lambda x, y: x + 2),
    ("(l|length) + x", lambda x, y: 2 + x),
    ("x - (l|length) * 2", lambda x, y: x - 4),
    ("x + y * 1", lambda x, y: x + y),
    ("now + x", lambda x, y: 5 + x),
    ("(now - x) > y", lambda x, y: 5 - x > y),
    ("(x + x) - x", lambda x, y: x),
]


@pytest.mark.parametrize("x,y", [(TOP, 0), (TOP, 1), (-TOP, -1), (-TOP, 1), (TOP - 1, 1), (3, 4), (-TOP, TOP), (2**30, 2**40), (-(2**30) + 1, -1)])
@pytest.mark.parametrize("src,ref", SHAPES, ids=[s for s, _ in SHAPES])
def test_int_sums_stay_within_the_limit(src, ref, x, y):
    scope = {"x": x, "y": y, "o": {"a": x, "b": y}, "l": [1, 2], "__now__": lambda: 5}
    fn = compile_expression(src, "p")[0].fn
    # the reference: every intermediate result within the limit, else LimitExceeded
    inner = {"(x + x) - x": x + x, "o.a + o.b + 1": x + y, "1 + (o.a + o.b)": x + y, "x + y - 1": x + y,
             "0 - x - 1": -x, "(now - x) > y": 5 - x}.get(src, 0)
    expected = ref(x, y)
    over = not (V.fits_int(inner) and (type(expected) is bool or V.fits_int(expected)))
    if over:
        with pytest.raises(LimitExceeded, match="more than 256 bits"):
            fn(scope)
    else:
        assert fn(scope) == expected


def test_the_helpers_refuse_ints_past_the_limit():
    assert V.add(TOP - 1, 1) == TOP and V.sub(-TOP + 1, 1) == -TOP
    for op, a, b in [(V.add, TOP, 1), (V.sub, -TOP, 1), (V.add, -TOP, -TOP), (V.sub, TOP, -1)]:
        with pytest.raises(LimitExceeded, match="more than 256 bits"):
            op(a, b)
    with pytest.raises(ExpressionError, match="too large"):
        V.add(1e308, 1e308)  # the helper update_variable's increment uses covers floats too


def test_doubling_in_a_loop_stops_at_the_limit_vm_and_native():
    loop = {"function": "loop", "times": 20000,
            "operations": [{"function": "update_variable", "name": "a", "operation": "set", "value": "{{ a + a }}"}]}
    out = same([cv("a", 1), loop, {"function": "return", "value": "{{ a ~ '' }}"}])
    assert out[0] == "failed" and out[1]["type"] == "LimitExceeded", out


@pytest.mark.parametrize("src", ["big|sum", "big|average", "[1e308, 1e308]|sum", "[-1e308, -1e308]|average",
                                 "{a: [1e308, 1e308]|sum}", "ints|sum"])
def test_no_filter_gives_an_infinite_or_oversized_number_vm_and_native(src):
    out = same([cv("big", [1e308, 1e308]), cv("ints", [TOP, TOP]), {"function": "return", "value": "{{ " + src + " }}"}])
    assert out[0] == "failed" and "too large" in out[1]["message"], out


def test_round_of_a_huge_float_is_refused():
    with pytest.raises(LimitExceeded, match="more than 256 bits"):
        compile_expression("1e300|round", "p")[0].fn({})


def test_a_constant_failing_with_a_foreign_exception_is_left_for_run_time():
    from compiler._expr.fold import Folder
    from compiler._expr.nodes import Name

    node = Name(0, "x")
    assert Folder("x", "p")._try(node, lambda: "\ud83d".encode()) is node
    assert Folder("x", "p")._try(node, lambda: [float("inf")]) is node  # never folded: no literal for it


def test_surrogate_escapes():
    fn = compile_expression("'\\ud83d\\ude00'", "p")[0].fn
    assert fn({}) == "\U0001f600" and len(fn({})) == 1
    assert compile_expression("'\\ud83d\\ude00'|sha256", "p")[0].fn({}) == compile_expression("'😀'|sha256", "p")[0].fn({})
    for bad, col in [("'ab\\ud83d'", 4), ("'\\ude00\\ud83d'", 2), ("'\\ud83d\\u0041'", 2)]:
        with pytest.raises(CompileError, match="half of a UTF-16 surrogate pair") as e:
            compile_expression(bad, "p")
        assert e.value.diagnostics[0].column == col


def test_the_smallest_64_bit_literal_and_the_hint_for_big_ones():
    assert compile_expression("-9223372036854775808", "p")[0].fn({}) == -(2**63)
    with pytest.raises(CompileError) as e:
        compile_expression("9223372036854775808", "p")
    assert e.value.diagnostics[0].hint == "write it as a float: 9.223372036854776e18"
    with pytest.raises(CompileError) as e:
        compile_expression("123456789012345678901234", "p")
    assert e.value.diagnostics[0].hint == "write it as a float: 1.2345678901234569e23"
