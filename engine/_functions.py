"""Function calls from stacks: compiled function stacks and registered Python callables.

A sync call runs inside the calling run (its steps join the caller's trace);
an async call becomes a separate durable run that the engine starts, and the
caller receives its run id at once.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio

from compiler import Function
from compiler._errors import did_you_mean
from runtime import CronstackError, RunContext, RunError
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
            return result
        except CronstackError:
            raise
        except Exception as exc:
            raise RunError(
                f"function '{name}' raised {type(exc).__name__}: {exc}", error_type="FunctionError"
            ) from exc
