"""Operators, precedence, names, member access and templates of the expression language."""

import math
import re
import uuid

import pytest

from compiler._errors import CompileError
from compiler._expr import (
    BUILTIN_NAMES,
    NameRef,
    compile_condition,
    compile_expression,
    compile_value,
)
from runtime import ExpressionError, LimitExceeded
from runtime._values import check_limits, json_dumps, to_text, truthy, type_name


def ev(src, **scope):
    scope.setdefault("__now__", lambda: 1_700_000_000.5)
    return compile_expression(src, "t")[0].fn(scope)


def tv(value, **scope):
    scope.setdefault("__now__", lambda: 1_700_000_000.5)
    return compile_value(value, "t")[0].fn(scope)


# -- arithmetic ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "src, expected",
    [
        ("1 + 2", 3),
        ("1 + 2.5", 3.5),
        ("'a' + 'b'", "ab"),
        ("[1] + [2]", [1, 2]),
        ("7 - 10", -3),
        ("3 * 4", 12),
        ("7 / 2", 3.5),
        ("6 / 3", 2.0),
        ("7 // 2", 3),
        ("-7 // 2", -4),
        ("7 % 3", 1),
        ("-7 % 3", 2),
        ("7.5 % 2", 1.5),
        ("-(3)", -3),
        ("'a' ~ 1 ~ null ~ true", "a1true"),
        ("1 ~ [1, 2]", "1[1,2]"),
    ],
)
def test_arithmetic(src, expected):
    result = ev(src)
    assert result == expected and type(result) is type(expected)


@pytest.mark.parametrize("x", [0, 5, -3, 2**40])
def test_arithmetic_on_names_matches_constants(x):
    assert ev("x + 1", x=x) == x + 1
    assert ev("1 + x", x=x) == x + 1
    assert ev("x - x * 2", x=x) == -x
    assert ev("x * 3", x=x) == 3 * x
    assert ev("x * y", x=x, y=x) == x * x
    assert ev("x + y", x=x, y=0.5) == x + 0.5


@pytest.mark.parametrize(
    "src, scope, message",
    [
        ("a + 1", {"a": "a"}, "cannot add text and number ('a' + 1)"),
        ("1 + a", {"a": "a"}, "cannot add number and text"),
        ("a + 1", {"a": True}, "cannot add boolean and number"),
        ("a + 1", {"a": None}, "cannot add null and number"),
        ("a - 1", {"a": [1]}, "cannot subtract list and number"),
        ("a * 2", {"a": "ab"}, "cannot multiply text and number"),
        ("a / 0", {"a": 1}, "division by zero"),
        ("a // 0", {"a": 1}, "division by zero"),
        ("a % 0", {"a": 1}, "modulo by zero"),
        ("-a", {"a": "x"}, "cannot negate text"),
        ("a < 1", {"a": "x"}, "cannot order text and number"),
        ("a >= b", {"a": [1], "b": [2]}, "cannot order list and list"),
        ("a < 1", {"a": None}, "cannot order null and number"),
        ("a * 10.0", {"a": 1e308}, "too large"),
    ],
)
def test_runtime_type_errors(src, scope, message):
    with pytest.raises(ExpressionError, match=re.escape(message)):
        ev(src, **scope)


def test_integer_growth_is_bounded():
    with pytest.raises(LimitExceeded, match="bits"):
        ev("x * x", x=2**200)
    assert ev("x * 2", x=2**100) == 2**101


# -- comparison --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "src, expected",
    [
        ("1 == 1.0", True),
        ("true == 1", False),
        ("1 == true", False),
        ("x == 1", False),
        ("0 == false", False),
        ("null == null", True),
        ("'a' == 'a'", True),
        ("'1' == 1", False),
        ("[1, {a: 2}] == [1.0, {a: 2}]", True),
        ("[true] == [1]", False),
        ("{a: 1, b: 2} == {b: 2, a: 1}", True),
        ("1 != 2", True),
        ("null != 0", True),
        ("2 < 3", True),
        ("2.5 <= 2", False),
        ("'b' > 'a'", True),
        ("'a' >= 'b'", False),
        ("2 in [1, 2]", True),
        ("2.0 in [1, 2]", True),
        ("true in [1]", False),
        ("'el' in 'hello'", True),
        ("'k' in {k: 1}", True),
        ("'z' not in {k: 1}", True),
        ("3 not in [1, 2]", True),
    ],
)
def test_comparisons(src, expected):
    assert ev(src, x=True) is expected


def test_comparisons_on_names_use_same_rules():
    for a, b in [(1, 1.0), (True, 1), (1, True), (False, 0), ([1], [1]), ({"a": True}, {"a": 1}), ("x", "x")]:
        assert ev("a == b", a=a, b=b) is ev(f"{json_dumps(a)} == {json_dumps(b)}".replace('"', "'"))
        assert ev("a != b", a=a, b=b) is not ev("a == b", a=a, b=b)
    assert ev("a == 1", a=True) is False
    assert ev("a == 1", a=1.0) is True
    assert ev("a == null", a=None) is True
    assert ev("a != null", a=0) is True
    assert ev("a < b", a=1, b=2.5) is True
    assert ev("a > 2", a=2.5) is True


