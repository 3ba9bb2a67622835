"""Native backend: a JSON stack into the source of ONE Python coroutine function.

The VM (``runtime/_vm.py``) interprets a flat instruction list; this module
turns the same stack into structured Python -- ``for``/``while``/``if``/``try``
with every expression's source inlined -- compiled at the stack's first run.
The VM runs it instead of the instructions; a run with a tracer (request
history on) runs a second variant, generated at the first traced run, that
reports every step to the tracer exactly as the VM's traced dispatch does
(same calls, same order, same values; see ``_Gen.trace_end``).

Semantics are the VM's, by construction rather than by copy:

* variables live in ``frame.scope`` exactly as in the VM; expressions are the
  code the expression compiler generates (``field_code``), inlined. A loop
  whose body only computes (variables, conditionals, switches) keeps the
  variables it can in Python locals instead, and writes them back before
  anything can see the scope: the yield, the loop's end, an error leaving it;
* loops go through the VM's ``_start_loop``/``_pop_loop`` on ``frame.loops``,
  variables change through ``_update`` (fast paths only for plain numbers and a
  ``set`` of an existing name), waits, calls, logs and throws call the
  VM's own handlers with the instruction arguments the lowering produced;
  an effect (records, HTTP) calls each field's compiled value and awaits the
  same ``EFFECTS`` handler the VM's ``_a_effect`` awaits, one frame less per call;
* errors become error objects through ``_error_object`` with the path and the
  argument of the instruction the VM would have been executing: the generated
  code keeps the index of that "site" in a local (``_at``), a store that costs
  next to nothing, instead of wrapping every step in ``try``;
* ``finally`` blocks are copied onto ``break``/``continue``/``return`` exactly
  as the lowering does (a Python ``finally`` would also run on cancellation,
  which the VM never does); a flag per ``try`` tells its handler that an error
  came from such a copy, after the VM would have popped the ``try``.

Every piece of user text reaches the source through ``repr()`` of a str, int
or float; the code runs in a namespace without builtins.
"""

from __future__ import annotations

import asyncio
import copy
import math
import re
import sys
import time
from collections.abc import Callable
from typing import Any

import msgspec

from compiler._expr import EXPRESSION_NAMESPACE, field_code
from compiler._native_locals import (
    BUILTIN_NAMES,
    LOCAL_OPS,
    Locals,
    NoLocals,
    kept_in_scope,
    local_body,
    localize,
    writes,
)
from compiler._steps import EFFECT_STEPS
from runtime import CronstackError, Op, Program, RunFailed, Value
from runtime._effects import EFFECTS, RESULT_OPTIONAL
from runtime._errors import error_from_object
from runtime._limits import FILTER_WEIGHT, INSTRUCTIONS_PER_CHECK, NATIVE_INSTRUCTIONS_PER_CHECK, YIELD_SLICE
from runtime._values import INT_LIMIT, check_limits, to_text
from runtime._vm import (
    _a_call,
    _a_effect,
    _a_log,
    _a_wait,
    _error_object,
    _h_throw,
    _pop_loop,
    _run,
    _start_loop,
    _unset,
    _update,
    interrupted,
)

__all__ = ("generate_native", "native_source", "NativeFunction")

#: the names the tests know these by
_localize, _NoLocals = localize, NoLocals

#: ``async def native(frame, ctx) -> result``
NativeFunction = Callable[..., Any]

#: Types of constants an effect's fields may share between calls (nothing can change them).
_SCALARS = (str, int, float, bool, type(None))

#: Python refuses more than 20 nested blocks in one function; deeper stacks stay on the VM.
_MAX_PY_BLOCKS = 20


def _error_at(exc: BaseException, site: tuple[str, Any, Value | None]) -> dict[str, Any]:
    """The VM's error object for ``exc`` raised at ``site`` = (path, instruction arg, evaluated).

    ``evaluated`` is set where the VM evaluates through ``_eval`` (which names
    the expression even when it is constant) rather than on its hot path.
    """
    path, arg, evaluated = site
    if evaluated is not None:
        if isinstance(exc, KeyError):
            exc = _unset(exc, evaluated)
        elif isinstance(exc, CronstackError) and "expression" not in exc.extra:
            exc.extra["expression"] = evaluated.source
    return _error_object(exc, path, arg)


_HELPERS: dict[str, Any] = {
    "_asyncio": asyncio,  # looked up at each yield: tests patch asyncio.sleep
    # bounds of a number update_variable may store inline: whole numbers within
    # MAX_INT_BITS, finite floats (anything else goes through ``_update``, which refuses it)
    "_ILO": -INT_LIMIT,
    "_IHI": INT_LIMIT,
    "_FLO": -sys.float_info.max,
    "_FHI": sys.float_info.max,
    "_BUDGET": NATIVE_INSTRUCTIONS_PER_CHECK,
    "_SLICE": YIELD_SLICE,
    "_Exception": Exception,
    "_Cancelled": asyncio.CancelledError,
    "_interrupted": interrupted,
    "_range": range,
    "_enumerate": enumerate,
    "_update": _update,
    "_start_loop": _start_loop,
    "_pop_loop": _pop_loop,
    "_error_at": _error_at,
    "_RunFailed": RunFailed,
    "_reraise": error_from_object,
    "_check_limits": check_limits,
    "_to_text": to_text,
    "_throw": _h_throw,
    "_wait": _a_wait,
    "_effect": _a_effect,
    "_EFFECTS": EFFECTS,  # looked up at each call, as the VM does (tests replace handlers)
    "_call": _a_call,
    "_log": _a_log,
    # the traced variant's clocks, as the VM reads them for each step
    "_time": time.time,
    "_perf": time.perf_counter,
    "_len": len,
}
#: site tags of VM instructions that carry no step kind: an error there is traced with kind ""
_UNTRACED_TAGS = frozenset({"condition", "return slot", "reraise"})
assert not set(_HELPERS) & set(EXPRESSION_NAMESPACE), "helper names shadow expression names"


