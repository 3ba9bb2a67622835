"""Lazy functions: a field's generated Python source into a function, compiled on its first call.

``compile()`` has a fixed cost of tens to hundreds of microseconds a call,
which made it most of the time of loading a project. Everything that can go
wrong with a definition is checked at load (syntax, names, filters, limits)
and the Python source of each field is generated there too; only the last,
mechanical step -- turning that source into a code object -- waits until the
field is first evaluated, and then happens once: the ``Value``'s ``fn`` is
replaced by the compiled function. Fields that never run (a branch never
taken, a task that never fires) are never compiled.

Code objects are shared between fields with the same source (a cache keyed
by the source), each function getting its own file name for tracebacks.

Fields without any template compile to no code at all: a closure returning
the value (or a fresh copy of it when it is a list or object).
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from types import CodeType, FunctionType
from typing import Any

from runtime import InternalError, Value

__all__ = ("LazyValue", "lazy_value", "function_from", "constant_fn", "fresh", "CODE_CACHE_SIZE")

#: distinct generated sources whose code objects are kept
CODE_CACHE_SIZE = 4096


def fresh(v: Any) -> Any:
    """A copy of JSON data ``v`` sharing no list or object with it (scalars are immutable)."""
    t = type(v)
    if t is dict:
        return {k: (fresh(x) if type(x) in (dict, list) else x) for k, x in v.items()}
    if t is list:
        return [(fresh(x) if type(x) in (dict, list) else x) for x in v]
    return v


def constant_fn(v: Any) -> Callable[[dict[str, Any]], Any]:
    """``fn(scope)`` for a value that does not depend on the scope: fresh containers at every call.

    Scalars are immutable, so one function per distinct scalar is shared by
    every field holding it (``"pending"``, ``"POST"``, ``100``...).
    """
    if type(v) in (dict, list):
        snapshot = fresh(v)  # later changes to the definition's dict do not leak in
        return lambda _scope: fresh(snapshot)
    t = type(v)
    if (t is str and len(v) <= _SHARED_TEXT_LIMIT) or t is int or t is bool or v is None:
        return _scalar_fn(v)
    return lambda _scope: v  # a float (0.0 and -0.0 are equal keys), a long text


#: longer texts get a function of their own (the cache of shared ones holds its keys)
_SHARED_TEXT_LIMIT = 200


@functools.lru_cache(maxsize=CODE_CACHE_SIZE, typed=True)  # typed: 1, 1.0 and True stay apart
def _scalar_fn(v: Any) -> Callable[[dict[str, Any]], Any]:
    return lambda _scope: v


@functools.lru_cache(maxsize=CODE_CACHE_SIZE)
def _function_code(src: str) -> CodeType:
    """The code object of the one function ``src`` (a ``def``) defines."""
    module = compile(src, "<expression>", "exec")
    for const in module.co_consts:
        if isinstance(const, CodeType):
            return const
    raise InternalError(f"generated source defines no function: {src[:200]!r}")  # pragma: no cover


def function_from(src: str, filename: str, namespace: dict[str, Any]) -> FunctionType:
    """Compile ``src`` (one ``def``) into a function whose globals are ``namespace``.

    Raises InternalError when Python refuses the generated source: that is a
    defect of the code generator, which the load-time checks should prevent.
    """
    try:
        code = _function_code(src)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise InternalError(
            f"the Python generated for {filename} does not compile ({type(exc).__name__}: {exc}); "
            "please report this with the definition"
        ) from None
    return FunctionType(code.replace(co_filename=filename), namespace)


class LazyValue(Value):
    """A ``Value`` that can be weakly referenced, so that its compile-on-first-call stub can find it.

    (A strong reference from the stub back to its Value would make every
    Value a reference cycle, left for the cyclic garbage collector.)
    """

    __slots__ = ("__weakref__",)


class _FirstCall:
    """The ``fn`` of a lazy Value until its first call: compiles, installs the result, then delegates.

    One small object rather than a closure: a load makes one per field, and a
    closure would bring a cell per captured name (five), all of them objects
    the garbage collector scans.
    """

    __slots__ = ("src", "filename", "namespace", "value", "real")

    def __init__(self, src: str, filename: str, namespace: dict[str, Any]) -> None:
        self.src = src
        self.filename = filename
        self.namespace = namespace
        self.value: weakref.ReferenceType[Value] | None = None
        self.real: FunctionType | None = None

    def __call__(self, scope: dict[str, Any]) -> Any:
        real = self.real
        if real is None:
            real = self.real = function_from(self.src, self.filename, self.namespace)
            value = self.value() if self.value is not None else None
            if value is not None:
                object.__setattr__(value, "fn", real)
        return real(scope)


def lazy_value(src: str, filename: str, namespace: dict[str, Any], source: str, constant: bool) -> Value:
    """A ``Value`` whose ``fn`` compiles ``src`` on its first call, then is replaced by the result.

    Callers that kept the first ``fn`` (the stub) go on working: it calls the
    compiled function from then on. Two first calls at once (threads) both
    compile; the results are equivalent and either may win.
    """
    stub = _FirstCall(src, filename, namespace)
    made = LazyValue(stub, source, constant)
    stub.value = weakref.ref(made)
    return made
