"""The cronstack virtual machine: executes compiled programs of task stacks.

The runtime is the base layer: the compiler targets its instruction set and
value semantics, the engine hands it real implementations of the interfaces it
declares. It imports neither of them.
"""

from runtime._errors import (
    CronstackError,
    ExpressionError,
    InternalError,
    LimitExceeded,
    RunError,
    RunFailed,
    ThrownError,
)
from runtime._interfaces import Clock, Functions, Http, HttpResponse, Records, RunContext, Tracer
from runtime._program import Instr, Op, Program, Value, dis
from runtime._vm import execute

__all__ = (
    "Clock",
    "CronstackError",
    "ExpressionError",
    "Functions",
    "Http",
    "HttpResponse",
    "Instr",
    "InternalError",
    "LimitExceeded",
    "Op",
    "Program",
    "Records",
    "RunContext",
    "RunError",
    "RunFailed",
    "ThrownError",
    "Tracer",
    "Value",
    "dis",
    "execute",
)