class _Loop:
    __slots__ = ()


class _Try:
    """A ``try`` the VM has pushed: its flag local and the finally steps its exits copy."""

    __slots__ = ("flag", "finally_steps", "finally_path")

    def __init__(self, flag: str, finally_steps: list[Any] | None, finally_path: str) -> None:
        self.flag = flag
        self.finally_steps = finally_steps
        self.finally_path = finally_path


class _Handler:
    """A catch block, or a finally block run after an error (the lowering's ``_Handler``):
    ``error`` is the local ``own``; leaving it puts ``error`` back from the local ``prev``."""

    __slots__ = ("own", "prev")

    def __init__(self, own: str, prev: str) -> None:
        self.own = own
        self.prev = prev


class _Gen:
    """Walks a stack the way ``compiler._lower`` does, writing Python instead of instructions.

    With ``traced``, the code also reports each step to ``ctx.tracer`` where
    and with what the VM's traced dispatch reports it (see ``trace_end``).
    """

    def __init__(self, program: Program, path: str, traced: bool = False) -> None:
        self.traced = traced
        self.lines: list[str] = []
        self.depth = 1
        self.blocks = 0
        self.max_blocks = 0
        self.ns: dict[str, Any] = {}
        self.sites: list[tuple[str, Any, Value | None]] = []
        #: per site, the step kind the VM traces an error there with ("" where its instruction has none)
        self.site_kinds: list[str] = []
        #: path -> step kind, from the instructions that carry one
        self.kinds: dict[str, str] = {}
        self.site_ids: dict[tuple[str, str], int] = {}
        self.holders: set[str] = {"_v"}
        self.ctx: list[_Loop | _Try | _Handler] = []
        self.n = 0
        self.args: dict[str, Any] = {}
        self.return_values: dict[str, Value] = {}
        for ins in program.instrs:
            if ins.kind is not None:
                self.args.setdefault(ins.path, ins.arg)
                self.kinds.setdefault(ins.path, ins.kind)
            elif ins.op is Op.RETURN:
                self.return_values.setdefault(ins.path, ins.arg)
        self.root = path
        #: names surely in the scope at the point being generated (created on every path to it)
        self.created: set[str] = set(BUILTIN_NAMES)
        #: inside a loop body whose variables live in locals: which ones
        self.local: Locals | None = None
        #: a restore reads ``_e0``, ``error`` as the run started (set in the header)
        self.uses_e0 = False

    # -- output -------------------------------------------------------------------
    def line(self, text: str) -> None:
        self.lines.append("    " * self.depth + text)

    def indent(self) -> None:
        self.depth += 1
        self.blocks += 1
        self.max_blocks = max(self.max_blocks, self.blocks)

    def dedent(self) -> None:
        self.depth -= 1
        self.blocks -= 1

    def fresh(self, stem: str) -> str:
        self.n += 1
        return f"{stem}{self.n}"

    def const(self, value: Any) -> str:
        """A namespace name holding ``value`` (an instruction argument)."""
        name = f"_A{len(self.ns)}"
        self.ns[name] = value
        return name

    def site(self, path: str, arg: Any, evaluated: Value | None = None, tag: str = "") -> None:
        """``_at = N``: errors from here on are those of site N (path, argument, evaluated value).

        A store nothing can observe is not written, for the compiler parses every
        line: the first site when nothing precedes it (the header already sets
        ``_at = 0``), and a marker directly after another at the same depth.
        """
        key = (path, tag)
        at = self.site_ids.get(key)
        if at is None:
            at = self.site_ids[key] = len(self.sites)
            self.sites.append((path, arg, evaluated))
            self.site_kinds.append("" if tag in _UNTRACED_TAGS else self.kinds.get(path, ""))
        lines = self.lines
        if not lines:
            if at == 0:
                return
        else:
            marker = "    " * self.depth + "_at = "
            if lines[-1].startswith(marker) and lines[-1][len(marker)].isdigit():
                lines.pop()
        self.line(f"_at = {at}")

    # -- tracing (the traced variant only) ---------------------------------------------
    def trace_start(self) -> None:
        """Where the VM reads its clocks for a traced step: before the step's instruction runs."""
        if self.traced:  # _busy: a cancel from here to trace_end interrupts this step
            self.line("_t0, _p0, _busy = _time(), _perf(), True")

    def trace_end(self, path: str, inputs: str = "None", output: str = "None") -> None:
        """``tracer.step`` with what the VM's traced handler leaves in ``frame.t_in``/``t_out``.

        Emitted where the step's instruction has completed: after the head of
        a conditional, switch, loop or try (before their blocks), after the
        finally copies of a break, continue or return-through-finally.
        """
        if self.traced:
            kind = self.kinds[path]
            self.line(f"_tr.step({path!r}, {kind!r}, _t0, _perf() - _p0, {inputs}, {output}, None)")
            self.line("_busy = False")

    def evaluate(
        self, target: str, raw: Any, field: str, site: tuple[str, Any, Value], *, condition: bool = False
    ) -> None:
        """``target = <field>`` where the VM evaluates through ``_eval`` (``site`` = path, arg, value).

        A constant that evaluates now cannot fail later (constants are pure), so
        it needs no site of its own; otherwise what follows the evaluation of a
        constant is named as on the VM's hot path (``_eval`` names constants, the
        VM's error objects do not).
        """
        path, arg, value = site
        safe = value.constant and _evaluates(value)
        if not safe:
            self.site(path, arg, value)
        self.line(f"{target} = {self.expr(raw, field, condition=condition)}")
        if value.constant:
            self.site(path, arg, None, "after")

    def expr(self, raw: Any, path: str, *, condition: bool = False) -> str:
        """Emit the statements of a field; return its result expression."""
        stmts, result = field_code(raw, path, condition=condition)
        if self.local is not None:
            stmts = tuple(localize(stmt, self.local_of) for stmt in stmts)
            result = localize(result, self.local_of)
        for stmt in stmts:
            for text in stmt.split("\n"):
                self.line(text)
        self.holders.update(_temps(stmts, result))
        return result

    def local_of(self, name: str) -> str | None:
        """The local holding variable ``name`` in this loop body, or None if it stays in the scope."""
        local = self.local
        if local is None or name not in local.allowed:
            return None
        var = local.names.get(name)
        if var is None:
            var = local.names[name] = f"_x{len(local.names) + 1}"
        return var

    def write_back(self) -> list[str]:
        """Statements storing every local variable into the scope, where others can see it."""
        assert self.local is not None
        return [f"scope[{name!r}] = {var}" for name, var in self.local.names.items()]

    # -- steps --------------------------------------------------------------------
    def block(self, steps: Any, path: str) -> None:
        start = len(self.lines)
        created = set(self.created)  # what a nested block creates may not have happened after it
        for i, step in enumerate(steps or ()):
            self.step(step, f"{path}[{i}]")
        self.created = created
        if len(self.lines) == start:
            self.line("pass")

    def step(self, step: dict[str, Any], path: str) -> None:
        if step.get("disabled") is True:
            return
        kind = step["function"]
        getattr(self, f"do_{kind}", self.do_effect)(step, path, kind)

    def do_create_variable(self, step: dict, path: str, kind: str) -> None:
        if self.traced:  # the VM's traced SET goes through ``_eval``: it names a failing constant
            arg = self.args[path]
            self.trace_start()
            self.evaluate("_v", step.get("value"), f"{path}.value", (path, arg, arg[1]))
            self.line(f"scope[{step['name']!r}] = _v")
            self.trace_end(path, output="_v")
            self.created.add(step["name"])
            return
        arg = self.args[path]
        if not (arg[1].constant and _evaluates(arg[1])):  # a constant that evaluates cannot fail here
            self.site(path, arg, arg[1])  # what fails is the value: named, constant or not (the VM's SET)
        name = step["name"]
        value = self.expr(step.get("value"), f"{path}.value")
        var = self.local_of(name)
        self.line(f"{var} = {value}" if var else f"scope[{name!r}] = {value}")
        self.created.add(name)

    def do_update_variable(self, step: dict, path: str, kind: str) -> None:
        arg = self.args[path]
        name, op, value = arg
        key = repr(name)
        var = self.local_of(name) if op in LOCAL_OPS else None
        if var is not None:
            self.update_local(step, path, arg, var)
            return
        self.trace_start()
        if op in ("increment", "decrement") and value.constant and _evaluates(value) and value.fn({}) is None:
            self.site(path, arg, None, "after")
            sign = "+" if op == "increment" else "-"
            self.line(f"if ((_c := scope.get({key})).__class__ is int or _c.__class__ is float):")
            self.line(f"    scope[{key}] = _c {sign} 1  # a step of 1 cannot reach a limit (see _fits)")
            self.line("else:")
            self.line(f"    _update(scope, {key}, {op!r}, None)")
            self.holders.add("_c")
            self.trace_end(path, "None", f"scope[{key}]")
            return
        self.evaluate("_v", step.get("value"), f"{path}.value", (path, arg, value))
        if op == "set" and name in self.created:  # surely there: ``_update`` would only store it
            self.line(f"scope[{key}] = _v")
        elif op == "set":
            self.line(f"if {key} in scope:")
            self.line(f"    scope[{key}] = _v")
            self.line("else:")
            self.line(f"    _update(scope, {key}, 'set', _v)")
        elif op in ("increment", "decrement"):
            sign = "+" if op == "increment" else "-"
            vnum = "(_v.__class__ is int or _v.__class__ is float)"
            self.line(f"if ((_c := scope.get({key})).__class__ is int or _c.__class__ is float) and {vnum} and {_fits(f'_c {sign} _v')}:")
            self.line(f"    scope[{key}] = _n")
            self.line("else:")
            self.line(f"    _update(scope, {key}, {op!r}, _v)")
            self.holders.add("_c")
        else:
            # a list/object is changed in place only when the scope alone holds it:
            # drop what this function's locals still hold (expression temporaries)
            others = sorted(self.holders - {"_v"}, key=_natural)
            if others:
                self.line(" = ".join(others) + " = None")
            self.line(f"_update(scope, {key}, {op!r}, _v)")
        self.trace_end(path, "_v", f"scope[{key}]")

    def update_local(self, step: dict, path: str, arg: Any, var: str) -> None:
        """update_variable of a variable held in local ``var`` (it is in the scope: no 'before it is created').

        Anything but a plain number goes through ``_update`` on the scope, for its
        errors and results, and the local is read back.
        """
        name, op, value = arg
        key = repr(name)
        slow = [f"    scope[{key}] = {var}", f"    _update(scope, {key}, {op!r}, {{v}})", f"    {var} = scope[{key}]"]
        num = f"({var}.__class__ is int or {var}.__class__ is float)"
        sign = "+" if op == "increment" else "-"
        number = None
        if op != "set" and value.constant and _evaluates(value):
            number = "None" if value.fn({}) is None else _literal_number(value)
        if number is not None:
            # a constant (None: 1): no test of it, and only ``_update`` can fail, so the
            # site (the one ``evaluate`` gives a constant) is stored on that path alone
            step_text = "1" if number == "None" else number
            if _small(step_text):  # cannot reach a limit (see _fits): no check
                self.line(f"if {num}:")
                self.line(f"    {var} = {var} {sign} {step_text}")
            else:
                self.line(f"if {num} and {_fits(f'{var} {sign} {step_text}')}:")
                self.line(f"    {var} = _n")
            self.line("else:")
            self.depth += 1
            self.site(path, arg, None, "after")
            self.depth -= 1
            for text in slow:
                self.line(text.format(v=number))
            return
        self.evaluate("_v", step.get("value"), f"{path}.value", (path, arg, value))
        if op == "set":
            self.line(f"{var} = _v")
            return
        self.line(f"if {num} and (_v.__class__ is int or _v.__class__ is float) and {_fits(f'{var} {sign} _v')}:")
        self.line(f"    {var} = _n")
        self.line("else:")
        for text in slow:
            self.line(text.format(v="_v"))

    def do_conditional(self, step: dict, path: str, kind: str) -> None:
        if self.traced:  # the traced JUMP_IF_NOT evaluates through ``_eval`` and reports the bool
            arg = self.args[path]
            self.trace_start()
            self.evaluate("_v", step["condition"], f"{path}.condition", (path, arg, arg[0]), condition=True)
            self.trace_end(path, output="_v")
            cond = "_v"
        else:
            arg = self.args[path]
            self.site(path, arg, arg[0])  # the condition is all that can fail (the VM's JUMP_IF_NOT)
            cond = _bare(self.expr(step["condition"], f"{path}.condition", condition=True))
        self.line(f"if {cond}:")
        self.indent()
        self.block(step.get("true_branch"), f"{path}.true_branch")
        self.dedent()
        if step.get("false_branch"):
            self.line("else:")
            self.indent()
            self.block(step.get("false_branch"), f"{path}.false_branch")
            self.dedent()

    def do_switch(self, step: dict, path: str, kind: str) -> None:
        arg = self.args[path]
        self.trace_start()
        self.evaluate("_v", step["value"], f"{path}.value", (path, arg, arg[0]))
        self.line("_k = _to_text(_v)")
        self.trace_end(path, output="_k")
        word = "if"
        for key, steps in (step.get("cases") or {}).items():
            self.line(f"{word} _k == {str(key)!r}:")
            self.indent()
            self.block(steps, f"{path}.cases.{key}")
            self.dedent()
            word = "elif"
        if word == "if":
            self.line("if True:")
        else:
            self.line("else:")
        self.indent()
        self.block(step.get("default"), f"{path}.default")
        self.dedent()

    def do_loop(self, step: dict, path: str, kind: str) -> None:
        body = step.get("operations")
        if not self.traced and self.local is None and local_body(body):
            allowed = frozenset(self.created) - kept_in_scope(body)
            mark = (len(self.lines), self.depth, self.blocks, len(self.ctx), set(self.created))
            try:
                self.loop(step, path, Locals(allowed))
                return
            except NoLocals:  # an expression's code we cannot rewrite: the loop reads the scope
                del self.lines[mark[0] :]
                self.depth, self.blocks = mark[1], mark[2]
                del self.ctx[mark[3] :]
                self.created = mark[4]
                self.local = None
        self.loop(step, path, None)

    def loop(self, step: dict, path: str, local: Locals | None) -> None:
        """A loop; with ``local``, its body keeps the allowed variables in locals.

        Those locals are loaded after ``_start_loop`` and written back to the
        scope before the yield, when the loop ends (break included) and before
        an error leaves it -- before ``_pop_loop`` restores ``index``/``item``,
        so the catch block and the error object see what the VM would show.
        """
        arg = self.args[path]
        mode, source, _end = arg
        n = self.fresh("")
        weight = 2 + _weight(step.get("operations"))
        src, i = f"_s{n}", f"_i{n}"
        self.trace_start()
        if mode == "while":
            self.line(f"_start_loop(frame, 'while', {self.const(source)}, -1)")
            self.trace_end(path)
            self.line(f"{i} = 0")
        else:
            field = "array" if mode == "each" else "times"
            self.evaluate(src, step[field], f"{path}.{field}", (path, arg, source))
        if mode == "each":  # _start_loop returns the end (-1 here) for a null array: no loop at all
            if self.traced:  # the VM reports the length of the list (None for a null array)
                self.line(f"_z = _start_loop(frame, 'each', {src}, -1)")
                self.trace_end(path, f"(None if {src} is None else _len({src}))")
                self.line("if _z != -1:")
            else:
                self.line(f"if _start_loop(frame, 'each', {src}, -1) != -1:")
            self.indent()
        elif mode == "times":
            self.line(f"_start_loop(frame, 'times', {src}, -1)")
            self.trace_end(path, src)
        loads_at = len(self.lines)
        # a for loop with locals counts its iterations to the next yield instead of
        # decrementing ``_b`` each time: the same yields, one comparison per iteration
        counted = local is not None and mode != "while"
        per_yield = (NATIVE_INSTRUCTIONS_PER_CHECK - 1) // weight + 1
        nxt = f"_n{n}"
        self.local = local
        index = self.local_of("index")
        item = self.local_of("item") if mode == "each" else None
        counter = None  # the local that is both index and the for loop's count (then not loaded)
        if counted:
            # the for loop binds index (and item) straight to their locals; it counts with
            # index unless the body may change index (the VM's count goes on regardless)
            if index and not writes(step.get("operations"), "index"):
                i = counter = index
                index = None
            self.line(f"{nxt} = (_b - 1) // {weight}  # the iteration that reads the clock")
            self.line(f"{i} = -1")
        self.line("try:")
        self.indent()
        if mode == "each":
            self.line(f"for {i}, {item or '_it'} in _enumerate({src}):")
        elif mode == "times":
            self.line(f"for {i} in _range(frame.loops[-1][1]):")
        else:
            self.line("while True:")
        self.indent()
        if counted:
            self.line(f"if {i} == {nxt}:")
            self.line(f"    {nxt} += {per_yield}")
        else:
            self.line(f"_b -= {weight}")
            self.line("if _b <= 0:")
            self.line("    _b = _BUDGET")
        self.line("    if _perf() >= _due:  # held the loop a whole slice: give it a turn")
        yield_at = len(self.lines)
        self.line("        await _asyncio.sleep(0)")
        self.line("        _due = _perf() + _SLICE")
        if mode == "while":
            self.site(path, None, None, "condition")
            cond = self.expr(step["condition"], f"{path}.condition", condition=True)
            self.line(f"if not {_bare(cond)}:")
            self.line("    break")
            self.line(f"{index} = {i}" if index else f"scope['index'] = {i}")
            self.line(f"{i} += 1")
        else:
            if mode == "each" and not item:
                self.line("scope['item'] = _it")
            if index:
                self.line(f"{index} = {i}")
            elif not counter:
                self.line(f"scope['index'] = {i}")
        self.ctx.append(_Loop())
        self.block(step.get("operations"), f"{path}.operations")
        self.ctx.pop()
        self.dedent()
        self.dedent()
        back = self.write_back() if local is not None else []
        self.local = None
        self.line("except _Exception:  # leaving for a catch: the VM pops the loops in between")
        for text in back:
            self.line("    " + text)
        self.line("    _pop_loop(frame)")
        self.line("    raise")
        for text in back:
            self.line(text)
        if counted:  # what is left of the budget: the iterations before the next yield
            self.line(f"_b = ({nxt} - {i}) * {weight}")
        if local is not None:
            pad = self.lines[yield_at][: -len(self.lines[yield_at].lstrip())]
            self.lines[yield_at : yield_at] = [pad + text for text in back]
            pad = self.lines[loads_at][: -len(self.lines[loads_at].lstrip())]
            loads = [f"{var} = scope[{name!r}]" for name, var in local.names.items() if var != counter]
            self.lines[loads_at:loads_at] = [pad + text for text in loads]
            self.line(" = ".join(local.names.values()) + " = None  # no extra holder of a list or object")
        self.line("_pop_loop(frame)")
        if mode == "each":
            self.line(f"{src} = _it = None")
            self.dedent()

    def exit_tries(self, down_to: int, *, returning: bool = False) -> None:
        """Leave every try and handler from the innermost down to ``ctx[down_to]``, as the lowering's
        ``_exit_tries``: a try's flag cleared and its finally copied; a handler's ``error`` put back
        (on a ``return`` only when a finally copy further out runs after it)."""
        saved = self.ctx
        for i in range(len(saved) - 1, down_to - 1, -1):
            entry = saved[i]
            if isinstance(entry, _Handler):
                if not returning or any(isinstance(c, _Try) and c.finally_steps for c in saved[down_to:i]):
                    self.restore(entry.prev)
            elif isinstance(entry, _Try):
                self.line(f"{entry.flag} = False")
                if entry.finally_steps:
                    self.ctx = saved[:i]
                    self.block(entry.finally_steps, entry.finally_path)
                    self.ctx = saved

    def prev_error(self) -> str:
        """The local the handler of the next try restores ``error`` from (``compiler._lower``'s prev_error)."""
        return next((c.own for c in reversed(self.ctx) if isinstance(c, _Handler)), "_e0")

    def restore(self, prev: str) -> None:
        self.uses_e0 |= prev == "_e0"
        self.line(f"scope['error'] = {prev}")

    def innermost_loop(self) -> int:
        for i in range(len(self.ctx) - 1, -1, -1):
            if isinstance(self.ctx[i], _Loop):
                return i
        raise AssertionError("break/continue outside a loop passed the lowering")  # pragma: no cover

    def do_break_loop(self, step: dict, path: str, kind: str) -> None:
        self.exit_tries(self.innermost_loop() + 1)
        self.trace_start()  # the VM's LOOP_POP (or JUMP) that carries the step comes after the copies
        self.trace_end(path)
        self.line("break")

    def do_continue_loop(self, step: dict, path: str, kind: str) -> None:
        self.exit_tries(self.innermost_loop() + 1)
        self.trace_start()
        self.trace_end(path)
        self.line("continue")

    def do_return(self, step: dict, path: str, kind: str) -> None:
        arg = self.args[path]
        value = arg[1] if isinstance(arg, tuple) else arg
        through_finally = any(isinstance(c, _Try) and c.finally_steps for c in self.ctx)
        self.trace_start()
        if through_finally and self.traced:  # the traced SET $return evaluates through ``_eval``
            self.evaluate("_r", step.get("value"), f"{path}.value", (path, ("$return", value), value))
            self.trace_end(path, output="_r")
            self.exit_tries(0, returning=True)
            slot = self.return_values.get(path) or Value(lambda s: s["$return"], "(return value)")
            self.site(path, slot, None, "return slot")
        elif through_finally:  # SET $return on the hot path, the finally copies, RETURN (return value)
            self.site(path, ("$return", value))
            self.line(f"_r = {self.expr(step.get('value'), f'{path}.value')}")
            self.exit_tries(0, returning=True)
            slot = self.return_values.get(path) or Value(lambda s: s["$return"], "(return value)")
            self.site(path, slot, None, "return slot")
        else:
            self.evaluate("_r", step.get("value"), f"{path}.value", (path, value, value))
        self.line("_check_limits(_r)")
        if not through_finally:
            self.trace_end(path, output="_r")
        self.line("return _r")

    def do_try_catch(self, step: dict, path: str, kind: str) -> None:
        """The lowering's try_catch: ``error`` put back at each end of the handler but an error."""
        catch, fin = step.get("catch_block"), step.get("finally_block")
        fin_path = f"{path}.finally_block"
        n = self.fresh("")
        flag, err = f"_a{n}", f"_e{n}"
        prev = self.prev_error()
        self.trace_start()  # TRY_PUSH carries the step
        self.trace_end(path)
        self.line(f"{flag} = True")
        self.line("try:")
        self.indent()
        self.ctx.append(_Try(flag, fin, fin_path))
        self.block(step.get("try_block"), f"{path}.try_block")
        self.ctx.pop()
        self.dedent()
        self.line("except _Exception as _e:")
        self.indent()
        self.catch_error(flag, err)
        self.ctx.append(_Handler(err, prev))
        if catch and fin:
            flag2 = f"_a{n}c"
            self.line(f"{flag2} = True")
            self.line("try:")
            self.indent()
            self.ctx.append(_Try(flag2, fin, fin_path))
            self.block(catch, f"{path}.catch_block")
            self.ctx.pop()
            self.dedent()
            self.line("except _Exception as _e:")
            self.indent()
            self.catch_error(flag2, err)
            self.reraise(fin, fin_path, path, err)
            self.dedent()
            self.line("else:")
            self.indent()
            self.block(fin, fin_path)
            self.restore(prev)
            self.dedent()
        elif fin:
            self.reraise(fin, fin_path, path, err)
        else:
            if catch:
                self.block(catch, f"{path}.catch_block")
            self.restore(prev)
        self.ctx.pop()
        self.dedent()
        if fin:
            self.line("else:")
            self.indent()
            self.block(fin, fin_path)
            self.dedent()

    def catch_error(self, flag: str, err: str) -> None:
        self.line(f"if not {flag}:  # raised by a finally copy on the way out: not ours")
        self.line("    raise")
        self.line(f"{err} = _error_at(_e, _S[_at])")
        if self.traced:  # the VM reports the error where it catches it, before the handler runs
            self.line(f"_tr.step(_S[_at][0], _K[_at], _time(), 0.0, None, None, {err})")
            self.line("_busy = False")
        self.line(f"scope['error'] = {err}")

    def reraise(self, fin: list[Any], fin_path: str, path: str, err: str) -> None:
        self.block(fin, fin_path)
        self.site(path, None, None, "reraise")
        self.line(f"raise _reraise({err})")

    def do_throw_error(self, step: dict, path: str, kind: str) -> None:
        arg = self.args[path]
        self.site(path, arg)
        self.line(f"_throw(frame, {self.const(arg)})")

    def do_wait(self, step: dict, path: str, kind: str) -> None:
        self.call_handler("_wait", path)

    def do_custom_function(self, step: dict, path: str, kind: str) -> None:
        self.call_handler("_call", path)

    def do_log(self, step: dict, path: str, kind: str) -> None:
        self.call_handler("_log", path)

    def do_effect(self, step: dict, path: str, kind: str) -> None:
        """``await _EFFECTS[kind](ctx, {field: value})``, what the VM's ``_a_effect`` does.

        Each field is evaluated in the VM's order into a local of its own, under
        a site naming that field's expression (as ``_eval`` names it); a constant
        that surely evaluates needs none. Errors of the handler itself are the
        step's, unnamed, as on the VM. Inside a loop body that keeps variables in
        locals (never the case today: such bodies only compute) the VM's handler
        runs instead.
        """
        if kind not in EFFECT_STEPS:  # pragma: no cover - the lowering refused it first
            raise AssertionError(f"step kind {kind!r} has no native form")
        if self.local is not None:  # pragma: no cover - effects keep a loop's variables in the scope
            self.call_handler("_effect", path)
            return
        arg = self.args[path]
        _, fields, return_as = arg
        items = []
        self.trace_start()
        for key, value in fields.items():
            items.append(f"{key!r}: {self.effect_field(path, arg, key, value)}")
        self.site(path, arg, None, "call")
        if self.traced:  # the VM's _a_effect reports the evaluated fields and the result
            self.line(f"_ev = {{{', '.join(items)}}}")
            self.line(f"_res = await _EFFECTS[{kind!r}](ctx, _ev)")
            if return_as is not None:
                self.line(f"scope[{return_as!r}] = _res")
            self.trace_end(path, "_ev", "_res")
            self.line("_ev = _res = None")
            return
        if return_as is not None:
            self.line(f"scope[{return_as!r}] = await _EFFECTS[{kind!r}](ctx, {{{', '.join(items)}}})")
        elif kind in RESULT_OPTIONAL:  # nobody reads the result: the handler need not build it
            self.line(f"await _EFFECTS[{kind!r}](ctx, {{{', '.join(items)}}}, False)")
        else:
            self.line(f"await _EFFECTS[{kind!r}](ctx, {{{', '.join(items)}}})")

    def effect_field(self, path: str, arg: Any, key: str, value: Value) -> str:
        """Emit the evaluation of one effect field; return the name holding its value."""
        safe = value.constant and _evaluates(value)
        if safe and type(value.fn({})) in _SCALARS:  # immutable: one object serves every call
            return self.const(value.fn({}))
        # the lowering's value, called: its code is compiled once, at its first
        # call; generating the field's code again here, inline, saved a call per
        # field but doubled the load time of stacks full of effect steps. A field
        # that only reads a variable ("{{ item }}") is inlined: its code is that read
        target = self.fresh("_e")
        self.site(path, arg, value, f"field {key}")
        read = _variable_read(value, path)
        self.line(f"{target} = {read if read is not None else self.const(value) + '.fn(scope)'}")
        self.holders.add(target)
        return target

    def call_handler(self, handler: str, path: str) -> None:
        """Steps that await: the VM's own handler, with the instruction's argument."""
        arg = self.args[path]
        self.site(path, arg)
        if not self.traced:
            self.line(f"await {handler}(frame, ctx, {self.const(arg)}, {path!r})")
            return
        # the handler leaves the step's inputs/output in frame.t_in/t_out, as in the VM;
        # cleared after, so no value is held past its step (``_update``'s in-place test)
        self.trace_start()
        self.line("frame.t_in = frame.t_out = None")
        self.line(f"await {handler}(frame, ctx, {self.const(arg)}, {path!r})")
        self.trace_end(path, "frame.t_in", "frame.t_out")
        self.line("frame.t_in = frame.t_out = None")


