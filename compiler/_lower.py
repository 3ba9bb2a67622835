"""Lowering: a JSON stack (list of steps) into a flat ``runtime.Program``.

Control flow becomes jumps over one instruction list. ``break``, ``continue``
and ``return`` that leave a ``try`` with a ``finally`` get a copy of the
finally block inlined on their way out, the way CPython compiles them, so the
VM never needs to remember pending jumps. Every instruction keeps the JSON path
of its step.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from compiler._errors import CompileError, Diagnostic, did_you_mean
from compiler._expr import BUILTIN_NAMES, NameRef, compile_condition, compile_value
from compiler._native import generate_native
from compiler._steps import COMMON_FIELDS, EFFECT_STEPS, STEPS, FieldKind
from runtime import Instr, Op, Program, Value

__all__ = ("lower_stack", "Lowered", "IDENTIFIER")

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_RETURN_SLOT = "$return"


@dataclass(slots=True)
class Lowered:
    """A lowered stack plus what the loader checks across definitions."""

    program: Program
    diagnostics: list[Diagnostic]
    #: (function name, JSON path of the calling step)
    calls: list[tuple[str, str]] = field(default_factory=list)


class _Label:
    __slots__ = ("pc",)

    def __init__(self) -> None:
        self.pc = -1


@dataclass(slots=True)
class _Loop:
    head: _Label
    end: _Label


@dataclass(slots=True)
class _Try:
    finally_steps: list[Any] | None
    finally_path: str


@dataclass(slots=True)
class _Handler:
    """A catch block, or a finally block run after an error: ``error`` is the slot ``own``.

    Leaving it other than by an error puts ``error`` back from the slot ``prev``.
    """

    own: str
    prev: str


#: the slot holding ``error`` as the run started (see ``_Lowering.prev_error``)
_ERROR0 = "$error0"


def _read(slot: str) -> Value:
    return Value(lambda s, _k=slot: s[_k], slot)


def _const(value: Any, source: str) -> Value:
    return Value(lambda _s, _v=value: _v, source, True)


def _collect_defined(steps: Any, out: set[str]) -> None:
    """Names any step assigns (create_variable, return_as), wherever it stands."""
    if not isinstance(steps, list):
        return
    for step in steps:
        if not isinstance(step, dict):
            continue
        kind = step.get("function")
        name = step.get("name")
        if kind == "create_variable" and isinstance(name, str):
            out.add(name)
        ret = step.get("return_as")
        if isinstance(ret, str):
            out.add(ret)
        for key, val in step.items():
            if isinstance(val, list):
                _collect_defined(val, out)
            elif key == "cases" and isinstance(val, dict):
                for branch in val.values():
                    _collect_defined(branch, out)


def _finally_outside(ctx: list[Any], down_to: int, i: int) -> bool:
    """Whether a try with a finally block sits in ``ctx[down_to:i]`` (its copy runs after ``ctx[i]`` is left)."""
    return any(isinstance(c, _Try) and c.finally_steps for c in ctx[down_to:i])


class _Lowering:
    def __init__(self, defined: set[str]) -> None:
        self.code: list[list[Any]] = []
        self.diags: list[Diagnostic] = []
        self.defined = defined
        self.reads: list[NameRef] = []
        self.calls: list[tuple[str, str]] = []
        self.ctx: list[_Loop | _Try | _Handler] = []
        self.try_count = 0
        self.labels: list[_Label] = []
        self.uses_error0 = False

    # -- emission -----------------------------------------------------------------
    def emit(self, op: Op, arg: Any, path: str, kind: str | None = None) -> None:
        self.code.append([op, arg, path, kind])

    def mark(self, label: _Label) -> None:
        label.pc = len(self.code)
        self.labels.append(label)

    def error(self, message: str, path: str, hint: str | None = None) -> None:
        self.diags.append(Diagnostic(message, path, hint=hint))

    def value(self, raw: Any, path: str, *, condition: bool = False) -> Value:
        try:
            compiled, refs = (compile_condition if condition else compile_value)(raw, path)
        except CompileError as exc:
            self.diags.extend(exc.diagnostics)
            return _const(None, "<invalid>")
        self.reads.extend(refs)
        return compiled

    # -- steps --------------------------------------------------------------------
    def block(self, steps: Any, path: str) -> None:
        if steps is None:
            return
        if not isinstance(steps, list):
            self.error(f"expected a list of steps, got {type(steps).__name__}", path)
            return
        for i, step in enumerate(steps):
            self.step(step, f"{path}[{i}]")

    def step(self, step: Any, path: str) -> None:
        if not isinstance(step, dict):
            self.error(f"a step must be an object, got {type(step).__name__}", path)
            return
        kind = step.get("function")
        if not isinstance(kind, str):
            self.error("a step needs a 'function' naming its kind", f"{path}.function")
            return
        spec = STEPS.get(kind)
        if spec is None:
            self.error(
                f"unknown step kind '{kind}'", f"{path}.function", did_you_mean(kind, STEPS)
            )
            return
        ok = True
        for key in step:
            if key not in spec.fields and key not in COMMON_FIELDS:
                ok = False
                self.error(
                    f"unknown field '{key}' for step '{kind}'",
                    f"{path}.{key}",
                    did_you_mean(key, list(spec.fields)) or f"'{kind}' takes: {', '.join(spec.fields) or 'no fields'}",
                )
        for key in spec.required:
            if key not in step:
                ok = False
                self.error(f"step '{kind}' needs the field '{key}'", f"{path}.{key}")
        for key, kind_of in spec.fields.items():
            if key not in step:
                continue
            val = step[key]
            if kind_of is FieldKind.NAME and not (isinstance(val, str) and IDENTIFIER.match(val)):
                ok = False
                self.error(f"'{key}' must be a plain name like my_var, got {val!r}", f"{path}.{key}")
            elif key == "return_as" and val in BUILTIN_NAMES:  # as create_variable refuses them
                ok = False
                self.error(f"'{val}' is a built-in name; choose another variable name", f"{path}.{key}")
            elif kind_of is FieldKind.CHOICE and val not in spec.choices[key]:
                ok = False
                self.error(
                    f"'{key}' must be one of {', '.join(spec.choices[key])}, got {val!r}",
                    f"{path}.{key}",
                    did_you_mean(str(val), spec.choices[key]),
                )
        if step.get("disabled") is True or not ok:
            return
        getattr(self, f"lower_{kind}", self.lower_effect)(step, path, kind)

    def fields(self, step: dict[str, Any], path: str, kind: str, names: tuple[str, ...]) -> dict:
        spec = STEPS[kind]
        out: dict[str, Value] = {}
        for key in names:
            if key in step:
                out[key] = self.value(step[key], f"{path}.{key}")
            elif key in spec.defaults:
                out[key] = _const(spec.defaults[key], repr(spec.defaults[key]))
        return out

    def lower_create_variable(self, step: dict, path: str, kind: str) -> None:
        name = step["name"]
        if name in BUILTIN_NAMES:
            self.error(f"'{name}' is a built-in name; choose another variable name", f"{path}.name")
            return
        self.emit(Op.SET, (name, self.value(step.get("value"), f"{path}.value")), path, kind)

    def lower_update_variable(self, step: dict, path: str, kind: str) -> None:
        name = step["name"]
        if name not in self.defined:
            self.error(
                f"update_variable of '{name}', which no step defines",
                f"{path}.name",
                did_you_mean(name, self.defined) or "define it first with create_variable",
            )
            return
        op = step.get("operation", "set")
        self.emit(Op.UPDATE, (name, op, self.value(step.get("value"), f"{path}.value")), path, kind)

    def lower_conditional(self, step: dict, path: str, kind: str) -> None:
        cond = self.value(step["condition"], f"{path}.condition", condition=True)
        other, end = _Label(), _Label()
        self.emit(Op.JUMP_IF_NOT, (cond, other), path, kind)
        self.block(step.get("true_branch"), f"{path}.true_branch")
        self.emit(Op.JUMP, end, path)
        self.mark(other)
        self.block(step.get("false_branch"), f"{path}.false_branch")
        self.mark(end)

    def lower_switch(self, step: dict, path: str, kind: str) -> None:
        cases = step.get("cases") or {}
        if not isinstance(cases, dict):
            self.error("'cases' must be an object of {value: [steps]}", f"{path}.cases")
            return
        labels = {str(key): _Label() for key in cases}
        default, end = _Label(), _Label()
        self.emit(Op.SWITCH, (self.value(step["value"], f"{path}.value"), labels, default), path, kind)
        for key, steps in cases.items():
            self.mark(labels[str(key)])
            self.block(steps, f"{path}.cases.{key}")
            self.emit(Op.JUMP, end, path)
        self.mark(default)
        self.block(step.get("default"), f"{path}.default")
        self.mark(end)

    def lower_loop(self, step: dict, path: str, kind: str) -> None:
        given = [k for k in ("array", "condition", "times") if k in step]
        if len(given) != 1:
            self.error(
                "a loop takes exactly one of 'array' (for-each), 'condition' (while) or 'times'",
                path,
                f"it has {', '.join(given) or 'none of them'}",
            )
            return
        mode = given[0]
        source = self.value(step[mode], f"{path}.{mode}", condition=mode == "condition")
        loop = _Loop(_Label(), _Label())
        self.emit(Op.LOOP_START, ({"array": "each", "condition": "while", "times": "times"}[mode], source, loop.end), path, kind)
        self.mark(loop.head)
        self.emit(Op.LOOP_NEXT, loop.end, path)
        self.ctx.append(loop)
        self.block(step.get("operations"), f"{path}.operations")
        self.ctx.pop()
        self.emit(Op.JUMP, loop.head, path)
        self.mark(loop.end)

    def _unwind_to_loop(self, path: str, kind: str) -> _Loop | None:
        """Emit the exits of every try between here and the innermost loop."""
        for i in range(len(self.ctx) - 1, -1, -1):
            if isinstance(self.ctx[i], _Loop):
                loop = self.ctx[i]
                self._exit_tries(i + 1, path)
                return loop
        self.error(f"'{kind}' outside of any loop", path, "use it inside a loop's operations")
        return None

    def _exit_tries(self, down_to: int, path: str, *, returning: bool = False) -> None:
        """Leave every try and handler from the innermost down to ``ctx[down_to]``.

        A try pops and runs a copy of its finally block; a handler (catch, or
        finally after an error) puts ``error`` back -- on a ``return`` only when
        a finally copy further out will run and could read it.
        """
        saved = self.ctx
        for i in range(len(saved) - 1, down_to - 1, -1):
            entry = saved[i]
            if isinstance(entry, _Handler):
                if not returning or _finally_outside(saved, down_to, i):
                    self.restore(entry.prev, path)
            elif isinstance(entry, _Try):
                self.emit(Op.TRY_POP, None, path, None)
                if entry.finally_steps:
                    self.ctx = saved[:i]
                    self.block(entry.finally_steps, entry.finally_path)
                    self.ctx = saved

    def prev_error(self) -> str:
        """The slot the handler of the next try restores ``error`` from.

        Only try_catch sets ``error`` (a stack cannot assign it: it is a
        built-in name), and each puts it back on leaving its handler, so
        before a try it is the error of the innermost handler around it (its
        slot), or at the top what it was as the run started (``$error0``,
        saved by the first instruction): no work when the try starts.
        """
        return next((c.own for c in reversed(self.ctx) if isinstance(c, _Handler)), _ERROR0)

    def restore(self, prev: str, path: str) -> None:
        self.uses_error0 |= prev == _ERROR0
        self.emit(Op.SET, ("error", _read(prev)), path, None)

    def lower_break_loop(self, step: dict, path: str, kind: str) -> None:
        loop = self._unwind_to_loop(path, kind)
        if loop is not None:
            self.emit(Op.LOOP_POP, None, path, kind)
            self.emit(Op.JUMP, loop.end, path)

    def lower_continue_loop(self, step: dict, path: str, kind: str) -> None:
        loop = self._unwind_to_loop(path, kind)
        if loop is not None:
            self.emit(Op.JUMP, loop.head, path, kind)

    def lower_return(self, step: dict, path: str, kind: str) -> None:
        value = self.value(step.get("value"), f"{path}.value")
        if not any(isinstance(c, _Try) and c.finally_steps for c in self.ctx):
            self.emit(Op.RETURN, value, path, kind)
            return
        self.emit(Op.SET, (_RETURN_SLOT, value), path, kind)
        self._exit_tries(0, path, returning=True)
        self.emit(Op.RETURN, Value(lambda s: s[_RETURN_SLOT], "(return value)"), path)

    def lower_try_catch(self, step: dict, path: str, kind: str) -> None:
        """The try block under TRY_PUSH; its handler: catch and/or finally (+ RERAISE).

        Each end of the handler other than an error (the fall-through after
        the catch, break/continue out of the catch or finally) puts ``error``
        back (``prev_error``): it is this try's error only inside its catch and
        finally blocks.
        """
        self.try_count += 1
        slot = f"$error{self.try_count}"
        catch, fin = step.get("catch_block"), step.get("finally_block")
        fin_path = f"{path}.finally_block"
        prev = self.prev_error()
        handler, end = _Label(), _Label()
        self.emit(Op.TRY_PUSH, (handler, slot), path, kind)
        self.ctx.append(_Try(fin, fin_path))
        self.block(step.get("try_block"), f"{path}.try_block")
        self.ctx.pop()
        self.emit(Op.TRY_POP, None, path)
        self.block(fin, fin_path)
        self.emit(Op.JUMP, end, path)
        self.mark(handler)
        self.ctx.append(_Handler(slot, prev))
        if catch and fin:
            handler2 = _Label()
            self.emit(Op.TRY_PUSH, (handler2, slot), path)
            self.ctx.append(_Try(fin, fin_path))
            self.block(catch, f"{path}.catch_block")
            self.ctx.pop()
            self.emit(Op.TRY_POP, None, path)
            self.block(fin, fin_path)
            self.restore(prev, path)
            self.emit(Op.JUMP, end, path)
            self.mark(handler2)
            self.block(fin, fin_path)
            self.emit(Op.RERAISE, slot, path)
        elif fin:
            self.block(fin, fin_path)
            self.emit(Op.RERAISE, slot, path)
        else:
            self.block(catch, f"{path}.catch_block")
            self.restore(prev, path)
        self.ctx.pop()
        self.mark(end)

    def lower_throw_error(self, step: dict, path: str, kind: str) -> None:
        f = self.fields(step, path, kind, ("message", "type"))
        self.emit(Op.THROW, (f["message"], f["type"]), path, kind)

    def lower_wait(self, step: dict, path: str, kind: str) -> None:
        self.emit(Op.WAIT, self.value(step["duration"], f"{path}.duration"), path, kind)

    def lower_custom_function(self, step: dict, path: str, kind: str) -> None:
        name = step["name"]
        self.calls.append((name, f"{path}.name"))
        inputs = self.value(step.get("inputs", {}), f"{path}.inputs")
        mode = step.get("execution_mode", "sync")
        self.emit(Op.CALL, (name, inputs, step.get("return_as"), mode), path, kind)

    def lower_log(self, step: dict, path: str, kind: str) -> None:
        f = self.fields(step, path, kind, ("message", "level"))
        self.emit(Op.LOG, (f["message"], f["level"]), path, kind)

    def lower_effect(self, step: dict, path: str, kind: str) -> None:
        if kind not in EFFECT_STEPS:  # pragma: no cover - the catalogue and this module disagree
            raise AssertionError(f"step kind {kind!r} has no lowering")
        names = tuple(k for k in STEPS[kind].fields if k != "return_as" and STEPS[kind].fields[k] is not FieldKind.CHOICE)
        f = self.fields(step, path, kind, names)
        for key in STEPS[kind].choices:
            f[key] = _const(step.get(key, STEPS[kind].defaults.get(key)), key)
        self.emit(Op.EFFECT, (kind, f, step.get("return_as")), path, kind)

    # -- finishing ----------------------------------------------------------------
    def check_names(self, extra: frozenset[str]) -> None:
        known = self.defined | BUILTIN_NAMES | extra
        for ref in self.reads:
            if ref.name not in known:
                self.diags.append(
                    Diagnostic(
                        f"unknown name '{ref.name}'",
                        ref.path,
                        column=ref.column,
                        hint=did_you_mean(ref.name, known - {"$return"})
                        or "define it with create_variable or return_as",
                    )
                )

    def _peephole(self) -> None:
        """Drop bookkeeping jumps to the next instruction; thread jumps that land on jumps.

        Both come from branch ends (a true branch that falls into the loop's
        back edge) and cost a dispatch per loop iteration.
        """
        labels = self.labels
        targets = {id(lb): lb for lb in labels}
        keep, new_index = [], []
        for i, ins in enumerate(self.code):
            new_index.append(len(keep))
            op, arg, _path, kind = ins
            if op is Op.JUMP and kind is None and isinstance(arg, _Label) and arg.pc == i + 1:
                continue
            keep.append(ins)
        new_index.append(len(keep))
        for lb in targets.values():
            lb.pc = new_index[lb.pc]
        self.code = keep
        for ins in self.code:  # a jump to a jump goes straight to the final target
            op, arg = ins[0], ins[1]
            if op is Op.JUMP and isinstance(arg, _Label):
                seen = 0
                while seen < 8 and arg.pc < len(self.code):
                    nxt = self.code[arg.pc]
                    if nxt[0] is not Op.JUMP or nxt[3] is not None or not isinstance(nxt[1], _Label):
                        break
                    arg, seen = nxt[1], seen + 1
                ins[1] = arg

    def instructions(self, root: str) -> tuple[Instr, ...]:
        if self.uses_error0:  # ``error`` as the run starts, for the restores outside any handler
            self.code.insert(0, [Op.SET, (_ERROR0, _read("error")), root, None])
            for label in self.labels:
                label.pc += 1
        self._peephole()

        def resolve(arg: Any) -> Any:
            if isinstance(arg, _Label):
                return arg.pc
            if isinstance(arg, tuple):
                return tuple(resolve(a) for a in arg)
            if isinstance(arg, dict) and any(isinstance(v, _Label) for v in arg.values()):
                return {k: resolve(v) for k, v in arg.items()}
            return arg

        return tuple(Instr(op, resolve(arg), path, kind) for op, arg, path, kind in self.code)


def lower_stack(
    stack: Any, name: str, *, path: str = "stack", file: str | None = None,
    extra_names: frozenset[str] = frozenset(),
) -> Lowered:
    """Lower ``stack`` (the JSON list of steps) into a program, collecting every problem."""
    defined: set[str] = set()
    _collect_defined(stack, defined)
    low = _Lowering(defined)
    if not isinstance(stack, list):
        low.error(f"'stack' must be a list of steps, got {type(stack).__name__}", path)
    else:
        low.block(stack, path)
    low.emit(Op.END, None, path)
    low.check_names(extra_names)
    program = Program(name, low.instructions(path), file, frozenset(defined))
    if not low.diags:
        program = dataclasses.replace(program, native=generate_native(stack, program, path=path))
    diags = [Diagnostic(d.message, d.path, d.file or file, d.column, d.hint) for d in low.diags]
    return Lowered(program, diags, low.calls)
