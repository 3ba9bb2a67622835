"""Task and function definitions: decoded, validated and compiled.

Settings are checked field by field with msgspec so that every problem of a
file is reported together; the stack is lowered by ``compiler._lower``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal, get_args, get_origin

import msgspec

from compiler._errors import CompileError, Diagnostic, did_you_mean
from compiler._lower import lower_stack
from runtime import Program

__all__ = (
    "Task",
    "Function",
    "RetryPolicy",
    "RequestHistory",
    "compile_definition",
    "compile_task",
    "compile_function",
    "TASK_FIELDS",
    "FUNCTION_FIELDS",
)

NAME = re.compile(r"[a-z0-9_]+\Z")


class RetryPolicy(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How a failed or timed-out attempt is retried: ``retry_delay * backoff**(attempt-1)``, capped."""

    max_retries: int = 0
    retry_delay: float = 60.0
    backoff: float = 2.0
    max_delay: float = 3600.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before the attempt after ``attempt`` (1-based); never raises.

        ``backoff ** (attempt-1)`` overflows a float long before a large
        ``max_retries`` runs out (attempt 1025 with backoff 2): a power that
        big is past any cap, so the delay is the cap. (The OverflowError once
        left an attempt ``running`` with no retry, and stopped the engine
        from opening.) ``float()``: a policy made in code may hold ints, whose
        power would not overflow but grow without end.
        """
        try:
            cap = float(self.max_delay)
        except OverflowError:  # an int beyond any float: no cap
            cap = math.inf
        try:
            base = float(self.retry_delay)
            if not base > 0:  # 0, or a NaN (a policy made in code is not checked): no wait
                return 0.0
            return min(base * float(self.backoff) ** max(attempt - 1, 0), cap)
        except OverflowError:
            return cap


class RequestHistory(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    enabled: bool = True
    retention_days: float = 30.0


Overlap = Literal["skip", "queue", "allow", "cancel_previous"]
Misfire = Literal["run_once", "skip", "run_all"]
DayMatch = Literal["and", "or"]

#: field name -> (type, default); `name` and `stack` are handled apart.
TASK_FIELDS: dict[str, tuple[Any, Any]] = {
    "type": (Literal["task"], "task"),
    "description": (str, ""),
    "tags": (list[str], []),
    "schedule": (str | None, None),
    "timezone": (str, "UTC"),
    "active": (bool, True),
    "data_source": (str | None, None),
    "request_history": (RequestHistory, RequestHistory()),
    "timeout": (float, 300.0),
    "retry_policy": (RetryPolicy, RetryPolicy()),
    "overlap": (Overlap, "skip"),
    "misfire": (Misfire, "run_once"),
    "misfire_grace": (float, 3600.0),
    "max_concurrency": (int, 1),
    "cron_day_match": (DayMatch, "and"),
    "requires_env": (list[str], []),
}
FUNCTION_FIELDS: dict[str, tuple[Any, Any]] = {
    "type": (Literal["function"], "function"),
    "description": (str, ""),
    "tags": (list[str], []),
    "inputs": (dict[str, Any], {}),
    "data_source": (str | None, None),
}


@dataclass(frozen=True, slots=True)
class Task:
    """A compiled background task: its settings and its program."""

    name: str
    program: Program
    description: str = ""
    tags: tuple[str, ...] = ()
    schedule: str | None = None
    timezone: str = "UTC"
    active: bool = True
    data_source: str | None = None
    request_history: RequestHistory = RequestHistory()
    timeout: float = 300.0
    retry_policy: RetryPolicy = RetryPolicy()
    overlap: str = "skip"
    misfire: str = "run_once"
    misfire_grace: float = 3600.0
    max_concurrency: int = 1
    cron_day_match: str = "and"
    #: environment variables that must be set for the task to fire (else it stays inactive)
    requires_env: tuple[str, ...] = ()
    file: str | None = None
    calls: tuple[tuple[str, str], ...] = ()
    source: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True, slots=True)
class Function:
    """A compiled function: called by tasks and other functions with ``inputs``."""

    name: str
    program: Program
    description: str = ""
    tags: tuple[str, ...] = ()
    inputs: dict[str, Any] = field(default_factory=dict)
    data_source: str | None = None
    file: str | None = None
    calls: tuple[tuple[str, str], ...] = ()
    source: dict[str, Any] = field(default_factory=dict, compare=False)


def _settings(
    raw: dict[str, Any], fields: dict[str, tuple[Any, Any]], diags: list[Diagnostic]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    allowed = set(fields) | {"name", "stack"}
    for key, value in raw.items():
        if key not in allowed:
            diags.append(
                Diagnostic(f"unknown field '{key}'", key, hint=did_you_mean(key, allowed) or f"allowed: {', '.join(sorted(allowed))}")
            )
            continue
        if key in ("name", "stack"):
            continue
        typ, _default = fields[key]
        try:
            # strict: "300" for a timeout is refused, not read as a number (true, 1 and "1" stay apart)
            out[key] = msgspec.convert(value, typ)
        except msgspec.ValidationError as exc:
            diags.append(_explain(key, typ, value, str(exc)))
    return out


#: msgspec's type names, as the docs speak of JSON values
_KINDS = {"float": "a number", "int": "a whole number", "bool": "true or false", "str": "a text",
          "array": "a list", "object": "an object", "null": "null", "str | null": "a text or null"}
_EXPECTED = re.compile(r"Expected `([^`]+)`, got `([^`]+)`")


def _explain(key: str, typ: Any, value: Any, msg: str) -> Diagnostic:
    """msgspec's reason a setting does not convert, said with the field's path, its allowed values and a hint."""
    msg, _, at = msg.partition(" - at `$")
    path = key + at.rstrip("`")
    field_name = path.rsplit(".", 1)[-1]
    choices = get_args(typ) if get_origin(typ) is Literal else ()
    if choices:  # an enum: list what it may be, and the nearest
        hint = did_you_mean(value, choices) if isinstance(value, str) else None
        return Diagnostic(f"'{key}' must be one of {', '.join(choices)}; got {_shown(value)}", path, hint=hint)
    unknown = re.fullmatch(r"Object contains unknown field `(.+)`", msg)
    if unknown and isinstance(typ, type) and issubclass(typ, msgspec.Struct):
        name, allowed = unknown.group(1), typ.__struct_fields__
        return Diagnostic(f"unknown field '{name}' in '{key}'", f"{path}.{name}",
                          hint=did_you_mean(name, allowed) or f"allowed: {', '.join(allowed)}")
    expected = _EXPECTED.fullmatch(msg)
    if expected:
        want, got = (_KINDS.get(t, t) for t in expected.groups())
        if path == key and not isinstance(value, (dict, list)):
            got += f" ({_shown(value)})"
        hint = "write the number without quotes" if want.endswith("number") and got.startswith("a text") else None
        return Diagnostic(f"'{field_name}' must be {want}, got {got}", path, hint=hint)
    return Diagnostic(msg, path)


def _shown(value: Any) -> str:
    """A setting's value as the file wrote it, shortened."""
    text = repr(value) if isinstance(value, str) else msgspec.json.encode(value).decode()
    return text if len(text) <= 40 else text[:37] + "..."