#: a template that is one variable and nothing else; ``field_code`` confirms it
_ONE_NAME = re.compile(r"\{\{\s*[A-Za-z_][A-Za-z0-9_]*\s*\}\}")
_SCOPE_READ = re.compile(r"scope\['[A-Za-z_][A-Za-z0-9_]*'\]")


def _variable_read(value: Value, path: str) -> str | None:
    """``scope['name']`` when ``value`` is exactly one variable's value, else None.

    Such a field's compiled function is that one read, and the native code
    saves the call; the error of an unset variable is the same ``KeyError``,
    named by the same site.
    """
    source = value.source
    if value.constant or type(source) is not str or not _ONE_NAME.fullmatch(source):
        return None
    stmts, result = field_code(source, path)
    return result if not stmts and _SCOPE_READ.fullmatch(result) else None


def _fits(result: str) -> str:
    """A condition computing ``result`` into ``_n`` that holds when update_variable may store
    it inline: a whole number within the bit limit, or a finite float. Else ``_update`` runs
    (add/sub), which refuses the result as the VM does.

    A constant step of at most 2**53 needs no check (``_small``): a whole number would
    need 2**203 such steps to pass 256 bits, and a finite float plus such a step rounds
    to a finite float.
    """
    # two comparisons, not a chained one: about 19 ns against 48 (a chain copies and swaps)
    return f"((_n := {result}) < _IHI and _n > _ILO or _n.__class__ is float and _FLO <= _n <= _FHI)"


