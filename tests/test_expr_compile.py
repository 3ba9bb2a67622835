"""Compile errors (column, caret, hints), limits, the seed's expressions, and sandbox escapes."""

import re
from pathlib import Path

import pytest

from compiler._errors import CompileError
from compiler._expr import (
    MAX_EXPRESSION_DEPTH,
    compile_condition,
    compile_expression,
    compile_value,
)
from runtime import ExpressionError, LimitExceeded
from runtime._limits import MAX_EXPRESSION_LENGTH, MAX_LIST_LENGTH, MAX_NESTING_DEPTH

SEED = Path("/work/shared/seed/background-tasks.md")


def diag(fn, *args):
    with pytest.raises(CompileError) as info:
        fn(*args)
    return info.value.diagnostics[0]


@pytest.mark.parametrize(
    "src, column, message",
    [
        ("a +", 4, "ends too early"),
        ("a b", 3, "unexpected 'b' after a complete expression"),
        ("(a", 3, "expected ')'"),
        ("[1, 2", 6, "expected ']'"),
        ("{a 1}", 4, "expected ':'"),
        ("'abc", 1, "never closed"),
        ("a = 1", 3, "after a complete expression"),
        ("a.", 3, "expected a field name"),
        ("a.0", 3, "expected a field name"),
        ("f(1)", 2, "cannot call functions"),
        ("a ? b", 6, "expected ':'"),
        ("1 < 2 < 3", 7, "do not chain"),
        ("'\\q'", 2, "unknown escape"),
        ("a # b", 3, "unexpected character '#'"),
        ("12abc", 3, "right after the number"),
        ("99999999999999999999", 1, "does not fit"),
        ("+1", 1, "unary '+'"),
        ("{a: 1, a: 2}", 8, "appears twice"),
        ("", 1, "empty expression"),
    ],
)
def test_syntax_errors_carry_column_and_caret(src, column, message):
    d = diag(compile_expression, src, "stack[0].value")
    assert message in d.message
    assert d.column == column
    assert d.path == "stack[0].value"
    lines = d.message.splitlines()
    assert lines[-1].strip() == "^" and len(lines) == 3


def test_template_errors_point_into_the_field_text():
    d = diag(compile_value, "Hello {{ user. }}", "p")
    assert d.column == 16
    d = diag(compile_value, "x {{ a ", "p")
    assert "never closed" in d.message and d.column == 3
    d = diag(compile_value, "{{ }}", "p")
    assert "empty expression" in d.message
    d = diag(compile_value, {"a": [1, "{{ 1 + }}"]}, "stack[2].body")
    assert d.path == "stack[2].body.a[1]"


def test_unknown_filter_has_a_hint():
    d = diag(compile_expression, "items|lenght", "p")
    assert d.message.startswith("unknown filter 'lenght'")
    assert d.hint == "did you mean 'length'?"
    assert d.column == 7
    d = diag(compile_expression, "items|zzzzzz", "p")
    assert "docs/filters.md" in d.hint


@pytest.mark.parametrize(
    "src, message, hint",
    [
        ("x|batch", "needs its argument 'size'", "signature: batch(size)"),
        ("x|upper(1)", "at most 0 argument", "signature: upper"),
        ("x|sort(atribute='a')", "has no argument 'atribute'", "did you mean 'attribute'?"),
        ("x|sort('a', attribute='b')", "given twice", "signature"),
        ("x|map(attribute='a', attribute='b')", "given twice", None),
        ("x|slice(a=1, 2)", "positional argument cannot follow", None),
    ],
)
def test_filter_arity_is_checked_at_compile_time(src, message, hint):
    d = diag(compile_expression, src, "p")
    assert message in d.message
    if hint:
        assert hint in d.hint


def test_keyword_arguments_fill_gaps_with_defaults():
    fn = compile_expression("x|sort(reverse=true)", "p")[0].fn
    assert fn({"x": [2, 3, 1]}) == [3, 2, 1]
    fn = compile_expression("x|date(timezone='Asia/Tokyo')", "p")[0].fn
    assert fn({"x": 0}) == "1970-01-01 09:00:00"
    fn = compile_expression("x|filter(value=2, attribute='a')", "p")[0].fn
    assert fn({"x": [{"a": 1}, {"a": 2}]}) == [{"a": 2}]


