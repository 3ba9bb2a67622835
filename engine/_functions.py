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

__all__ = ("FunctionTable", "PyFunction")

PyFunction = Callable[[dict[str, Any]], Any] | Callable[[dict[str, Any]], Awaitable[Any]]


class FunctionTable:
    """Implements ``runtime.Functions`` for one engine."""

    def __init__(self, engine: Engine, functions: dict[str, Function]) -> None:
        self._engine = engine
        self.stacks = functions
        self.python: dict[str, PyFunction] = {}

    def names(self) -> set[str]:
        return set(self.stacks) | set(self.python)

    def register(self, name: str, fn: PyFunction) -> None:
        if not callable(fn):
            raise TypeError(f"register_function({name!r}, ...) needs a callable")
        if name in self.stacks:
            raise ValueError(f"'{name}' is already a function defined in {self.stacks[name].file or 'the project'}")
        self.python[name] = fn

    def _unknown(self, name: str) -> RunError:
        hint = did_you_mean(name, self.names())
        return RunError(
            f"no function named '{name}'" + (f"; {hint}" if hint else ""), error_type="UnknownFunction"
        )

    async def call(self, name: str, inputs: dict[str, Any], ctx: RunContext) -> Any:
        fn = self.python.get(name)
        if fn is not None:
            return await self._call_python(name, fn, inputs)
        defn = self.stacks.get(name)
        if defn is None:
            raise self._unknown(name)
        child = RunContext(
            records=self._engine.records_for(defn.data_source) if defn.data_source else ctx.records,
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
        if name not in self.stacks and name not in self.python:
            raise self._unknown(name)
        return await self._engine.start_function_run(name, inputs, parent_id=ctx.task.get("run_id"))

    async def _call_python(self, name: str, fn: PyFunction, inputs: dict[str, Any]) -> Any:
        try:
            if inspect.iscoroutinefunction(fn):
                return await fn(inputs)
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
