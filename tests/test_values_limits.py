"""check_limits' one-pass path for flat values agrees with the full walk on every value."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import runtime._values as values
from runtime import LimitExceeded

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=6)
nested = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=3), inner, max_size=5),
    max_leaves=25,
)


def _outcome(check, value):
    try:
        check(value)
    except LimitExceeded as exc:
        return str(exc)
    return None


@pytest.fixture
def small_limits(monkeypatch):
    """Limits small enough for generated values to cross each of them."""
    monkeypatch.setattr(values, "MAX_STRING_LENGTH", 4)
    monkeypatch.setattr(values, "MAX_LIST_LENGTH", 3)
    monkeypatch.setattr(values, "MAX_NESTING_DEPTH", 2)


@settings(max_examples=400, deadline=None)
@given(value=nested)
def test_fast_path_agrees_with_the_full_walk(value):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(values, "MAX_STRING_LENGTH", 4)
        mp.setattr(values, "MAX_LIST_LENGTH", 3)
        mp.setattr(values, "MAX_NESTING_DEPTH", 2)
        assert _outcome(values.check_limits, value) == _outcome(values._check_nested, value)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ({"a": 1, "b": "long text"}, "characters"),
        (["ok", "far too long"], "characters"),
        ([1, 2, 3, 4], "entries"),
        ({"a": [[1]]}, "deeper"),
        ({"a": [1, "x" * 9]}, "characters"),
    ],
)
def test_each_limit_is_found_past_the_first_level(small_limits, value, reason):
    with pytest.raises(LimitExceeded, match=reason):
        values.check_limits(value)


def test_flat_values_within_the_limits_pass(small_limits):
    values.check_limits({"a": 1, "b": "abc", "c": 2.5})
    values.check_limits([True, "abcd", 3])
    values.check_limits("abcd")
    values.check_limits(7)
