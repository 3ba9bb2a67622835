"""The filter library of the expression language: ``value|name(args)``.

``FILTERS`` maps each name to a ``Filter`` (function, parameter names, how
many are required, one-line description). The compiler checks names and
arity against it at load time; the functions check types at run time and
raise only ``ExpressionError`` or ``LimitExceeded``. docs/filters.md lists
every filter with an example.
"""

from collections.abc import Mapping
from types import MappingProxyType

from runtime.filters import _collections, _dates, _encoding, _numbers, _text  # noqa: F401 - they register
from runtime.filters._registry import ABSENT, REGISTRY, Filter
from runtime.filters._text import MAX_PATTERN_LENGTH

FILTERS: Mapping[str, Filter] = MappingProxyType(dict(sorted(REGISTRY.items())))

__all__ = ("ABSENT", "FILTERS", "Filter", "MAX_PATTERN_LENGTH")
