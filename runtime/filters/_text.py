"""Filters over text: case, trimming, search and replace, splitting and joining, regular expressions.

Regular expressions run on Python's backtracking engine, which has no time
limit, so patterns are guarded: at most ``MAX_PATTERN_LENGTH`` characters and
no quantifier applied to a group that itself repeats (``(a+)+``, ``(a*)*``),
the shape behind catastrophic backtracking. Patterns are compiled once and cached.
"""

from __future__ import annotations

import functools
import re
import re._parser as sre_parse  # the stable parser behind re; sre_parse warns on import
from typing import Any

from runtime._errors import ExpressionError
from runtime._limits import MAX_STRING_LENGTH
from runtime._values import show
from runtime.filters._registry import check_list, check_text, need_list, need_text, register, texts

__all__ = ("MAX_PATTERN_LENGTH",)

#: Longest regular expression a filter accepts (characters).
MAX_PATTERN_LENGTH = 500


@register("upper")
def f_upper(value):
    """The text in upper case."""
    return need_text("upper", value).upper()


@register("lower")
def f_lower(value):
    """The text in lower case."""
    return need_text("lower", value).lower()


@register("capitalize")
def f_capitalize(value):
    """The text with its first character upper case and the rest lower case."""
    return need_text("capitalize", value).capitalize()


@register("trim")
def f_trim(value, characters=None):
    """The text without leading and trailing whitespace (or the given characters)."""
    text = need_text("trim", value)
    if characters is None:
        return text.strip()
    return text.strip(need_text("trim", characters, "its characters"))


@register("replace")
def f_replace(value, search, replacement):
    """The text with every occurrence of search replaced."""
    text = need_text("replace", value)
    a = need_text("replace", search, "its search text")
    b = need_text("replace", replacement, "its replacement")
    if a == "":
        raise ExpressionError("filter 'replace' needs a non-empty search text")
    if len(b) > len(a):
        check_text("replace", len(text) + text.count(a) * (len(b) - len(a)))
    return text.replace(a, b)


@register("starts_with")
def f_starts_with(value, prefix):
    """True when the text begins with prefix."""
    return need_text("starts_with", value).startswith(need_text("starts_with", prefix, "its prefix"))


@register("ends_with")
def f_ends_with(value, suffix):
    """True when the text ends with suffix."""
    return need_text("ends_with", value).endswith(need_text("ends_with", suffix, "its suffix"))


@register("split")
def f_split(value, separator=","):
    """The text cut at each separator into a list of texts ("" cuts into characters)."""
    text = need_text("split", value)
    sep = need_text("split", separator, "its separator")
    if sep == "":
        check_list("split", len(text))
        return list(text)
    check_list("split", text.count(sep) + 1)
    return text.split(sep)


@register("join")
def f_join(value, separator=""):
    """The entries of a list as text (null as "", lists/objects as JSON), separated by separator."""
    items = need_list("join", value)
    sep = need_text("join", separator, "its separator")
    parts = texts("join", items, len(sep))
    check_text("join", sum(map(len, parts)) + len(sep) * max(0, len(parts) - 1))
    return sep.join(parts)


# -- regular expressions -------------------------------------------------------------

_REPEATS = (sre_parse.MAX_REPEAT, sre_parse.MIN_REPEAT, sre_parse.POSSESSIVE_REPEAT)


def _repeats_inside(items: Any) -> bool:
    """True when a parsed pattern contains a repeat that can match more than once."""
    for op, arg in items:
        if op in _REPEATS:
            if arg[1] > 1:
                return True
            if _repeats_inside(arg[2]):
                return True
        elif op is sre_parse.SUBPATTERN:
            if _repeats_inside(arg[3]):
                return True
        elif op is sre_parse.BRANCH:
            if any(_repeats_inside(b) for b in arg[1]):
                return True
        elif op in (sre_parse.ASSERT, sre_parse.ASSERT_NOT):
            if _repeats_inside(arg[1]):
                return True
    return False


def _nested_repeat(items: Any) -> bool:
    for op, arg in items:
        if op in _REPEATS:
            if arg[1] > 1 and _repeats_inside(arg[2]):
                return True
            if _nested_repeat(arg[2]):
                return True
        elif op is sre_parse.SUBPATTERN:
            if _nested_repeat(arg[3]):
                return True
        elif op is sre_parse.BRANCH:
            if any(_nested_repeat(b) for b in arg[1]):
                return True
        elif op in (sre_parse.ASSERT, sre_parse.ASSERT_NOT):
            if _nested_repeat(arg[1]):
                return True
    return False


@functools.lru_cache(maxsize=256)
def _compile(pattern: str) -> re.Pattern[str]:
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise ExpressionError(f"a regular expression may have at most {MAX_PATTERN_LENGTH} characters, this one has {len(pattern)}")
    try:
        parsed = sre_parse.parse(pattern)
        compiled = re.compile(pattern)
    except (re.error, OverflowError, RecursionError) as exc:
        raise ExpressionError(f"invalid regular expression {show(pattern)}: {exc}") from None
    if _nested_repeat(parsed.data):
        raise ExpressionError(
            f"regular expression {show(pattern)} repeats a group that itself repeats, "
            "which can take exponential time; rewrite it without nested quantifiers"
        )
    return compiled


def _pattern(name: str, pattern: Any) -> re.Pattern[str]:
    try:
        return _compile(need_text(name, pattern, "its pattern"))
    except ExpressionError as exc:
        if exc.message.startswith("filter"):
            raise
        raise ExpressionError(f"filter '{name}': {exc.message}") from None


@register("regex_match")
def f_regex_match(value, pattern):
    """True when the pattern matches somewhere in the text."""
    return _pattern("regex_match", pattern).search(need_text("regex_match", value)) is not None


@register("regex_find_all")
def f_regex_find_all(value, pattern):
    """Every match of the pattern in the text (the first group's text when the pattern has groups)."""
    rx = _pattern("regex_find_all", pattern)
    out: list[Any] = []
    for m in rx.finditer(need_text("regex_find_all", value)):
        out.append(m.group(1) if rx.groups else m.group(0))
        if len(out) > 1000 and len(out) % 1000 == 0:
            check_list("regex_find_all", len(out))
    return out


@register("regex_replace")
def f_regex_replace(value, pattern, replacement):
    """The text with every match replaced; \\1 or \\g<name> in the replacement insert groups."""
    rx = _pattern("regex_replace", pattern)
    text = need_text("regex_replace", value)
    repl = need_text("regex_replace", replacement, "its replacement")
    budget = [MAX_STRING_LENGTH - len(text)]

    def expand(m: re.Match[str]) -> str:
        out = m.expand(repl)
        budget[0] -= len(out)
        if budget[0] < 0:
            check_text("regex_replace", MAX_STRING_LENGTH + 1)
        return out

    try:
        result = rx.sub(expand, text)
    except (re.error, IndexError) as exc:
        raise ExpressionError(f"invalid replacement {show(repl)} for filter 'regex_replace': {exc}") from None
    check_text("regex_replace", len(result))
    return result