def _small(number: str) -> bool:
    """Whether the literal ``number`` is a step that cannot carry a number past a limit."""
    try:
        return abs(float(number)) <= 2**53
    except ValueError:
        return False


def _evaluates(value: Value) -> bool:
    """True when a constant value computes without error (it then always will: constants are pure)."""
    try:
        value.fn({})
    except Exception:  # noqa: BLE001 - any failure: keep it for run time, where it is reported
        return False
    return True


def _literal_number(value: Value) -> str | None:
    """The source of a constant int/float ``value`` (finite), else None."""
    if not (value.constant and _evaluates(value)):
        return None
    got = value.fn({})
    if type(got) is int or (type(got) is float and math.isfinite(got)):
        return repr(got)
    return None


def _bare(cond: str) -> str:
    """``(True if X else False)`` as ``X`` for an ``if``: the same truth test, one step less."""
    if cond.startswith("(True if ") and cond.endswith(" else False)"):
        return cond[len("(True if ") : -len(" else False)")]
    return cond


#: a temporary (``_t1``...) not inside a longer name or just after a quote
_TEMP = re.compile(r"(?<![\w'\"])_t\d+")


def _temps(stmts: tuple[str, ...], result: str) -> set[str]:
    """Names of the walrus/assignment temporaries (``_t1``...) the expression code binds."""
    found: set[str] = set()
    for text in (*stmts, result):
        if "_t" in text:
            found.update(_TEMP.findall(text))
    return found