def test_expression_length_limit():
    long_src = "1" + " + 1" * (MAX_EXPRESSION_LENGTH // 4)
    d = diag(compile_expression, long_src, "p")
    assert "limit" in d.message
    # long literal text around a short template is fine
    v, _ = compile_value("x" * (MAX_EXPRESSION_LENGTH + 10) + "{{ 1 }}", "p")
    assert v.fn({}).endswith("x1")


@pytest.mark.parametrize(
    "make",
    [
        lambda n: "(" * n + "1" + ")" * n,
        lambda n: "[" * n + "]" * n,
        lambda n: "-" * n + "x",
        lambda n: "not " * n + "x",
        lambda n: "x" + " + x" * n,
        lambda n: "x" + ".a" * n,
        lambda n: "x" + "|first" * n,
        lambda n: "x" + " ?? x" * n,
        lambda n: "{a: " * n + "1" + "}" * n,
    ],
)
def test_nesting_limit_is_a_compile_error_never_a_recursion_error(make):
    compile_expression(make(MAX_EXPRESSION_DEPTH - 2), "p")
    for n in (MAX_EXPRESSION_DEPTH + 1, 3000):
        d = diag(compile_expression, make(n), "p")
        assert "nests deeper" in d.message


def test_value_nesting_limit():
    deep: dict = {}
    cur = deep
    for _ in range(MAX_NESTING_DEPTH + 5):
        cur["a"] = {}
        cur = cur["a"]
    assert "nests deeper" in diag(compile_value, deep, "p").message
    ok: list = []
    cur2 = ok
    for _ in range(MAX_NESTING_DEPTH - 2):
        cur2.append([])
        cur2 = cur2[0]
    assert compile_value(ok, "p")[0].fn({}) == ok


def test_non_json_values_are_refused():
    assert "not JSON" in diag(compile_value, {"a": {1, 2}}, "p").message
    assert "not a JSON number" in diag(compile_value, float("nan"), "p").message
    assert "keys must be text" in diag(compile_value, {1: "a"}, "p").message


# -- the seed ------------------------------------------------------------------------------


def _seed_strings():
    text = SEED.read_text()
    strings = re.findall(r'"((?:[^"\\\n]|\\.)*\{\{(?:[^"\\\n]|\\.)*)"', text)
    conditions = re.findall(r'"condition":\s*"((?:[^"\\]|\\.)*)"', text)
    return strings, conditions


def test_every_seed_expression_compiles():
    strings, conditions = _seed_strings()
    assert len(strings) >= 100 and len(conditions) == 5
    names = set()
    for s in strings:
        _, refs = compile_value(s, "seed")
        names.update(r.name for r in refs)
    for c in conditions:
        compile_condition(c, "seed")
    assert {"now", "uuid", "env", "item", "item_parent"} <= names


def test_seed_item_parent_name_on_text_fails_clearly():
    v, _ = compile_value("{{ item_parent.name }}_sync", "stack[3].operations[0].table")
    with pytest.raises(ExpressionError, match=re.escape("cannot read .name of text 'crm'")):
        v.fn({"item_parent": "crm"})
    v, _ = compile_value("{{ env[item|upper + '_API_URL'] }}", "p")
    assert v.fn({"env": {"CRM_API_URL": "https://crm"}, "item": "crm"}) == "https://crm"
    v, _ = compile_value("{{ now|date('Y-m-d') }}", "p")
    assert v.fn({"__now__": lambda: 86400 * 365}) == "1971-01-01"
    v, _ = compile_value("{{ daily_sessions|map(attribute='user_id')|unique|length }}", "p")
    assert v.fn({"daily_sessions": [{"user_id": 1}, {"user_id": 2}, {"user_id": 1}]}) == 2


# -- sandbox --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "src",
    [
        "x.__class__",
        "x.__class__.__mro__",
        "x['__class__']",
        "x.mro",
        "x.keys",
        "x.get",
        "x.__globals__",
        "x['__init__']['__globals__']",
        "scope",
        "__builtins__",
        "x.format",
    ],
)
def test_attribute_escapes_see_data_only(src):
    try:
        fn = compile_expression(src, "p")[0].fn
    except CompileError:
        return
    for value in ({}, {"a": 1}, None):
        try:
            result = fn({"x": value})
        except KeyError as exc:  # a name that is not set, like any variable
            assert exc.args[0] in ("scope", "__builtins__")
            continue
        assert result is None
    for value in ("text {0.__class__}", 1, [1], True):
        with pytest.raises((ExpressionError, KeyError)):
            fn({"x": value})


