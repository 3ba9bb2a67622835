"""Sandbox limits: named so that tests can probe them at their edge."""

__all__ = (
    "MAX_STRING_LENGTH",
    "MAX_LIST_LENGTH",
    "MAX_NESTING_DEPTH",
    "MAX_EXPRESSION_LENGTH",
    "INSTRUCTIONS_PER_YIELD",
    "NATIVE_INSTRUCTIONS_PER_YIELD",
    "MAX_CALL_DEPTH",
)

#: Longest text an expression or filter may build (characters).
MAX_STRING_LENGTH = 10_000_000
#: Longest list (or object) an expression or filter may build.
MAX_LIST_LENGTH = 1_000_000
#: Deepest nesting of lists and objects a value may have.
MAX_NESTING_DEPTH = 100
#: Longest expression source the compiler accepts (characters).
MAX_EXPRESSION_LENGTH = 20_000
#: A run gives the event loop a turn after this many instructions.
INSTRUCTIONS_PER_YIELD = 1_000
#: The same for a stack running as generated Python (compiler/_native.py), which
#: counts the same instruction weights: with no dispatch each costs about a
#: quarter, so four times the count is about the same slice of time (measured:
#: a yield every ~0.12 ms in bench_vm's loop, far inside "a few milliseconds").
NATIVE_INSTRUCTIONS_PER_YIELD = 4 * INSTRUCTIONS_PER_YIELD
#: How deeply custom functions may call each other.
MAX_CALL_DEPTH = 64
