"""Each filter: wrong input gives a clear ExpressionError; edge cases beyond the documented examples."""

import pytest

from compiler._expr import compile_expression
from runtime import ExpressionError
from runtime.filters import FILTERS


def ev(src, **scope):
    scope.setdefault("__now__", lambda: 0.0)
    return compile_expression(src, "t")[0].fn(scope)


WRONG = {
    "abs": ("x|abs", "a", "needs a number"),
    "append": ("x|append(1)", "a", "needs a list"),
    "average": ("x|average", [1, "a"], "adds numbers only"),
    "base64_decode": ("x|base64_decode", "%%%", "not base64"),
    "base64_encode": ("x|base64_encode", [1], "needs text"),
    "batch": ("x|batch(0)", [1], "at least 1"),
    "capitalize": ("x|capitalize", 1, "needs text"),
    "ceil": ("x|ceil", None, "needs a number"),
    "contains": ("x|contains(1)", 5, "needs a list, text or object"),
    "count": ("x|count", 5, "needs a list, text or object"),
    "date": ("x|date('Y', 'Mars/Base')", 0, "unknown timezone"),
    "date_add": ("x|date_add(1, 'fortnight')", 0, "does not know the unit"),
    "date_diff": ("x|date_diff(0, 'months')", 0, "cannot count months"),
    "default": None,
    "ends_with": ("x|ends_with(1)", "a", "needs text as its suffix"),
    "filter": ("x|filter('a')", {"a": 1}, "needs a list"),
    "first": ("x|first", 3, "needs a list"),
    "flatten": ("x|flatten", "abc", "needs a list"),
    "floor": ("x|floor", "1.5", "needs a number"),
    "group_by": ("x|group_by(1)", [], "needs text as its key"),
    "hmac_sha256": ("x|hmac_sha256(k)", [1], "needs text"),
    "index_of": ("x|index_of('a')", None, "needs a list"),
    "is_empty": None,
    "iso": ("x|iso", "yesterday", "cannot read a date"),
    "join": ("x|join(',')", "abc", "needs a list"),
    "json_decode": ("x|json_decode", "{nope", "not JSON"),
    "json_encode": None,
    "keys": ("x|keys", [1], "needs an object"),
    "last": ("x|last", {}, "needs a list"),
    "length": ("x|length", None, "needs a list, text or object, got null"),
    "limit": ("x|limit(-1)", [1], "at least 0"),
    "lower": ("x|lower", 1, "needs text"),
    "map": ("x|map('a')", [1], "cannot read .a of number"),
    "max": ("x|max", [1, "a"], "cannot order a mix"),
    "merge": ("x|merge([1])", {"a": 1}, "needs an object as its argument"),
    "min": ("x|min", [[1]], "orders numbers or texts only"),
    "offset": ("x|offset('a')", [1], "whole number"),
    "pick": ("x|pick('a')", [1], "needs an object"),
    "range": ("x|range(5, 0)", 1, "step other than 0"),
    "regex_find_all": ("x|regex_find_all('[')", "a", "invalid regular expression"),
    "regex_match": ("x|regex_match(1)", "a", "needs text as its pattern"),
    "regex_replace": ("x|regex_replace('a', '\\\\9')", "a", "invalid replacement"),
    "replace": ("x|replace('', 'b')", "a", "non-empty search"),
    "reverse": ("x|reverse", 1, "needs a list"),
    "round": ("x|round", "1", "needs a number"),
    "sha256": ("x|sha256", None, "needs text"),
    "slice": ("x|slice(0.5)", [1], "whole number"),
    "sort": ("x|sort", [1, "a"], "cannot order a mix of number and text"),
    "split": ("x|split", 5, "needs text"),
    "starts_with": ("x|starts_with('a')", None, "needs text"),
    "sum": ("x|sum", [True], "adds numbers only"),
    "to_bool": ("x|to_bool", "maybe", "cannot read true or false"),
    "to_int": ("x|to_int", "12abc", "cannot read a number"),
    "to_number": ("x|to_number", [1], "cannot convert list"),
    "to_text": None,
    "to_timestamp": ("x|to_timestamp", [1], "needs Unix seconds or an ISO 8601 text"),
    "trim": ("x|trim", 1, "needs text"),
    "type": None,
    "unique": ("x|unique", "aab", "needs a list"),
    "unset": ("x|unset('a')", "a", "needs an object"),
    "upper": ("x|upper", 1, "needs text"),
    "url_decode": ("x|url_decode", "%ff", "not UTF-8"),
    "url_encode": ("x|url_encode", [1], "needs text"),
    "values": ("x|values", None, "needs an object"),
}


def test_every_filter_has_a_wrong_input_case():
    assert set(WRONG) == set(FILTERS)


@pytest.mark.parametrize("name", sorted(n for n, case in WRONG.items() if case))
def test_wrong_input_is_a_clear_error(name):
    src, x, message = WRONG[name]
    with pytest.raises(ExpressionError, match=message) as info:
        ev(src, x=x, k="key")
    assert f"'{name}'" in str(info.value) or "cannot" in str(info.value) or "timezone" in str(info.value)


@pytest.mark.parametrize("name", sorted(n for n, case in WRONG.items() if not case))
def test_filters_that_accept_anything(name):
    for x in (None, True, 0, 1.5, "a", [1], {"a": [None]}):
        ev(f"x|{name}" + ("(1)" if FILTERS[name].required else ""), x=x)