def _natural(name: str) -> tuple[int, str]:
    digits = "".join(c for c in name if c.isdigit())
    return (int(digits) if digits else 0, name)


def _weight(steps: Any) -> int:
    """About the instructions the VM runs for ``steps``: the clock-check countdown's unit.

    A filter in a field weighs ``FILTER_WEIGHT`` more: it may walk a whole list,
    so a loop of such steps reads the clock every iteration or two.
    """
    total = 0
    for step in steps or ():
        total += 1
        if not isinstance(step, dict):  # a value's list that merely starts with an object: [{}, null]
            continue
        for key, val in step.items():
            if isinstance(val, list) and key != "array" and val and isinstance(val[0], dict):
                total += 1 + _weight(val)
            elif key == "cases" and isinstance(val, dict):
                total += sum(1 + _weight(v) for v in val.values() if isinstance(v, list))
            else:
                total += FILTER_WEIGHT * _pipes(val)
    return total


def _pipes(value: Any) -> int:
    """How many ``|`` the texts of a field's value hold (each may be a filter)."""
    if isinstance(value, str):
        return value.count("|")
    if isinstance(value, dict):
        return sum(_pipes(v) for v in value.values())
    if isinstance(value, list):
        return sum(_pipes(v) for v in value)
    return 0


def _render(gen: _Gen, name: str) -> str:
    header = [
        f"async def native(frame, ctx):  # {name}{' (traced)' if gen.traced else ''}",
        "    scope = frame.scope",
        *(["    _e0 = scope['error']  # error as the run starts: restored after a try_catch"] if gen.uses_e0 else []),
        *(["    _tr = ctx.tracer", "    _busy = False"] if gen.traced else []),
        "    _at = 0",
        "    _b = _BUDGET",
        "    _due = _perf() + _SLICE",
        "    try:",
    ]
    if gen.traced:  # an error no catch takes: reported, as the VM does, then the run fails
        footer = [
            "    except _Cancelled:  # the run's timeout or a cancel: the step it stopped is traced",
            "        if _busy:",
            "            _tr.step(_S[_at][0], _K[_at], _t0, _perf() - _p0, None, None, _interrupted(_S[_at][0]))",
            "        raise",
            "    except _Exception as _e:",
            "        _e = _error_at(_e, _S[_at])",
            "        _tr.step(_S[_at][0], _K[_at], _time(), 0.0, None, None, _e)",
            "        raise _RunFailed(_e) from None",
            "    return None",
        ]
    else:
        footer = [
            "    except _Exception as _e:",
            "        raise _RunFailed(_error_at(_e, _S[_at])) from None",
            "    return None",
        ]
    return "\n".join(header + gen.lines + footer) + "\n"


