"""Which loops of a stack keep their variables in Python locals, and rewriting reads to use them.

The native backend (``compiler/_native.py``) generates a loop whose body only
creates, updates and branches on variables with those variables in Python
locals instead of the scope dict; this module decides which loops qualify,
which names may move, and rewrites the generated expression code's
``scope['x']`` reads into the locals' names.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

__all__ = (
    "BUILTIN_NAMES",
    "LOCAL_OPS",
    "LOCAL_STEPS",
    "Locals",
    "NoLocals",
    "kept_in_scope",
    "local_body",
    "localize",
    "walk",
    "writes",
)


#: Names every scope has from the start (``_new_scope``); no step ever removes a name.
BUILTIN_NAMES = frozenset({"item", "item_parent", "index", "error", "inputs", "env", "task"})
#: Steps a loop body may hold and still keep variables in locals: none of them
#: lets anything else see the scope (no await, no handler reading ``frame``).
LOCAL_STEPS = frozenset({"create_variable", "update_variable", "conditional", "switch", "break_loop", "continue_loop"})
#: update_variable operations done on a local; any other (append, merge, ...) keeps
#: its variable in the scope, where ``_update`` can change a lone list in place.
LOCAL_OPS = frozenset({"set", "increment", "decrement"})


class NoLocals(Exception):
    """An expression's code cannot be rewritten to read locals: generate the loop on the scope."""


class Locals:
    """The variables one loop keeps in Python locals: the names allowed, and those in use."""

    __slots__ = ("allowed", "names")

    def __init__(self, allowed: frozenset[str]) -> None:
        self.allowed = allowed
        self.names: dict[str, str] = {}  # variable -> local, in first-use order


def local_body(steps: Any) -> bool:
    """True when ``steps`` (a loop body) hold only steps that let nothing else see the scope."""
    for step in steps or ():
        if step.get("disabled") is True:
            continue
        if step.get("function") not in LOCAL_STEPS:
            return False
        branches = [step.get("true_branch"), step.get("false_branch"), step.get("default")]
        branches += list((step.get("cases") or {}).values()) if isinstance(step.get("cases"), dict) else []
        if not all(local_body(b) for b in branches if isinstance(b, list)):
            return False
    return True


def walk(steps: Any) -> Any:
    """Every step of a loop body that ``local_body`` accepted, nested ones included."""
    for step in steps or ():
        yield step
        branches = [step.get("true_branch"), step.get("false_branch"), step.get("default")]
        if isinstance(step.get("cases"), dict):
            branches += step["cases"].values()
        for branch in branches:
            if isinstance(branch, list):
                yield from walk(branch)


def kept_in_scope(steps: Any) -> set[str]:
    """Variables a body changes through list/object operations: they stay in the scope."""
    found: set[str] = {"__now__"}
    for step in walk(steps):
        if step.get("function") == "update_variable" and step.get("operation") not in LOCAL_OPS:
            found.add(step.get("name"))
    return found


def writes(steps: Any, name: str) -> bool:
    """True when a body creates or updates variable ``name``."""
    return any(s.get("function") in ("create_variable", "update_variable") and s.get("name") == name for s in walk(steps))


_QUOTED_NAME = re.compile(r"""(['"])[A-Za-z_][A-Za-z0-9_]*\1\Z""")

#: what ``localize`` scans for, left to right: a string literal or a comment (skipped whole, so
#: text inside them is never touched), else the name ``scope`` with what stands before and after
#: it. The expression compiler writes string literals with ``repr()`` (no prefixes, no triple
#: quotes); anything it does not recognise here is refused (``NoLocals``), never rewritten.
_SCAN = re.compile(
    r"""(?P<skip>'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*"|\#[^\n]*)"""
    r"""|(?P<before>(?:\.|\bdel)\s*)?\bscope\b"""
    r"""(?P<key>\s*\[\s*(?P<quoted>'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*")\s*\]"""
    # a store into the item: ``=``, augmented assignments, ``:=`` (not ``==`` ``!=`` ``<=`` ``>=``)
    r"""(?P<store>\s*(?:=(?!=)|[-+*/%@&|^:]=|//=|\*\*=|>>=|<<=))?)?"""
)


def localize(code: str, local_of: Callable[[str], str | None]) -> str:
    """``code`` with each read ``scope['name']`` of a local variable replaced by that local.

    Skips string literals and comments, so text inside them is never touched.
    Any other use of ``scope`` (a write or ``del``, the dict itself passed
    along) raises ``NoLocals``: then the whole loop reads and writes the scope.
    An attribute of a value read (``scope['a'].x``) is still a read of the
    same object, so it is rewritten. One regular-expression scan: it replaced
    ``tokenize``, which was a third of the native generator's time.
    """
    if "scope" not in code:
        return code
    out: list[str] = []
    pos = 0
    for m in _SCAN.finditer(code):
        if m.group("skip") is not None:
            continue
        if m.group("before") is not None or m.group("key") is None or m.group("store") is not None:
            raise NoLocals(f"unexpected use of the scope in {code!r}")
        # keys come from repr() of a name: a quoted identifier (literal_eval would call compile())
        quoted = m.group("quoted")
        var = local_of(quoted[1:-1]) if _QUOTED_NAME.match(quoted) else None
        if var is None:
            continue
        out.append(code[pos : m.start()])
        out.append(var)
        pos = m.end("key")
    if not out:
        return code
    out.append(code[pos:])
    return "".join(out)