def test_filters_do_not_change_their_input():
    x = [{"p": "b", "n": 2}, {"p": "a", "n": 1}]
    snapshot = repr(x)
    for f in ("sort('p')", "reverse", "group_by('p')", "map('n')", "filter('p', 'a')", "batch(1)", "unique",
              "limit(1)", "offset(1)", "append(1)", "merge([1])", "flatten", "slice(0)"):  # fmt: skip
        result = ev(f"x|{f}", x=x)
        assert result is not x
    assert repr(x) == snapshot
    obj = {"a": 1, "b": 2}
    assert ev("x|merge({c: 3})", x=obj) == {"a": 1, "b": 2, "c": 3} and obj == {"a": 1, "b": 2}
    assert ev("x|unset('a')", x=obj) == {"b": 2} and obj == {"a": 1, "b": 2}


def test_collections_edges():
    assert ev("x|sort('n')", x=[{"n": 2}, {"n": None}, {}, {"n": 1}]) == [{"n": None}, {}, {"n": 1}, {"n": 2}]
    assert ev("x|sort('n', true)", x=[{"n": 1, "i": 0}, {"n": 2}, {"n": 1, "i": 1}]) == [{"n": 2}, {"n": 1, "i": 0}, {"n": 1, "i": 1}]
    groups = ev("x|group_by('k')", x=[{"k": 1}, {"k": "1"}, {"k": 1.0}, {"k": None}])
    assert [(g["key"], g["count"]) for g in groups] == [(1, 2), ("1", 1), (None, 1)]
    assert ev("x|unique", x=[{"a": 1, "b": 2}, {"b": 2, "a": 1}, [1], [1]]) == [{"a": 1, "b": 2}, [1]]
    assert ev("x|batch(3)", x=[]) == []
    assert ev("x|sum", x=[]) == 0 and ev("x|min", x=[]) is None and ev("x|max", x=[None]) is None
    assert ev("x|map('a.b')", x=[{"a": {"b": 1}}, {"a": None}, {}]) == [1, None, None]
    assert ev("5|range(1, -2)") == [5, 3, 1]
    assert ev("x|index_of({a: 1})", x=[{"a": 1.0}]) == 0
    assert ev("x|contains(true)", x=[1]) is False
    assert ev("x|first", x="") is None


def test_text_edges():
    assert ev("x|split('')", x="ab") == ["a", "b"]
    assert ev("x|join", x=[[1], {"a": None}]) == '[1]{"a":null}'
    assert ev("x|regex_find_all('(\\\\w)\\\\d')", x="a1 b2") == ["a", "b"]
    assert ev("x|regex_replace('(?P<w>o)', '0')", x="foo") == "f00"
    assert ev("x|trim", x="\t x \n") == "x"


def test_number_edges():
    assert ev("2.675|round(2)") == 2.68  # decimal rounding of the written value, not binary
    assert ev("1234.5|round(-2)") == 1200
    assert ev("x|round", x=7) == 7
    assert ev("x|to_number", x=" 12 ") == 12
    assert ev("x|to_number", x=None) == 0
    with pytest.raises(ExpressionError):
        ev("x|to_number", x="nan")
    with pytest.raises(ExpressionError):
        ev("x|to_number", x="1e999")
    assert ev("x|to_int", x="2.9") == 2
    assert ev("x|to_bool", x=" TRUE ") is True and ev("x|to_bool", x=[]) is False


def test_date_edges():
    # spring forward in Paris: 2025-03-30 02:30 does not exist; adding a calendar day keeps the wall clock
    assert ev("x|date_add(1, 'day', 'Europe/Paris')|iso('Europe/Paris')", x="2025-03-29T12:00:00+01:00") == "2025-03-30T12:00:00+02:00"
    assert ev("x|date_add(1, 'year')|iso", x="2024-02-29T00:00:00Z") == "2025-02-28T00:00:00Z"
    assert ev("x|date_add(-1, 'months')|iso", x="2025-03-31T10:00:00Z") == "2025-02-28T10:00:00Z"
    assert ev("x|date('N jS z t L W o y a A g G h U', 'UTC')", x=0) == "4 1st 0 31 0 01 1970 70 am AM 12 0 12 0"
    assert ev("x|date('c')", x=0) == "1970-01-01T00:00:00+00:00"
    assert ev("x|date('r', 'Asia/Kolkata')", x=0) == "Thu, 01 Jan 1970 05:30:00 +0530"
    assert ev("x|date('\\\\Y Y')", x=0) == "Y 1970"
    assert ev("x|to_timestamp", x="2025-01-16") == 1736985600
    assert ev("x|date_diff('2025-01-01T00:00:00Z', 'days')", x="2025-01-16T12:00:00Z") == 15.5
    with pytest.raises(ExpressionError, match="out of range"):
        ev("x|date", x=1e20)
    with pytest.raises(ExpressionError, match="whole months"):
        ev("x|date_add(1.5, 'months')", x=0)


def test_encoding_edges():
    assert ev("x|base64_decode", x="aGk") == "hi"  # missing padding is accepted
    with pytest.raises(ExpressionError, match="UTF-8"):
        ev("x|base64_decode", x="//8=")
    assert ev("x|json_decode", x="[1, 2.5, null]") == [1, 2.5, None]
    assert ev("x|json_encode|json_decode", x={"a": [1, "é"]}) == {"a": [1, "é"]}
    assert ev("x|sha256", x=5) == ev("'5'|sha256")
