"""The VM: runs a ``Program`` in a frame, cooperatively, on the event loop.

Synchronous instructions run back to back without creating coroutines; only
waits, effects and calls await. Every ``INSTRUCTIONS_PER_CHECK`` instructions
the run reads the clock, and once it has held the loop for ``YIELD_SLICE`` it
gives the loop a turn, so a ``while true`` compute loop neither starves other
runs nor escapes a timeout (cancellation lands at that turn), however costly
its steps.

Frame state (pc, scope, loop stack, try stack) is plain data. Values are never
mutated in place when anything else may hold them (see ``_update``).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Coroutine
from typing import Any

from runtime._effects import EFFECTS
from runtime._errors import (
    CronstackError,
    ExpressionError,
    InternalError,
    RunError,
    RunFailed,
    ThrownError,
    error_from_object,
)
from runtime._interfaces import RunContext
from runtime._limits import INSTRUCTIONS_PER_CHECK, MAX_CALL_DEPTH, MAX_LIST_LENGTH, YIELD_SLICE
from runtime._program import Op, Program, Value
from runtime._values import add, check_limits, eq, sub, to_text, truthy, type_name

__all__ = ("execute", "Frame")

_getrefcount = sys.getrefcount


class Frame:
    """The state of one executing stack: plain data, inspectable and traceable.

    ``loops`` holds one list per active loop:
    ``[mode, source, index, saved_item, saved_parent, saved_index]`` where
    ``source`` is the list (each), the condition (while) or the count (times).
    ``tries`` holds ``(handler_pc, slot, loop_depth)`` per active try block.
    """

    __slots__ = ("pc", "scope", "loops", "tries", "program", "result", "t_in", "t_out")

    def __init__(self, program: Program, scope: dict[str, Any]) -> None:
        self.program = program
        self.pc = 0
        self.scope = scope
        self.loops: list[list[Any]] = []
        self.tries: list[tuple[int, str, int]] = []
        self.result: Any = None
        #: inputs and output of the last traced step (only set when tracing)
        self.t_in: Any = None
        self.t_out: Any = None


def _fail(message: str, error_type: str = "RunError") -> RunError:
    return RunError(message, error_type=error_type)


def _eval(value: Value, scope: dict[str, Any]) -> Any:
    """Evaluate outside the hot path, naming the expression when it fails."""
    try:
        return value.fn(scope)
    except KeyError as exc:
        raise _unset(exc, value) from None
    except CronstackError as exc:
        if "expression" not in exc.extra:
            exc.extra["expression"] = value.source
        raise


def _unset(exc: KeyError, value: Value) -> ExpressionError:
    name = exc.args[0] if exc.args else "?"
    return ExpressionError(
        f"'{name}' is read before it is set, in {value.source}", expression=value.source
    )


def _number(value: Any, what: str) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(f"{what} must be a number, got {type_name(value)}", "InvalidInput")
    return value


def _update(scope: dict[str, Any], name: str, operation: str, value: Any) -> Any:
    """Apply update_variable; containers another holder may see are copied first.

    A list or object is changed in place only when the scope is its sole
    holder (CPython reference count), so ``append`` in a loop stays linear
    while no alias ever sees a change it did not make.
    """
    if name not in scope:
        raise _fail(f"update_variable of '{name}' before it is created", "ExpressionError")
    cur = scope[name]
    if operation == "set":
        scope[name] = value
    elif operation in ("increment", "decrement"):
        step = 1 if value is None else _number(value, f"the {operation} value")
        base = 0 if cur is None else _number(cur, f"variable '{name}'")
        # add/sub: the 256-bit limit on whole numbers, and no overflow to infinity
        scope[name] = add(base, step) if operation == "increment" else sub(base, step)
    elif operation == "append":
        if cur is None:
            scope[name] = [value]
        elif isinstance(cur, list):
            if len(cur) >= MAX_LIST_LENGTH:
                raise RunError(f"list '{name}' would exceed {MAX_LIST_LENGTH} items", error_type="LimitExceeded")
            if _getrefcount(cur) <= 3:  # scope, `cur`, the call's argument
                cur.append(value)
            else:
                scope[name] = [*cur, value]
        else:
            raise _fail(f"cannot append to variable '{name}': it is {type_name(cur)}, not a list", "ExpressionError")
    elif operation == "merge":
        if not isinstance(value, dict):
            raise _fail(f"merge needs an object value, got {type_name(value)}", "ExpressionError")
        if cur is None:
            scope[name] = dict(value)
        elif isinstance(cur, dict):
            if _getrefcount(cur) <= 3:
                cur.update(value)
            else:
                scope[name] = {**cur, **value}
        else:
            raise _fail(f"cannot merge into variable '{name}': it is {type_name(cur)}, not an object", "ExpressionError")
    elif operation == "remove":
        if isinstance(cur, dict):
            key = to_text(value)
            scope[name] = {k: v for k, v in cur.items() if k != key}
        elif isinstance(cur, list):
            scope[name] = [v for v in cur if not eq(v, value)]  # `==`'s equality: true is not 1
        elif cur is not None:
            raise _fail(f"cannot remove from variable '{name}': it is {type_name(cur)}", "ExpressionError")
    else:  # pragma: no cover - the compiler only emits the operations above
        raise InternalError(f"unknown update operation {operation!r}")
    return scope[name]


class _Sleep:
    """Sleeps through the context's clock, or the loop's when there is none."""

    @staticmethod
    def sleep(ctx: RunContext, seconds: float) -> Awaitable[None]:
        # the clock's awaitable itself, not a coroutine around it: one frame less
        # for every run parked in a `wait` (thousands may be)
        return ctx.clock.sleep(seconds) if ctx.clock is not None else asyncio.sleep(seconds)


def _now_fn(ctx: RunContext):
    return ctx.clock.time if ctx.clock is not None else time.time


def _pop_loop(frame: Frame) -> None:
    mode, _src, _i, item, parent, index = frame.loops.pop()
    scope = frame.scope
    scope["index"] = index
    if mode == "each":
        scope["item"] = item
        scope["item_parent"] = parent


def _each_parent(frame: Frame) -> Any:
    for loop in reversed(frame.loops):
        if loop[0] == "each":
            return frame.scope.get("item")
    return None


def _start_loop(frame: Frame, mode: str, source: Any, end: int) -> int:
    scope = frame.scope
    if mode == "each":
        if source is None:
            return end
        if not isinstance(source, list):
            raise _fail(f"a for-each loop needs a list, got {type_name(source)}", "ExpressionError")
        parent = _each_parent(frame)
        frame.loops.append(
            ["each", source, 0, scope.get("item"), scope.get("item_parent"), scope.get("index")]
        )
        scope["item_parent"] = parent
    elif mode == "times":
        count = _number(source, "a loop's 'times'")
        if count != int(count) or count < 0:
            raise _fail(f"a loop's 'times' must be a whole number >= 0, got {count!r}", "InvalidInput")
        frame.loops.append(["times", int(count), 0, None, None, scope.get("index")])
    else:
        frame.loops.append(["while", source, 0, None, None, scope.get("index")])
    return frame.pc


def _first_value(arg: Any) -> Value | None:
    if isinstance(arg, Value):
        return arg
    if isinstance(arg, tuple):
        for a in arg:
            if isinstance(a, Value):
                return a
    return None


def _error_object(exc: BaseException, path: str, arg: Any = None, evaluating: bool = False) -> dict[str, Any]:
    """The error object of ``exc`` raised by the step at ``path``.

    The step's expression is named when it is what failed: always for a
    non-constant one; a constant only with ``evaluating`` (the error came
    from evaluating it, as in the VM's inline SET and JUMP_IF_NOT), since a
    constant that evaluates cannot be what a later part of the step failed on.
    """
    # a thrown error's message is the author's text: the step's expressions made it, they did not fail
    if isinstance(exc, CronstackError | KeyError) and not isinstance(exc, RunFailed | ThrownError):
        value = _first_value(arg)
        if value is not None and (evaluating or not value.constant):
            if isinstance(exc, KeyError):
                exc = _unset(exc, value)
            elif "expression" not in exc.extra:
                exc.extra["expression"] = value.source
    if isinstance(exc, RunFailed):  # from a function called by this stack
        obj = dict(exc.error)
        inner = obj.get("step")  # None: the call itself was refused (too deep)
        obj["step"] = path if inner is None else f"{path} > {inner}"
        return obj
    if isinstance(exc, CronstackError):
        step = getattr(exc, "step", None) or path
        obj = exc.to_object(step)
        if "expression" in exc.extra and "(in {{" not in obj["message"] and exc.extra["expression"] not in obj["message"]:
            obj["message"] = f"{obj['message']} (in {exc.extra['expression']})"
        return obj
    if isinstance(exc, KeyError):
        name = exc.args[0] if exc.args else "?"
        return {"message": f"'{name}' is read before it is set", "type": "ExpressionError", "step": path}
    if isinstance(exc, RecursionError):
        return {"message": "value nested too deeply", "type": "LimitExceeded", "step": path}
    if isinstance(exc, MemoryError):
        return {"message": "out of memory building a value", "type": "LimitExceeded", "step": path}
    return {
        "message": f"internal error: {type(exc).__name__}: {exc}; please report this with the stack",
        "type": "InternalError",
        "step": path,
    }


def _new_scope(ctx: RunContext, variables: dict[str, Any] | None, inputs: dict[str, Any] | None) -> dict:
    scope: dict[str, Any] = {
        "item": None,
        "item_parent": None,
        "index": None,
        "error": None,
        "inputs": inputs if inputs is not None else {},
        "env": ctx.env,
        "task": ctx.task,
        "__now__": _now_fn(ctx),
    }
    if variables:
        scope.update(variables)
    return scope


def execute(
    program: Program,
    ctx: RunContext | None = None,
    variables: dict[str, Any] | None = None,
    *,
    inputs: dict[str, Any] | None = None,
) -> Coroutine[Any, Any, Any]:
    """Run ``program`` to its end; return its ``return`` value (None without one).

    An error no ``try_catch`` catches raises ``RunFailed`` carrying the error
    object. Cancellation (a timeout, a shutdown) propagates untouched.

    A plain function that returns the coroutine of the run itself (the native
    code's, or the interpreter's), not a coroutine awaiting it: every time a
    run resumes (each ``wait``, each committed ``add_record``) it passes
    through one frame less. Errors found before the run starts are raised
    when it is awaited, as from an ``async def``.
    """
    ctx = ctx or RunContext()
    try:
        if ctx.depth > MAX_CALL_DEPTH:
            raise RunFailed(
                {"message": f"functions nested deeper than {MAX_CALL_DEPTH} calls", "type": "LimitExceeded", "step": None}
            )
        frame = Frame(program, _new_scope(ctx, variables, inputs))
    except Exception as exc:
        return _raise(exc)
    native = program.native
    if native is not None:
        if ctx.tracer is None:
            return native(frame, ctx)
        # the traced variant reports the same steps as _run with a tracer (compiler/_native.py)
        traced = getattr(native, "traced", None)
        if traced is not None:
            return traced(frame, ctx)
    return _run(frame, ctx)


async def _raise(exc: Exception) -> Any:
    raise exc


async def _run(frame: Frame, ctx: RunContext) -> Any:  # noqa: C901 - the dispatch loop is one thing
    code = frame.program.instrs
    scope = frame.scope
    tracer = ctx.tracer
    sync_table, async_table = (_SYNC if tracer is None else _SYNC_TRACED), _ASYNC
    # opcodes as locals: an enum attribute lookup costs more than the instruction
    SET, JUMP, JUMP_IF_NOT, LOOP_NEXT = Op.SET, Op.JUMP, Op.JUMP_IF_NOT, Op.LOOP_NEXT  # noqa: N806
    budget = INSTRUCTIONS_PER_CHECK
    due = time.perf_counter() + YIELD_SLICE  # the run gives the loop a turn once past this
    pc = frame.pc
    path = frame.program.name
    kind = None
    busy = False  # a traced step is awaiting: a cancel now interrupts it (see below)
    while True:
        try:
            while True:
                op, arg, path, kind = code[pc]
                pc += 1
                budget -= 1
                if budget <= 0:
                    budget = INSTRUCTIONS_PER_CHECK
                    if time.perf_counter() >= due:
                        frame.pc = pc
                        await asyncio.sleep(0)
                        due = time.perf_counter() + YIELD_SLICE
                if tracer is not None and kind is not None:
                    t0 = time.time()
                    p0 = time.perf_counter()
                    frame.pc = pc
                    frame.t_in = frame.t_out = None
                    handler = sync_table[op]
                    if handler is not None:
                        pc = handler(frame, arg)
                    else:
                        busy = True
                        pc = await async_table[op](frame, ctx, arg, path)
                        busy = False
                    tracer.step(path, kind, t0, time.perf_counter() - p0, frame.t_in, frame.t_out, None)
                    frame.t_in = frame.t_out = None
                    if pc < 0:
                        return frame.result
                    continue
                if op is SET:
                    scope[arg[0]] = arg[1].fn(scope)
                elif op is JUMP:
                    pc = arg
                elif op is JUMP_IF_NOT:
                    if not truthy(arg[0].fn(scope)):
                        pc = arg[1]
                elif op is LOOP_NEXT:
                    loop = frame.loops[-1]
                    mode = loop[0]
                    i = loop[2]
                    if mode == "each":
                        src = loop[1]
                        if i < len(src):
                            scope["item"] = src[i]
                            scope["index"] = i
                            loop[2] = i + 1
                        else:
                            _pop_loop(frame)
                            pc = arg
                    elif mode == "times":
                        if i < loop[1]:
                            scope["index"] = i
                            loop[2] = i + 1
                        else:
                            _pop_loop(frame)
                            pc = arg
                    elif truthy(loop[1].fn(scope)):
                        scope["index"] = i
                        loop[2] = i + 1
                    else:
                        _pop_loop(frame)
                        pc = arg
                else:
                    frame.pc = pc
                    handler = sync_table[op]
                    if handler is not None:
                        pc = handler(frame, arg)
                    else:
                        pc = await async_table[op](frame, ctx, arg, path)
                    if pc < 0:
                        return frame.result
        except asyncio.CancelledError:
            if busy:  # a timeout or cancel stopped a traced step: the trace shows which
                tracer.step(path, kind, t0, time.perf_counter() - p0, None, None, interrupted(path))
            raise
        except Exception as exc:  # every error of a step becomes an error object
            busy = False
            instr = code[pc - 1] if pc > 0 else None
            obj = _error_object(exc, path, instr and instr.arg, instr is not None and instr.op in _INLINE_EVAL)
            if tracer is not None:
                tracer.step(path, kind or "", time.time(), 0.0, None, None, obj)
            if not frame.tries:
                raise RunFailed(obj) from None
            handler_pc, slot, depth = frame.tries.pop()
            while len(frame.loops) > depth:
                _pop_loop(frame)
            scope["error"] = obj
            scope[slot] = obj
            pc = handler_pc


#: instructions ``_run`` evaluates inline, outside ``_eval``: their only failure is the evaluation
_INLINE_EVAL = frozenset({Op.SET, Op.JUMP_IF_NOT})


def interrupted(path: str) -> dict[str, Any]:
    """The error of a traced step stopped by the run's timeout or a cancel (never caught)."""
    return {"message": "the run was stopped while this step ran", "type": "Interrupted", "step": path}


# -- handlers off the hot path -----------------------------------------------------------
# Each returns the next pc (-1 ends the stack, with the value in ``frame.result``).
# With a tracer, a step's inputs and output go to ``frame.t_in``/``t_out``; without
# one nothing else holds a value, so ``_update`` can change a lone list in place.


def _h_set(frame: Frame, arg: Any) -> int:
    value = _eval(arg[1], frame.scope)
    frame.scope[arg[0]] = value
    frame.t_out = value
    return frame.pc


def _h_update(frame: Frame, arg: Any) -> int:
    name, operation, value = arg
    v = _eval(value, frame.scope)
    _update(frame.scope, name, operation, v)
    return frame.pc


def _h_update_traced(frame: Frame, arg: Any) -> int:
    name, operation, value = arg
    v = _eval(value, frame.scope)
    _update(frame.scope, name, operation, v)
    frame.t_in, frame.t_out = v, frame.scope[name]
    return frame.pc


def _h_jump(frame: Frame, arg: Any) -> int:
    return arg


def _h_jump_if_not(frame: Frame, arg: Any) -> int:
    cond = truthy(_eval(arg[0], frame.scope))
    frame.t_out = cond
    return frame.pc if cond else arg[1]


def _h_loop_start(frame: Frame, arg: Any) -> int:
    mode, source, end = arg
    src = source if mode == "while" else _eval(source, frame.scope)
    if mode != "while":
        frame.t_in = len(src) if isinstance(src, list) else src
    return _start_loop(frame, mode, src, end)


def _h_loop_next(frame: Frame, arg: Any) -> int:
    scope = frame.scope
    loop = frame.loops[-1]
    mode, src, i = loop[0], loop[1], loop[2]
    more = i < len(src) if mode == "each" else i < src if mode == "times" else truthy(_eval(src, scope))
    if not more:
        _pop_loop(frame)
        return arg
    if mode == "each":
        scope["item"] = src[i]
    scope["index"] = i
    loop[2] = i + 1
    return frame.pc


def _h_loop_pop(frame: Frame, arg: Any) -> int:
    _pop_loop(frame)
    return frame.pc


def _h_switch(frame: Frame, arg: Any) -> int:
    value, table, default = arg
    key = to_text(_eval(value, frame.scope))
    frame.t_out = key
    return table.get(key, default)


def _h_try_push(frame: Frame, arg: Any) -> int:
    handler, slot = arg
    frame.tries.append((handler, slot, len(frame.loops)))
    return frame.pc


def _h_try_pop(frame: Frame, arg: Any) -> int:
    frame.tries.pop()
    return frame.pc


def _h_reraise(frame: Frame, arg: Any) -> int:
    raise error_from_object(frame.scope[arg])


def _h_throw(frame: Frame, arg: Any) -> int:
    message = to_text(_eval(arg[0], frame.scope))
    etype = to_text(_eval(arg[1], frame.scope)) or "ThrownError"
    raise ThrownError(message, error_type=etype)


def _h_return(frame: Frame, arg: Any) -> int:
    value = _eval(arg, frame.scope)
    check_limits(value)
    frame.result = frame.t_out = value
    return -1


def _h_end(frame: Frame, arg: Any) -> int:
    frame.result = None
    return -1


async def _a_wait(frame: Frame, ctx: RunContext, arg: Any, path: str) -> int:
    seconds = _number(_eval(arg, frame.scope), "wait 'duration'")
    if seconds < 0:
        raise _fail(f"wait 'duration' must be >= 0, got {seconds}", "InvalidInput")
    await _Sleep.sleep(ctx, float(seconds))
    frame.t_in = seconds
    return frame.pc


async def _a_effect(frame: Frame, ctx: RunContext, arg: Any, path: str) -> int:
    kind, fields, return_as = arg
    scope = frame.scope
    evaluated = {key: _eval(v, scope) for key, v in fields.items()}
    result = await EFFECTS[kind](ctx, evaluated)
    if return_as is not None:
        scope[return_as] = result
    if ctx.tracer is not None:
        frame.t_in, frame.t_out = evaluated, result
    return frame.pc


async def _a_call(frame: Frame, ctx: RunContext, arg: Any, path: str) -> int:
    name, inputs, return_as, mode = arg
    values = _eval(inputs, frame.scope)
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise _fail(f"'inputs' must be an object, got {type_name(values)}", "InvalidInput")
    if ctx.functions is None:
        raise _fail(f"no function '{name}' can be called: this run has no functions", "UnknownFunction")
    if mode == "async":
        result = await ctx.functions.start(name, values, ctx)
    else:
        result = await ctx.functions.call(name, values, ctx)
    if return_as is not None:
        frame.scope[return_as] = result
    if ctx.tracer is not None:
        frame.t_in, frame.t_out = values, result
    return frame.pc


async def _a_log(frame: Frame, ctx: RunContext, arg: Any, path: str) -> int:
    message = _eval(arg[0], frame.scope)
    level = _eval(arg[1], frame.scope)
    if ctx.tracer is not None:
        ctx.tracer.log(path, to_text(level), message)
    frame.t_out = message
    return frame.pc


def _table(entries: dict[Op, Any]) -> list[Any]:
    table: list[Any] = [None] * (max(Op) + 1)
    for op, handler in entries.items():
        table[op] = handler
    return table


_SYNC = _table({
    Op.SET: _h_set, Op.UPDATE: _h_update, Op.JUMP: _h_jump, Op.JUMP_IF_NOT: _h_jump_if_not,
    Op.SWITCH: _h_switch, Op.LOOP_START: _h_loop_start, Op.LOOP_NEXT: _h_loop_next, Op.LOOP_POP: _h_loop_pop,
    Op.TRY_PUSH: _h_try_push, Op.TRY_POP: _h_try_pop, Op.RERAISE: _h_reraise, Op.THROW: _h_throw,
    Op.RETURN: _h_return, Op.END: _h_end,
})
_SYNC_TRACED = list(_SYNC)
_SYNC_TRACED[Op.UPDATE] = _h_update_traced
_ASYNC = _table({Op.WAIT: _a_wait, Op.EFFECT: _a_effect, Op.CALL: _a_call, Op.LOG: _a_log})
assert all((s is None) != (a is None) for s, a in zip(_SYNC[1:], _ASYNC[1:])), "every opcode has one handler"
