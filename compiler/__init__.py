"""The cronstack compiler: JSON definitions and expressions into programs.

It knows JSON and the expression language, nothing of time, storage or the
network: its output is plain data (``runtime.Program``) for the VM.
"""

from compiler._definitions import (
    Function,
    RequestHistory,
    RetryPolicy,
    Task,
    compile_definition,
    compile_function,
    compile_task,
)
from compiler._errors import CompileError, Diagnostic
from compiler._expr import compile_expression, compile_value
from compiler._load import Definitions, check_calls, load_definitions
from compiler._lower import lower_stack

__all__ = (
    "CompileError",
    "Definitions",
    "Diagnostic",
    "Function",
    "RequestHistory",
    "RetryPolicy",
    "Task",
    "check_calls",
    "compile_definition",
    "compile_expression",
    "compile_function",
    "compile_task",
    "compile_value",
    "load_definitions",
    "lower_stack",
)