def test_format_strings_stay_text():
    assert compile_value("{{ x ~ '{0.__class__}' }}", "p")[0].fn({"x": "{x}"}) == "{x}{0.__class__}"
    assert compile_expression("'{0}'|replace('{0}', '{__class__}')", "p")[0].fn({}) == "{__class__}"


def test_names_cannot_inject_code():
    evil = "a'] or __import__('os').system('true') or scope['"
    v, refs = compile_value({"k": "{{ x }}"}, evil)
    assert v.fn({"x": 1}) == {"k": 1}
    with pytest.raises(CompileError):
        compile_expression("x['a'] ; __import__('os')", "p")


@pytest.mark.parametrize(
    "src, scope",
    [
        ("x|split('')", {"x": "a" * (MAX_LIST_LENGTH + 1)}),
        ("0|range(n)", {"n": MAX_LIST_LENGTH + 5}),
        ("x|join('y' ~ s)", {"x": [""] * 1000, "s": "z" * 20_000}),
        ("x|replace('a', s)", {"x": "a" * 100_000, "s": "b" * 200}),
        ("x|regex_replace('a', s)", {"x": "a" * 100_000, "s": "b" * 200}),
        ("x + x", {"x": "a" * 6_000_000}),
        ("x ~ x", {"x": "a" * 6_000_000}),
        ("x + x", {"x": list(range(600_000))}),
        ("x|merge(x)", {"x": list(range(600_000))}),
        ("x|flatten", {"x": [list(range(600_000))] * 2}),
        ("x * x", {"x": 2**200}),
    ],
)
def test_resource_bombs_hit_limits(src, scope):
    fn = compile_expression(src, "p")[0].fn
    with pytest.raises(LimitExceeded):
        fn(scope)
    assert compile_expression("1 + 1", "p")[0].fn({}) == 2  # the process is healthy


def test_catastrophic_regex_is_refused():
    fn = compile_expression("x|regex_match(p)", "p")[0].fn
    for pattern in ("(a+)+$", "(a*)*b", "((ab)*)+", "(?:x+y*)+z"):
        with pytest.raises(ExpressionError, match="nested quantifiers"):
            fn({"x": "a" * 40, "p": pattern})
    with pytest.raises(ExpressionError, match="at most"):
        fn({"x": "a", "p": "a" * 501})
    with pytest.raises(ExpressionError, match="invalid regular expression"):
        fn({"x": "a", "p": "(unclosed"})
    assert fn({"x": "order-123", "p": r"\d+$"}) is True


# -- generated code: the static type pass and the fast paths it allows -----------------


def _code(src):
    from compiler._expr.cache import expression_code

    return expression_code(src).code


def test_a_bounded_int_times_a_small_constant_has_no_check():
    # length gives an int of at most 63 bits; times 2 it stays far below the 256-bit limit
    code = _code("(items|length) * 2")
    assert "_mul" not in code and "__class__ is int" not in code
    assert compile_expression("(items|length) * 2", "p")[0].fn({"items": [1, 2, 3]}) == 6


def test_an_unknown_plus_a_known_int_tests_one_side_only():
    code = _code("a.b + (items|length) * 2")
    assert code.count("__class__ is int") == 1 and "_add(" in code
    fn = compile_expression("a.b + (items|length) * 2", "p")[0].fn
    assert fn({"a": {"b": 40}, "items": [1]}) == 42
    assert fn({"a": {"b": 0.5}, "items": [1]}) == 2.5  # not an int: the helper
    with pytest.raises(ExpressionError, match="cannot add boolean and number"):
        fn({"a": {"b": True}, "items": [1]})
    with pytest.raises(ExpressionError, match="cannot add text and number"):
        fn({"a": {"b": "x"}, "items": []})


def test_a_number_compared_tests_only_the_other_side():
    code = _code("(now - stats.started_at) > config.max_time")
    assert "_NUM" not in code and "_gt(" in code
    fn = compile_expression("(now - stats.started_at) > config.max_time", "p")[0].fn
    scope = {"stats": {"started_at": 100.0}, "config": {"max_time": 10}, "__now__": lambda: 120.5}
    assert fn(scope) is True
    scope["config"]["max_time"] = "10"
    with pytest.raises(ExpressionError, match="cannot order number and text"):
        fn(scope)


def test_now_from_an_int_clock_still_works():
    # now is tested for floats first (Unix times), but a test clock may give ints
    fn = compile_expression("now - x", "p")[0].fn
    assert fn({"x": 5, "__now__": lambda: 12}) == 7
    assert type(fn({"x": 5, "__now__": lambda: 12})) is int
    assert fn({"x": 0.5, "__now__": lambda: 12}) == 11.5
    with pytest.raises(ExpressionError, match="too large"):
        fn({"x": -1.7976931348623157e308, "__now__": lambda: 1.7976931348623157e308})


