"""The VM's instruction set: what the compiler produces and the VM executes.

A ``Program`` is plain data: a tuple of immutable ``Instr`` records, each
remembering the JSON path of the step it came from, so that errors, traces and
the ``dis`` printer can point back at the definition.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

__all__ = ("Op", "Instr", "Value", "Program", "dis")


class Op(enum.IntEnum):
    """Opcodes. Arguments (``Instr.arg``) are described per opcode."""

    SET = 1  # (name, Value): create_variable
    UPDATE = 2  # (name, operation, Value): update_variable
    JUMP = 3  # target
    JUMP_IF_NOT = 4  # (Value condition, target)
    SWITCH = 5  # (Value, {text key: target}, default target)
    LOOP_START = 6  # (kind "each"|"while"|"times", Value, end target)
    LOOP_NEXT = 7  # end target: advance the innermost loop or leave it
    LOOP_POP = 8  # None: drop the innermost loop (break)
    TRY_PUSH = 9  # handler target
    TRY_POP = 10  # None
    RERAISE = 11  # None: raise the error a finally block was entered with
    THROW = 12  # (Value message, Value type)
    RETURN = 13  # Value
    WAIT = 14  # Value seconds
    CALL = 15  # (name, Value inputs, return_as or None, mode "sync"|"async")
    EFFECT = 16  # (kind, {field: Value}, return_as or None): records, HTTP
    LOG = 17  # (Value message, Value level)
    END = 18  # None: end of the stack, result null


@dataclass(frozen=True, slots=True)
class Value:
    """A compiled template or expression.

    ``fn(scope)`` computes the value from the run's scope (a dict of names);
    ``source`` is the text a user wrote, quoted in run-time errors;
    ``constant`` says ``fn`` ignores the scope.
    """

    fn: Callable[[dict[str, Any]], Any]
    source: str
    constant: bool = False

    def __repr__(self) -> str:
        return f"Value({self.source!r})"


class Instr(NamedTuple):
    """One instruction: opcode, argument, and the JSON path of its step.

    ``kind`` is the step's ``function`` name for the instruction that starts a
    step (traced), or ``None`` for bookkeeping instructions the lowering added.
    A named tuple, so that the VM unpacks it in one go.
    """

    op: Op
    arg: Any
    path: str
    kind: str | None = None


@dataclass(frozen=True, slots=True)
class Program:
    """A compiled stack: instructions plus where they came from."""

    name: str
    instrs: tuple[Instr, ...]
    file: str | None = None
    #: every variable name the stack assigns (for checks and docs)
    variables: frozenset[str] = field(default_factory=frozenset)
    #: the same stack compiled to a Python coroutine function ``native(frame, ctx)``,
    #: run instead of the instructions when no tracer watches (see compiler/_native.py)
    native: Callable[..., Any] | None = field(default=None, compare=False)

    def __len__(self) -> int:
        return len(self.instrs)


def _show_arg(op: Op, arg: Any) -> str:
    if arg is None:
        return ""
    if isinstance(arg, tuple):
        return " ".join(_show_arg(op, a) for a in arg)
    if isinstance(arg, dict):
        inner = ", ".join(f"{k}: {_show_arg(op, v)}" for k, v in arg.items())
        return "{" + inner + "}"
    if isinstance(arg, Value):
        return repr(arg.source) if not arg.constant else f"={arg.source}"
    if isinstance(arg, int) and op in (Op.JUMP, Op.LOOP_NEXT, Op.TRY_PUSH):
        return f"-> {arg}"
    return repr(arg) if isinstance(arg, str) else str(arg)


def dis(program: Program) -> str:
    """A readable listing of ``program``, one instruction a line."""
    lines = [f"program {program.name}" + (f" ({program.file})" if program.file else "")]
    for pc, ins in enumerate(program.instrs):
        lines.append(f"{pc:5d}  {ins.op.name:<12} {_show_arg(ins.op, ins.arg):<50} {ins.path}".rstrip())
    return "\n".join(lines)
