"""Sandbox limits: named so that tests can probe them at their edge."""

__all__ = (
    "MAX_STRING_LENGTH",
    "MAX_LIST_LENGTH",
    "MAX_NESTING_DEPTH",
    "MAX_VALUE_NODES",
    "MAX_VALUE_CHARS",
    "MAX_EXPRESSION_LENGTH",
    "YIELD_SLICE",
    "INSTRUCTIONS_PER_CHECK",
    "NATIVE_INSTRUCTIONS_PER_CHECK",
    "FILTER_WEIGHT",
    "MAX_CALL_DEPTH",
)

#: Longest text an expression or filter may build (characters).
MAX_STRING_LENGTH = 10_000_000
#: Longest list (or object) an expression or filter may build.
MAX_LIST_LENGTH = 1_000_000
#: Deepest nesting of lists and objects a value may have.
MAX_NESTING_DEPTH = 100
#: Most entries (list items and object fields, at every level) a value may have
#: when written out as JSON. Values may share parts: ``[s, s]`` holds ``s``
#: twice without copying it, so 40 rounds of it make a value of 41 lists in
#: memory that writes out to 2**40 entries. Every value is measured as written,
#: shared parts counted each time they appear (but measured once), before
#: anything writes or walks it as a tree. 50 million is far beyond any value a
#: run builds from distinct parts (a list at the list limit of objects of 49
#: fields, several GB in memory) and writes out in well under a second.
MAX_VALUE_NODES = 50_000_000
#: Most characters of text (texts and object keys, counted each time they are
#: written) a value may have when written out: the same for a text repeated
#: through sharing. 20 texts at the text limit, or a list at the list limit of
#: objects with 200 characters each, fit.
MAX_VALUE_CHARS = 200_000_000
#: Longest expression source the compiler accepts (characters).
MAX_EXPRESSION_LENGTH = 20_000
#: A run that has held the event loop this long (seconds) gives it a turn at its
#: next check. Time, not a count of steps: a loop whose steps sort big lists must
#: yield as soon as one whose steps add numbers (and so be stoppable by its timeout).
YIELD_SLICE = 0.002
#: The VM reads the clock after this many instructions. A read costs about as
#: much as two instructions (callgrind: ~3% of a compute loop at 16).
INSTRUCTIONS_PER_CHECK = 16
#: The same for a stack running as generated Python (compiler/_native.py), in the
#: same instruction weights, each costing about a quarter of the VM's.
NATIVE_INSTRUCTIONS_PER_CHECK = 128
#: The weight native code gives a filter (``|name``) in a loop body: a filter may
#: walk a whole list, so a loop body with one reads the clock at every iteration.
FILTER_WEIGHT = NATIVE_INSTRUCTIONS_PER_CHECK
#: How deeply custom functions may call each other.
MAX_CALL_DEPTH = 64