def test_a_constant_added_to_a_sum_joins_its_int_branch():
    code = _code("stats.done + stats.failed + 1")
    assert "_t4 + 1 if" in code and "(_t4 := _t2 + _t3)" in code  # one range check for the whole sum
    fn = compile_expression("stats.done + stats.failed + 1", "p")[0].fn
    assert fn({"stats": {"done": 7, "failed": 1}}) == 9
    assert fn({"stats": {"done": 7.5, "failed": 1}}) == 9.5
    with pytest.raises(ExpressionError, match="cannot add text and number"):
        fn({"stats": {"done": "a", "failed": "b"}})


def test_a_name_read_on_every_path_is_read_once():
    assert _code("stats.done + stats.failed").count("scope['stats']") == 1
    assert _code("x.a ? x.b : x.c").count("scope['x']") == 1


def test_a_name_first_read_in_a_branch_is_read_again_after_it():
    # the branch may not run: its temporary would be unbound (or stale) after it
    for src, expected in (("(c ? x.a : 1) + x.b", 3), ("(c and x.a) + x.b", 2), ("(c ?? x.a) + x.b", 2)):
        assert _code(src).count("scope['x']") == 2, src
        fn = compile_expression(src, "p")[0].fn
        assert fn({"c": 0, "x": {"a": 5, "b": 2}}) == expected, src


def test_multiplying_by_a_large_folded_constant_keeps_the_limit():
    # 2**100 times a 252-bit constant used to skip the check (the bound ignored the constant's size)
    c = "9223372036854775807"
    fn = compile_expression(f"x * (({c}*{c})*({c}*{c}))", "p")[0].fn
    with pytest.raises(LimitExceeded):
        fn({"x": 2**100})
    assert fn({"x": 3}) == 3 * (int(c) * int(c)) ** 2


def test_fast_paths_are_not_taken_for_the_wrong_types():
    cases = [
        ("x + 1", {"x": True}, ExpressionError),
        ("1 + x", {"x": False}, ExpressionError),
        ("x * 2", {"x": "ab"}, ExpressionError),
        ("x * 2", {"x": [1]}, ExpressionError),
        ("x * 2", {"x": 2**255}, LimitExceeded),
        ("(items|length) * x", {"items": [1, 2], "x": 2**255}, LimitExceeded),
        ("(items|length) * x", {"items": [1, 2], "x": True}, ExpressionError),
        ("x + y", {"x": 1.7976931348623157e308, "y": 1.7976931348623157e308}, ExpressionError),
        ("x - 1", {"x": None}, ExpressionError),
        ("-(x - y)", {"x": "a", "y": 1}, ExpressionError),
        ("(x - y) < z", {"x": 1, "y": 1, "z": None}, ExpressionError),
        ("x ~ 'ab'", {"x": "y" * (10_000_000 - 1)}, LimitExceeded),
    ]
    for src, scope, error in cases:
        with pytest.raises(error):
            compile_expression(src, "p")[0].fn(scope)


def test_a_float_difference_is_compared_inside_its_float_branch():
    src = "(now - x.a) > x.b"
    code = _code(src)
    assert code.count("scope['x']") == 1 and code.count("_gt(") == 2
    fn = compile_expression(src, "p")[0].fn
    assert fn({"x": {"a": 1.5, "b": 10}, "__now__": lambda: 20.0}) is True
    assert fn({"x": {"a": 1.5, "b": 10.5}, "__now__": lambda: 2.0}) is False
    assert fn({"x": {"a": 1, "b": 10}, "__now__": lambda: 20}) is True  # an int clock: the other branch
    with pytest.raises(ExpressionError, match="cannot order number and null"):
        fn({"x": {"a": 1.5}, "__now__": lambda: 20.0})
    # the difference fails first, before the right side is read
    fn = compile_expression("(now - x) > y.z", "p")[0].fn
    with pytest.raises(ExpressionError, match="cannot subtract"):
        fn({"x": "a", "y": [1], "__now__": lambda: 20.0})
    with pytest.raises(ExpressionError, match="cannot read .z of list"):
        fn({"x": 1.0, "y": [1], "__now__": lambda: 20.0})
    with pytest.raises(ExpressionError, match="cannot read .z of list"):
        fn({"x": 1, "y": [1], "__now__": lambda: 20})
