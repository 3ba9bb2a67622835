"""Warming a program finishes its deferred compiles; running it afterwards gives the same result."""

import anyio

from compiler import lower_stack
from compiler._expr.lazy import _FirstCall
from compiler._native import _Native
from compiler._warm import warm_program
from runtime import execute

STACK = [
    {"function": "create_variable", "name": "n", "value": "{{ 2 + x }}"},
    {"function": "loop", "times": 3, "operations": [
        {"function": "update_variable", "name": "n", "operation": "set", "value": "{{ n * 2 }}"}]},
    {"function": "return", "value": {"n": "{{ n }}", "text": "n={{ n }}"}},
]


def stubs(program):
    return [v for ins in program.instrs for v in (ins.arg if isinstance(ins.arg, tuple) else (ins.arg,))
            if hasattr(v, "fn") and isinstance(v.fn, _FirstCall)]


def test_warm_compiles_everything_once_and_keeps_results():
    program = lower_stack(STACK, "t", extra_names=frozenset({"x"})).program
    assert stubs(program), "fields start as compile-on-first-call stubs"
    assert isinstance(program.native, _Native) and program.native.fn is None
    assert warm_program(program) > 0
    assert stubs(program) == [] and program.native.fn is not None
    assert warm_program(program) == 0
    assert anyio.run(execute, program, None, {"x": 1}) == {"n": 24, "text": "n=24"}
