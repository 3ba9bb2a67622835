"""docs/filters.md cannot drift: every filter is documented and every example's result is what it returns."""

import re
from pathlib import Path

import msgspec
import pytest

from compiler._expr import compile_expression
from runtime._values import eq
from runtime.filters import FILTERS

DOC = Path(__file__).resolve().parent.parent / "docs" / "filters.md"
EXAMPLE = re.compile(r"^- `(.+)` → `(.+)`$")


def _sections():
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in DOC.read_text().splitlines():
        if line.startswith("## "):
            current = line[3:].strip()
            sections[current] = []
        elif current and (m := EXAMPLE.match(line)):
            sections[current].append((m.group(1), m.group(2)))
    return sections


def test_every_filter_is_documented_with_an_example():
    sections = _sections()
    assert set(sections) == set(FILTERS)
    for name, examples in sections.items():
        assert examples, f"{name} has no example"
        assert all(f"|{name}" in expr for expr, _ in examples), name


def test_signatures_in_the_docs_match_the_registry():
    text = DOC.read_text()
    for name, f in FILTERS.items():
        assert f"`{f.signature}` — {f.doc}" in text, name


@pytest.mark.parametrize("expr, shown", [e for ex in _sections().values() for e in ex])
def test_documented_example_result(expr, shown):
    result = compile_expression(expr, "docs")[0].fn({"__now__": lambda: 0.0})
    expected = msgspec.json.decode(shown)
    assert eq(result, expected) and type(result) is type(expected), (expr, result)
