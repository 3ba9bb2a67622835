"""The catalogue of step kinds: which fields each takes and how each is read.

One table drives validation (unknown kinds and fields, missing ones, literal
fields) and tells the lowering how to compile each field, so that adding a step
kind is one entry here plus its handler in the runtime.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

__all__ = ("FieldKind", "StepSpec", "STEPS", "COMMON_FIELDS", "RECORD_STEPS", "EFFECT_STEPS")


class FieldKind(enum.Enum):
    VALUE = "value"  # a template (any JSON, `{{ }}` inside strings)
    CONDITION = "condition"  # a bare or braced expression, or a boolean
    STEPS = "steps"  # a nested list of steps
    CASES = "cases"  # {literal key: [steps]}
    NAME = "name"  # a literal identifier (variable or function name)
    CHOICE = "choice"  # a literal from a fixed set


@dataclass(frozen=True, slots=True)
class StepSpec:
    """Fields of one step kind: ``fields`` maps name to kind; ``choices`` the allowed literals."""

    fields: dict[str, FieldKind]
    required: tuple[str, ...] = ()
    choices: dict[str, tuple[str, ...]] = field(default_factory=dict)
    defaults: dict[str, object] = field(default_factory=dict)
    doc: str = ""


V, C, S, N, K = (FieldKind.VALUE, FieldKind.CONDITION, FieldKind.STEPS, FieldKind.NAME, FieldKind.CHOICE)

#: Fields every step may carry, for the reader's benefit only.
COMMON_FIELDS = {"function", "description", "comment", "disabled"}

_TABLE = {"table": V}

STEPS: dict[str, StepSpec] = {
    "create_variable": StepSpec({"name": N, "value": V}, ("name",), doc="defines a variable"),
    "update_variable": StepSpec(
        {"name": N, "operation": K, "value": V},
        ("name",),
        {"operation": ("set", "merge", "append", "increment", "decrement", "remove")},
        {"operation": "set"},
        doc="changes a variable",
    ),
    "conditional": StepSpec(
        {"condition": C, "true_branch": S, "false_branch": S}, ("condition",), doc="if/else"
    ),
    "switch": StepSpec(
        {"value": V, "cases": FieldKind.CASES, "default": S}, ("value",), doc="multi-way branch"
    ),
    "loop": StepSpec(
        {"array": V, "condition": C, "times": V, "operations": S},
        doc="for-each over array, while condition, or n times",
    ),
    "break_loop": StepSpec({}, doc="leaves the innermost loop"),
    "continue_loop": StepSpec({}, doc="next iteration of the innermost loop"),
    "try_catch": StepSpec(
        {"try_block": S, "catch_block": S, "finally_block": S}, ("try_block",), doc="try/catch/finally"
    ),
    "throw_error": StepSpec(
        {"message": V, "type": V}, ("message",), defaults={"type": "ThrownError"}, doc="raises an error"
    ),
    "return": StepSpec({"value": V}, doc="ends the stack with a result"),
    "wait": StepSpec({"duration": V}, ("duration",), doc="cooperative sleep in seconds"),
    "custom_function": StepSpec(
        {"name": N, "inputs": V, "return_as": N, "execution_mode": K},
        ("name",),
        {"execution_mode": ("sync", "async")},
        {"execution_mode": "sync"},
        doc="calls a function",
    ),
    "external_api_request": StepSpec(
        {
            "url": V,
            "method": V,
            "headers": V,
            "query": V,
            "body": V,
            "body_format": K,
            "timeout": V,
            "retries": V,
            "follow_redirects": V,
            "return_as": N,
        },
        ("url",),
        {"body_format": ("json", "form", "text", "raw", "none")},
        {"method": "GET", "timeout": 30, "body_format": "json", "retries": 0, "follow_redirects": True},
        doc="HTTP request",
    ),
    "query_all_records": StepSpec(
        {**_TABLE, "filter": V, "sort": V, "limit": V, "offset": V, "return_as": N},
        ("table",),
        doc="list of records",
    ),
    "get_record": StepSpec(
        {**_TABLE, "id": V, "filter": V, "return_as": N}, ("table",), doc="one record or null"
    ),
    "count_records": StepSpec({**_TABLE, "filter": V, "return_as": N}, ("table",), doc="number"),
    "add_record": StepSpec({**_TABLE, "data": V, "return_as": N}, ("table", "data"), doc="insert"),
    "edit_record": StepSpec(
        {**_TABLE, "id": V, "data": V, "return_as": N}, ("table", "id", "data"), doc="merge into a record"
    ),
    "delete_record": StepSpec({**_TABLE, "id": V, "return_as": N}, ("table", "id"), doc="delete"),
    "add_or_edit_record": StepSpec(
        {**_TABLE, "data": V, "identifier": V, "return_as": N},
        ("table", "data", "identifier"),
        doc="upsert on identifier",
    ),
    "delete_records": StepSpec(
        {**_TABLE, "filter": V, "return_as": N}, ("table", "filter"), doc="bulk delete"
    ),
    "edit_records": StepSpec(
        {**_TABLE, "filter": V, "data": V, "return_as": N},
        ("table", "filter", "data"),
        doc="bulk edit",
    ),
    "log": StepSpec(
        {"message": V, "level": K},
        ("message",),
        {"level": ("debug", "info", "warning", "error")},
        {"level": "info"},
        doc="writes into the run's history",
    ),
}

RECORD_STEPS = frozenset(
    {
        "query_all_records",
        "get_record",
        "count_records",
        "add_record",
        "edit_record",
        "delete_record",
        "add_or_edit_record",
        "delete_records",
        "edit_records",
    }
)
#: Steps lowered to one EFFECT instruction handled by the runtime's effect table.
EFFECT_STEPS = RECORD_STEPS | {"external_api_request"}
