"""Function calls from stacks: compiled function stacks and registered Python callables.

A sync call runs inside the calling run (its steps join the caller's trace);
an async call becomes a separate durable run that the engine starts, and the
caller receives its run id at once.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio

from compiler import Function
from compiler._errors import did_you_mean
from runtime import CronstackError, RunContext, RunError
from runtime._limits import MAX_NESTING_DEPTH
from runtime._vm import execute

if TYPE_CHECKING:
    from engine._engine import Engine

__all__ = ("FunctionSet", "FunctionTable", "PyFunction")

PyFunction = Callable[[dict[str, Any]], Any] | Callable[[dict[str, Any]], Awaitable[Any]]


class FunctionTable:
    """The engine's functions: the stack functions of the definitions loaded last, and the
    registered Python functions. Implements ``runtime.Functions`` with the current ones.

    Each load of the definitions is one ``FunctionSet`` (``current``); a run
    keeps the set it started with (a reference, nothing copied), so a reload
    that removes or changes a function leaves the runs in progress calling
    the functions they started with. Assigning ``stacks`` (as ``reload``
    does, after ``definitions``) makes a new set; the mapping given is never
    changed in place.
    """

    def __init__(self, engine: Engine, functions: dict[str, Function]) -> None:
        self._engine = engine
        self.python: dict[str, PyFunction] = {}
        self.current = FunctionSet(self, functions, _tasks_of(engine), None)

    @property
    def stacks(self) -> dict[str, Function]:
        """The stack functions of the definitions loaded last."""
        return self.current.stacks

    @stacks.setter
    def stacks(self, functions: dict[str, Function]) -> None:
        previous = self.current
        previous.previous = None  # only one set back is kept (see ``set_for``)
        self.current = FunctionSet(self, functions, _tasks_of(self._engine), previous)

    def set_for(self, defn: Any) -> FunctionSet:
        """The set loaded with ``defn`` (a task or function definition): the current one,
        or the one before it when a reload came between reading ``defn`` and starting its
        run (the write of the run's row); the current one for anything else."""
        current = self.current
        for candidate in (current, current.previous):
            if candidate is not None and (
                candidate.tasks.get(defn.name) is defn or candidate.stacks.get(defn.name) is defn
            ):
                return candidate
        return current

    def names(self) -> set[str]:
        return self.current.names()

    def register(self, name: str, fn: PyFunction) -> None:
        if not callable(fn):
            raise TypeError(f"register_function({name!r}, ...) needs a callable")
        if name in self.stacks:
            raise ValueError(f"'{name}' is already a function defined in {self.stacks[name].file or 'the project'}")
        self.python[name] = fn

    async def call(self, name: str, inputs: dict[str, Any], ctx: RunContext) -> Any:
        return await self.current.call(name, inputs, ctx)

    async def start(self, name: str, inputs: dict[str, Any], ctx: RunContext) -> Any:
        return await self.current.start(name, inputs, ctx)


class FunctionSet:
    """The functions of one load of the definitions, as the runs started on it see them.

    Implements ``runtime.Functions``. Registered Python functions are shared
    by every set (they are not reloaded).
    """

    __slots__ = ("table", "stacks", "tasks", "previous")

    def __init__(
        self,
        table: FunctionTable,
        stacks: dict[str, Function],
        tasks: dict[str, Any],
        previous: FunctionSet | None,
    ) -> None:
        self.table = table
        self.stacks = stacks
        #: the tasks loaded with these functions (to match a run's task to its set)
        self.tasks = tasks
        self.previous = previous

    def names(self) -> set[str]:
        return set(self.stacks) | set(self.table.python)

    def _unknown(self, name: str) -> RunError:
        hint = did_you_mean(name, self.names())
        return RunError(
            f"no function named '{name}'" + (f"; {hint}" if hint else ""), error_type="UnknownFunction"
        )

    async def call(self, name: str, inputs: dict[str, Any], ctx: RunContext) -> Any:
        fn = self.table.python.get(name)
        if fn is not None:
            return await _call_python(name, fn, inputs)
        defn = self.stacks.get(name)
        if defn is None:
            raise self._unknown(name)
        child = RunContext(
            records=self.table._engine.records_for(defn.data_source) if defn.data_source else ctx.records,
            http=ctx.http,
            functions=self,
            tracer=ctx.tracer.child(f"function {name}") if ctx.tracer is not None and hasattr(ctx.tracer, "child") else ctx.tracer,
            clock=ctx.clock,
            env=ctx.env,
            task=ctx.task,
            depth=ctx.depth + 1,
        )
        return await execute(defn.program, child, inputs={**defn.inputs, **inputs})

    async def start(self, name: str, inputs: dict[str, Any], ctx: RunContext) -> Any:
        """An async call: a new run, of the function as currently defined (see ``start_function_run``)."""
        if name not in self.stacks and name not in self.table.python:
            raise self._unknown(name)
        return await self.table._engine.start_function_run(name, inputs, parent_id=ctx.task.get("run_id"))


def _tasks_of(engine: Any) -> dict[str, Any]:
    definitions = getattr(engine, "definitions", None)
    return definitions.tasks if definitions is not None else {}


async def _call_python(name: str, fn: PyFunction, inputs: dict[str, Any]) -> Any:
    try:
        if inspect.iscoroutinefunction(fn):
            result = await fn(inputs)
        else:
            result = await anyio.to_thread.run_sync(fn, inputs)
        if inspect.isawaitable(result):
            result = await result
    except CronstackError:
        raise
    except Exception as exc:
        raise RunError(
            f"function '{name}' raised {type(exc).__name__}: {exc}", error_type="FunctionError"
        ) from exc
    return _json_copy(result, name)


#: what a Python function may return, and so what a stack may hold
_JSON_HINT = "return dicts with text keys, lists, text, numbers, booleans and None"


def _json_copy(value: Any, name: str) -> Any:
    """A copy of a Python function's result made only of JSON data (tuples become lists).

    Values enter runs as JSON everywhere else; a Python function could hand
    in NaN (which the store would write as null), bytes or a datetime (which
    would be stored as base64 or ISO text while the run kept the original).
    Refused here, at the boundary, with the path of the value. The copy also
    keeps the function from changing the run's data later through an object
    it kept.
    """

    def copy(v: Any, path: str, depth: int) -> Any:
        t = type(v)
        if t is str or t is int or v is None or t is bool:
            return v
        if t is float:
            if math.isfinite(v):
                return v
            return refuse(path, f"{v!r} (NaN and infinities are not JSON numbers)")
        if depth >= MAX_NESTING_DEPTH:
            raise RunError(
                f"function '{name}' returned a value nested deeper than {MAX_NESTING_DEPTH} lists/objects",
                error_type="FunctionError",
            )
        if isinstance(v, dict):
            out = {}
            for k, x in v.items():
                if not isinstance(k, str):
                    return refuse(path, f"a key {k!r} that is not text")
                k = str.__add__(k, "")  # a plain str, whatever subclass the key was
                out[k] = copy(x, f"{path}.{k}" if k.isidentifier() else f"{path}[{k!r}]", depth + 1)
            return out
        if isinstance(v, (list, tuple)):
            return [copy(x, f"{path}[{i}]", depth + 1) for i, x in enumerate(v)]
        if isinstance(v, bool):  # subclasses of the scalars (enums...): their plain value
            return bool(v)
        if isinstance(v, int):
            return int(v)
        if isinstance(v, float):
            return copy(float(v), path, depth)
        if isinstance(v, str):
            return str.__add__(v, "")
        return refuse(path, f"a {t.__name__}")

    def refuse(path: str, what: str) -> Any:
        raise RunError(
            f"function '{name}' returned {what} at {path}, which JSON cannot hold; {_JSON_HINT}",
            error_type="FunctionError",
        )

    return copy(value, "result", 0)