def _generate(stack: list[Any], program: Program, path: str, traced: bool = False) -> tuple[str, dict[str, Any]] | None:
    gen = _Gen(program, path, traced)
    gen.depth = 2
    gen.block(stack, path)
    if gen.max_blocks + 2 > _MAX_PY_BLOCKS:
        return None
    ns = dict(EXPRESSION_NAMESPACE, **_HELPERS, **gen.ns)
    ns["_S"] = tuple(gen.sites) or ((path, None, None),)
    ns["_K"] = tuple(gen.site_kinds) or ("",)
    if traced:
        # a traced step costs about what the VM's dispatch of it did (the tracer's
        # summaries dominate), so the VM's yield budget keeps the VM's slices of time
        ns["_BUDGET"] = INSTRUCTIONS_PER_CHECK
    return _render(gen, program.name), ns


class _Native:
    """The native functions of one stack, each generated and compiled at its first run.

    Most loaded tasks run rarely, and generating the source cost about as
    much as the rest of loading (1,000 seed-like files: 0.66 of 1.64 s under
    the profiler), so both steps wait for the first call (or the engine's
    warm-up). A stack nesting deeper than one Python function allows, or
    past a limit of CPython's compiler, runs on the VM instead: the same
    semantics, slower. Calling returns the coroutine of the compiled
    ``native(frame, ctx)`` -- no extra frame per run.

    ``traced`` is the variant for runs with a tracer (request history on):
    the same code plus the VM's ``tracer.step`` calls. It is generated at the
    first traced run, so the private copy of the stack is kept until both
    variants exist (a task runs with history on or off, rarely both).
    """

    __slots__ = ("_stack", "_program", "_path", "_made", "_made_traced", "name", "fn", "traced_fn")

    def __init__(self, stack: list[Any], program: Program, path: str) -> None:
        self._stack = stack
        self._program = program
        self._path = path
        self._made: tuple[str, dict[str, Any]] | None = None
        self._made_traced: tuple[str, dict[str, Any]] | None = None
        self.name = program.name
        self.fn: NativeFunction | None = None
        self.traced_fn: NativeFunction | None = None

    @property
    def source(self) -> str | None:
        """The generated Python source; None when the stack nests too deep for one function."""
        made = self._generated(False)
        return None if made is None else made[0]

    @property
    def traced_source(self) -> str | None:
        """The traced variant's source; None when the stack nests too deep for one function."""
        made = self._generated(True)
        return None if made is None else made[0]

    def _generated(self, traced: bool) -> tuple[str, dict[str, Any]] | None:
        made = self._made_traced if traced else self._made
        if made is None and self._stack is not None:
            made = _generate(self._stack, self._program, self._path, traced)
            if traced:
                self._made_traced = made
            else:
                self._made = made
            if made is None or (self._made is not None and self._made_traced is not None):
                self._stack = self._program = None  # type: ignore[assignment]  # done with them
        return made

    def __call__(self, frame: Any, ctx: Any) -> Any:
        fn = self.fn
        if fn is None:
            fn = self.fn = self._compile(False)
        return fn(frame, ctx)

    def traced(self, frame: Any, ctx: Any) -> Any:
        """The coroutine of the traced variant: the same run, each step reported to ``ctx.tracer``."""
        fn = self.traced_fn
        if fn is None:
            fn = self.traced_fn = self._compile(True)
        return fn(frame, ctx)

    def _compile(self, traced: bool = False) -> NativeFunction:
        made = self._generated(traced)
        if made is None:
            return _run  # nests deeper than one Python function allows
        source, ns = made
        try:
            code = compile(source, f"<native {self.name}{' traced' if traced else ''}>", "exec")
        except (SyntaxError, RecursionError, MemoryError):  # past a limit of CPython's compiler
            return _run
        exec(code, ns)
        fn = ns["native"]
        fn.__qualname__ = f"native[{self.name}]{'.traced' if traced else ''}"
        return fn