def test_in_with_wrong_types():
    with pytest.raises(ExpressionError, match="in text"):
        ev("1 in 'abc'")
    with pytest.raises(ExpressionError, match="cannot look inside number"):
        ev("1 in x", x=5)


# -- logic and precedence -----------------------------------------------------------------


@pytest.mark.parametrize(
    "src, expected",
    [
        ("true ? 1 : 2", 1),
        ("0 ? 1 : 2", 2),
        ("null ?? 5", 5),
        ("0 ?? 5", 0),
        ("false or 'x'", "x"),
        ("'a' || 'b'", "a"),
        ("1 and 2", 2),
        ("0 && 2", 0),
        ("not 0", True),
        ("!1", False),
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("10 - 4 - 3", 3),
        ("2 * 3 % 4", 2),
        ("1 + 2 ~ 3", "33"),
        ("-2 * 3", -6),
        ("1 < 2 == true", None),  # comparisons do not chain: compile error (checked below)
        ("not 1 == 2", True),
        ("true or false and false", True),
        ("null ?? false or true", True),
        ("x ?? 1 ? 'a' : 'b'", "a"),
        ("false ? 1 : true ? 2 : 3", 2),
        ("[1, 2, 3]|length * 2", 6),
        ("-[1, -2]|first", -1),
    ],
)
def test_precedence(src, expected):
    if expected is None:
        with pytest.raises(CompileError, match="do not chain"):
            ev(src)
        return
    assert ev(src, x=None) == expected


def test_short_circuit_does_not_evaluate_the_other_side():
    assert ev("x ?? missing", x=1) == 1
    assert ev("true or missing") is True
    assert ev("false and missing") is False
    assert ev("x ? 1 : missing", x=True) == 1
    with pytest.raises(KeyError):
        ev("x ?? missing", x=None)


# -- names, members, indices ---------------------------------------------------------------


def test_names_and_builtins():
    assert ev("now") == 1_700_000_000.5
    u1, u2 = ev("uuid"), ev("uuid")
    assert u1 != u2 and uuid.UUID(u1).version == 4
    assert ev("env.HOME", env={"HOME": "/root"}) == "/root"
    assert ev("env.MISSING", env={"HOME": "/root"}) is None
    from types import MappingProxyType

    assert ev("env['A'] ~ env.B", env=MappingProxyType({"A": "1", "B": "2"})) == "12"
    assert {"item", "item_parent", "index", "error", "inputs", "env", "now", "uuid", "task"} == BUILTIN_NAMES


def test_unset_name_raises_key_error_of_that_name():
    with pytest.raises(KeyError) as info:
        ev("a.b + missing", a={"b": 1})
    assert info.value.args == ("missing",)


def test_member_and_index_access():
    data = {"a": {"b": [10, 20, {"c": "deep"}]}, "k": "b"}
    assert ev("a.b[2].c", **data) == "deep"
    assert ev("a[k][0]", **data) == 10
    assert ev("a.b[-1].c", **data) == "deep"
    assert ev("a.b[5]", **data) is None
    assert ev("a.b[-4]", **data) is None
    assert ev("a.b[1.0]", **data) == 20
    assert ev("a.zzz", **data) is None
    assert ev("a.zzz.yyy[0]", **data) is None
    assert ev("{x: 1}[1]") is None
    assert ev("{'1': 'one'}[1]") == "one"
    assert ev("x.in.not", x={"in": {"not": 3}}) == 3


def test_member_of_text_is_a_clear_error():
    with pytest.raises(ExpressionError, match=re.escape("cannot read .name of text 'crm'")):
        ev("item_parent.name", item_parent="crm")
    with pytest.raises(ExpressionError, match="cannot read .x of number"):
        ev("a.x", a=1)
    with pytest.raises(ExpressionError, match="cannot read .x of boolean"):
        ev("a.x", a=True)
    with pytest.raises(ExpressionError, match="cannot read .x of list"):
        ev("a.x", a=[1])
    with pytest.raises(ExpressionError, match="whole number"):
        ev("a[k]", a=[1], k="x")
    with pytest.raises(ExpressionError, match="only lists and objects"):
        ev("a[0]", a="text")


def test_filter_result_then_member():
    assert ev("rows|first.name", rows=[{"name": "a"}, {"name": "b"}]) == "a"
    assert ev("rows|last['name']|upper", rows=[{"name": "a"}, {"name": "b"}]) == "B"


def test_literals_and_escapes():
    assert ev(r"'it\'s' ~ " + '"\\"q\\""') == "it's\"q\""
    assert ev(r"'a\nb\t\u00e9'") == "a\nb\té"
    assert ev("1.5e3") == 1500.0
    assert ev("[1, 'a', null, true, {k: [2]},]") == [1, "a", None, True, {"k": [2]}]
    assert ev("{'a b': 1, c: 2}") == {"a b": 1, "c": 2}
    assert ev("{}") == {} and ev("[]") == []