def _name(raw: dict[str, Any], diags: list[Diagnostic]) -> str:
    name = raw.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        diags.append(
            Diagnostic(
                f"'name' must be lower-case letters, digits and _ (like daily_report), got {name!r}", "name"
            )
        )
        return name if isinstance(name, str) else "<unnamed>"
    return name


def _task_checks(settings: dict[str, Any], diags: list[Diagnostic]) -> None:
    for key in ("timeout", "misfire_grace"):
        if key in settings and settings[key] <= 0:
            diags.append(Diagnostic(f"'{key}' must be a positive number of seconds", key))
    history = settings.get("request_history")
    if history is not None and history.retention_days < 0:
        diags.append(Diagnostic("'retention_days' must be 0 or more days", "request_history.retention_days",
                                hint="0 keeps a finished run only until the next pruning round"))
    if settings.get("max_concurrency", 1) < 1:
        diags.append(Diagnostic("'max_concurrency' must be at least 1", "max_concurrency"))
    rp = settings.get("retry_policy")
    # written as `not x >= n`: a NaN (a Python definition can hold one) is refused too
    if rp is not None and (
        rp.max_retries < 0 or not rp.retry_delay >= 0 or not rp.backoff >= 1 or not rp.max_delay >= 0
    ):
        diags.append(
            Diagnostic("retry_policy needs max_retries >= 0, retry_delay >= 0, backoff >= 1, max_delay >= 0", "retry_policy")
        )


def _compile(raw: dict[str, Any], file: str | None, what: str, fields: dict[str, tuple[Any, Any]], checks=None):
    """Name, settings and stack of one definition, with every problem collected."""
    diags: list[Diagnostic] = []
    name = _name(raw, diags)
    settings = _settings(raw, fields, diags)
    settings.pop("type", None)
    if "stack" not in raw:
        diags.append(Diagnostic(f"a {what} needs a 'stack' (a list of steps)", "stack"))
    low = lower_stack(raw.get("stack", []), name, file=file)
    diags.extend(low.diagnostics)
    if checks is not None:
        checks(settings, diags)
    if diags:
        raise CompileError(diags).with_file(file) if file else CompileError(diags)
    for key in ("tags", "requires_env"):
        if key in settings:
            settings[key] = tuple(settings[key])
    return dict(name=name, program=low.program, file=file, calls=tuple(low.calls), source=raw, **settings)


def compile_task(raw: dict[str, Any], file: str | None = None) -> Task:
    """Compile one task definition; raises ``CompileError`` listing every problem."""
    return Task(**_compile(raw, file, "task", TASK_FIELDS, _task_checks))


def compile_function(raw: dict[str, Any], file: str | None = None) -> Function:
    """Compile one function definition; raises ``CompileError`` listing every problem."""
    return Function(**_compile(raw, file, "function", FUNCTION_FIELDS))


def is_function(raw: dict[str, Any], file: str | None = None) -> bool:
    """A definition is a function when it says so, has ``inputs``, or lives in a ``functions`` folder."""
    kind = raw.get("type")
    if kind in ("task", "function"):
        return kind == "function"
    if "inputs" in raw:
        return True
    if file is not None:
        parts = re.split(r"[\\/]", file)
        return "functions" in parts[:-1]
    return False


def compile_definition(raw: Any, file: str | None = None) -> Task | Function:
    """Compile a task or function definition (see ``is_function``)."""
    if not isinstance(raw, dict):
        err = CompileError(Diagnostic(f"a definition must be a JSON object, got {type(raw).__name__}"))
        raise err.with_file(file) if file else err
    return compile_function(raw, file) if is_function(raw, file) else compile_task(raw, file)