def generate_native(stack: list[Any], program: Program, *, path: str = "stack") -> NativeFunction:
    """``native(frame, ctx)``: a coroutine running ``stack`` like the VM runs ``program``.

    ``program`` is the lowering of ``stack`` (without diagnostics): the native
    code reuses its instruction arguments for error objects and handlers.
    The source is generated and compiled at the first call; a stack nesting
    deeper than Python allows in one function is run by the VM then.
    """
    return _Native(_snapshot(stack), program, path)


def _snapshot(stack: list[Any]) -> list[Any]:
    """A private copy of ``stack``: the native code is generated at the first run,
    and must describe the stack as it was lowered even if the caller's dicts
    change after loading (msgspec's round trip: about 15 µs for a 3 KB stack,
    a deep copy where it cannot encode a value)."""
    try:
        return msgspec.json.decode(msgspec.json.encode(stack))
    except (msgspec.MsgspecError, TypeError, ValueError, OverflowError):
        return copy.deepcopy(stack)


def native_source(stack: list[Any], name: str = "stack", *, traced: bool = False) -> str:
    """The Python source ``generate_native`` compiles for ``stack`` (for ``--native`` dumps);
    with ``traced``, the variant that runs with request history on."""
    from compiler._errors import CompileError
    from compiler._lower import lower_stack

    low = lower_stack(stack, name)
    if low.diagnostics:
        raise CompileError(low.diagnostics)
    made = _generate(stack, low.program, "stack", traced)
    if made is None:
        raise CompileError(
            f"stack '{name}' nests deeper than {_MAX_PY_BLOCKS} blocks: it has no native form and runs on the VM"
        )
    return made[0]
