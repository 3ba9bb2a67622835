"""AST nodes of the expression language: small immutable records, one per construct.

``col`` is the 0-based offset of the node's first character in the field text
(the compiler reports it 1-based).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = (
    "Node",
    "Const",
    "Name",
    "Member",
    "Index",
    "Filter",
    "Unary",
    "Binary",
    "Logical",
    "Cond",
    "ListLit",
    "ObjLit",
    "children",
)


@dataclass(frozen=True, slots=True)
class Node:
    col: int


@dataclass(frozen=True, slots=True)
class Const(Node):
    """A literal or a folded constant (JSON data)."""

    value: Any


@dataclass(frozen=True, slots=True)
class Name(Node):
    """A name read from the scope; ``now`` and ``uuid`` are names too, compiled specially."""

    name: str


@dataclass(frozen=True, slots=True)
class Member(Node):
    """``obj.name``"""

    obj: Node
    name: str


@dataclass(frozen=True, slots=True)
class Index(Node):
    """``obj[key]``"""

    obj: Node
    key: Node


@dataclass(frozen=True, slots=True)
class Filter(Node):
    """``value|name(args, key=kwargs)``"""

    value: Node
    name: str
    args: tuple[Node, ...]
    kwargs: tuple[tuple[str, Node], ...]


@dataclass(frozen=True, slots=True)
class Unary(Node):
    """``-x`` (op "neg") or ``not x`` (op "not")."""

    op: str
    operand: Node


@dataclass(frozen=True, slots=True)
class Binary(Node):
    """Arithmetic, ``~``, comparisons and ``in``/``not in``: both sides always evaluated."""

    op: str
    left: Node
    right: Node


@dataclass(frozen=True, slots=True)
class Logical(Node):
    """``and``, ``or``, ``??``: the right side is evaluated only when needed."""

    op: str
    left: Node
    right: Node


@dataclass(frozen=True, slots=True)
class Cond(Node):
    """``test ? then : other``"""

    test: Node
    then: Node
    other: Node


@dataclass(frozen=True, slots=True)
class ListLit(Node):
    items: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class ObjLit(Node):
    pairs: tuple[tuple[str, Node], ...]


def children(node: Node) -> tuple[Node, ...]:
    """The direct sub-expressions of ``node``, in evaluation order."""
    if isinstance(node, Member):
        return (node.obj,)
    if isinstance(node, Index):
        return (node.obj, node.key)
    if isinstance(node, Filter):
        return (node.value, *node.args, *(v for _, v in node.kwargs))
    if isinstance(node, Unary):
        return (node.operand,)
    if isinstance(node, Binary | Logical):
        return (node.left, node.right)
    if isinstance(node, Cond):
        return (node.test, node.then, node.other)
    if isinstance(node, ListLit):
        return node.items
    if isinstance(node, ObjLit):
        return tuple(v for _, v in node.pairs)
    return ()