# -- templates ---------------------------------------------------------------------------


def test_typed_template_keeps_the_type():
    assert tv("{{ 1 + 1 }}") == 2
    assert tv("{{ x }}", x=[1, 2]) == [1, 2]
    assert tv("  {{ null }}") == "  "
    assert tv("{{ null }}") is None
    assert tv("{{ {a: {b: 1}} }}") == {"a": {"b": 1}}
    assert tv("{{ '}}' }}") == "}}"


def test_mixed_template_gives_text():
    assert tv("n={{ n }}, f={{ f }}, z={{ z }}, b={{ b }}, l={{ l }}", n=3, f=2.0, z=None, b=False, l=[1, {"a": "x"}]) == (
        'n=3, f=2, z=, b=false, l=[1,{"a":"x"}]'
    )
    assert tv("Bearer {{ env.KEY }}", env={"KEY": "s3cret"}) == "Bearer s3cret"
    assert tv("{{ a }}{{ b }}", a="x", b=1.5) == "x1.5"
    assert tv("no templates }} here") == "no templates }} here"


def test_nested_containers_are_walked_and_keys_are_literal():
    value = {"{{ k }}": "{{ k }}", "list": [1, "{{ n + 1 }}", {"deep": "x{{ n }}"}], "flag": True, "none": None}
    assert tv(value, k="v", n=1) == {"{{ k }}": "v", "list": [1, 2, {"deep": "x1"}], "flag": True, "none": None}


def test_containers_are_fresh_on_every_evaluation():
    for raw in ({"a": [1, 2], "b": {"c": 1}}, [[1], {"x": []}], "{{ [[1], 2] }}", "{{ {a: []} }}"):
        fn = compile_value(raw, "t")[0].fn
        first = fn({})
        (first["a"] if isinstance(first, dict) else first[0]).append(99)
        assert fn({}) == (raw if not isinstance(raw, str) else ev(raw[3:-3]))
        assert fn({}) is not fn({})


def test_constant_flag_and_sources():
    v, refs = compile_value({"a": 1, "b": ["x"]}, "s")
    assert v.constant and refs == ()
    v, refs = compile_value("{{ a.b }} and {{ c }}", "s.f")
    assert not v.constant
    assert refs == (NameRef("a", "s.f", 4), NameRef("c", "s.f", 18))
    v, refs = compile_value({"x": {"y": "{{ now }}"}}, "stack[0].value")
    assert refs == (NameRef("now", "stack[0].value.x.y", 4),)
    assert not v.constant


def test_errors_in_containers_name_the_expression():
    fn = compile_value({"a": "{{ x.name }}"}, "s")[0].fn
    with pytest.raises(ExpressionError, match=re.escape("(in {{ x.name }})")):
        fn({"x": "crm"})


def test_condition():
    assert compile_condition(True, "c")[0].fn({}) is True
    assert compile_condition("true", "c")[0].fn({}) is True
    assert compile_condition("false", "c")[0].fn({}) is False
    assert compile_condition("{{ x|length > 0 }}", "c")[0].fn({"x": [1]}) is True
    assert compile_condition("x", "c")[0].fn({"x": []}) is False
    assert compile_condition(" {{ x }} ", "c")[0].fn({"x": "a"}) is True
    assert compile_condition(None, "c")[0].fn({}) is False
    with pytest.raises(CompileError, match="single expression"):
        compile_condition("{{ a }} and {{ b }}", "c")
    with pytest.raises(CompileError, match="condition must be"):
        compile_condition([1], "c")


# -- values --------------------------------------------------------------------------------


def test_value_helpers():
    for v in (None, False, 0, 0.0, "", [], {}):
        assert truthy(v) is False
    for v in (True, 1, -0.5, "0", [0], {"a": None}):
        assert truthy(v) is True
    assert [to_text(v) for v in (None, True, False, 3, 2.0, 0.1, 1e20, "x", [1, "a"], {"k": None})] == [
        "", "true", "false", "3", "2", "0.1", "1e+20", "x", '[1,"a"]', '{"k":null}',
    ]  # fmt: skip
    assert [type_name(v) for v in (None, True, 1, 1.5, "", [], {})] == [
        "null", "boolean", "number", "number", "text", "list", "object",
    ]  # fmt: skip
    assert json_dumps({"b": [1, 2.5, None], "a": "é"}) == '{"b":[1,2.5,null],"a":"é"}'
    assert not math.isnan(ev("0.1 + 0.2"))


def test_check_limits():
    check_limits({"a": [1, "x" * 10]})
    deep: list = []
    cur = deep
    for _ in range(150):
        cur.append([])
        cur = cur[0]
    with pytest.raises(LimitExceeded, match="deeper"):
        check_limits(deep)
    with pytest.raises(LimitExceeded, match="entries"):
        check_limits([0] * 1_000_001)
    with pytest.raises(LimitExceeded, match="characters"):
        check_limits({"a": "x" * 10_000_001})
