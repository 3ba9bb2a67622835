"""Warming: finish the deferred ``compile()`` of a program ahead of its first run.

Loading defers turning generated source into code objects until first use
(see docs/internals.md, "Compile speed"), which keeps loading fast but puts
that cost on a task's first run. An engine that is idle between loading and
the first fires warms its programs in the background, one at a time, so the
first run of a scheduled task starts as fast as the later ones.
"""

from __future__ import annotations

from typing import Any

from compiler._expr.lazy import _FirstCall
from compiler._native import _Native
from runtime import Program, Value

__all__ = ("warm_program",)


def _values(arg: Any):
    if isinstance(arg, Value):
        yield arg
    elif isinstance(arg, tuple):
        for a in arg:
            yield from _values(a)
    elif isinstance(arg, dict):
        for a in arg.values():
            yield from _values(a)


def warm_program(program: Program, *, traced: bool = False) -> int:
    """Compile whatever of ``program`` is still waiting for its first run; how many pieces.

    ``traced``: the native variant a run with request history on takes instead
    (a task with history on never runs the untraced one, and the reverse).
    """
    done = 0
    native = program.native
    if isinstance(native, _Native):
        if traced and native.traced_fn is None:
            native.traced_fn = native._compile(True)
            done += 1
        elif not traced and native.fn is None:
            native.fn = native._compile(False)
            done += 1
    for ins in program.instrs:
        for value in _values(ins.arg):
            stub = value.fn
            if isinstance(stub, _FirstCall) and stub.real is None:
                _materialise(stub, value)
                done += 1
    return done


def _materialise(stub: _FirstCall, value: Value) -> None:
    from compiler._expr.lazy import function_from

    real = stub.real = function_from(stub.src, stub.filename, stub.namespace)
    object.__setattr__(value, "fn", real)
