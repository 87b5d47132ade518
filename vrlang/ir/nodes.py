"""The typed core IR.

After checking, a program is a small graph of IR nodes: names are resolved, ``def``
calls are inlined, ``let`` names are shared subtrees, and every node knows its
:class:`~vrlang.ir.types.VType`.  The three kinds of stochastic structure are
first-class nodes -- :class:`Sum` (finite index), :class:`Expect` (random choice) and
:class:`Decision` (argmin/argmax/min/max) -- so estimators are added as passes over
these nodes, without touching the front end.

Nodes compare by identity (``eq=False``): a ``let`` referenced twice is one node.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vrlang.errors import Span
from vrlang.ir.types import Dim, VType


@dataclass(frozen=True, eq=False)
class Node:
    type: VType
    span: Span | None = field(default=None, kw_only=True, repr=False)

    def children(self) -> tuple["Node", ...]:
        return ()


@dataclass(frozen=True, eq=False)
class Lit(Node):
    value: Any


@dataclass(frozen=True, eq=False)
class Ref(Node):
    """A named value: ``data``, ``param``, ``const``, or a binder variable (``var``)."""

    kind: str
    name: str


@dataclass(frozen=True, eq=False)
class Op(Node):
    """A primitive operation: arithmetic, comparison, logic or a builtin function.

    ``static`` carries compile-time arguments (e.g. the size of ``one_hot``).
    """

    op: str
    args: tuple[Node, ...]
    static: tuple = ()

    def children(self):
        return self.args


@dataclass(frozen=True, eq=False)
class Index(Node):
    """``base[items]``; an item ``None`` is a whole axis (``:``)."""

    base: Node
    items: tuple[Node | None, ...]

    def children(self):
        return (self.base,) + tuple(i for i in self.items if i is not None)


@dataclass(frozen=True, eq=False)
class Vector(Node):
    items: tuple[Node, ...]

    def children(self):
        return self.items


@dataclass(frozen=True, eq=False)
class ExternCall(Node):
    name: str
    args: tuple[Node, ...]

    def children(self):
        return self.args


@dataclass(frozen=True, eq=False)
class Dist(Node):
    """A distribution (numpyro class name and arguments); its ``type`` is the sample type."""

    name: str
    args: tuple[Node, ...]
    kwargs: tuple[tuple[str, Node], ...]

    def children(self):
        return self.args + tuple(v for _, v in self.kwargs)


@dataclass(frozen=True, eq=False)
class Sum(Node):
    """``sum/mean(var in lo..hi: body)`` -- a finite-index binder (one variable)."""

    binder: str
    lo: Dim
    hi: Dim
    body: Node
    mean: bool

    def children(self):
        return (self.body,)


@dataclass(frozen=True, eq=False)
class Expect(Node):
    """``E(var ~ dist: body)`` -- a random-choice binder."""

    binder: str
    dist: Dist
    body: Node

    def children(self):
        return (self.dist, self.body)


@dataclass(frozen=True, eq=False)
class Decision(Node):
    """``argmin/argmax/min/max(var in T = init: body)`` -- a decision binder."""

    binder: str
    op: str
    var_type: VType
    init: Node | None
    body: Node

    def children(self):
        return ((self.init,) if self.init is not None else ()) + (self.body,)


BINDER_NODES = (Sum, Expect, Decision)


def walk(node: Node):
    """Every node of the graph once, parents before children."""
    seen: set[int] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        yield n
        stack.extend(reversed(n.children()))


def outermost_sums(node: Node) -> tuple:
    """The sums in ``node`` (itself included) that are inside no other sum and no decision binder of
    ``node``: the items of an inner solver that samples one sum of an argmin's body (inner ``saga``)."""
    found, seen, stack = [], set(), [node]
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        if isinstance(n, Sum):
            found.append(n)
        elif not isinstance(n, Decision):
            stack.extend(reversed(n.children()))
    return tuple(found)


def pretty(node: Node, indent: int = 0) -> str:
    """A readable rendering of the IR (``vrlang explain --stage ir``)."""
    pad = "  " * indent
    t = f" : {node.type}"
    if isinstance(node, Lit):
        return f"{pad}Lit {node.value!r}{t}"
    if isinstance(node, Ref):
        return f"{pad}{node.kind} {node.name}{t}"
    if isinstance(node, Op):
        head = f"{pad}{node.op}" + (f" {node.static}" if node.static else "") + t
    elif isinstance(node, Index):
        head = f"{pad}Index [{', '.join(':' if i is None else '_' for i in node.items)}]{t}"
    elif isinstance(node, Sum):
        head = f"{pad}{'Mean' if node.mean else 'Sum'}[{node.binder} in {node.lo}..{node.hi}]{t}"
    elif isinstance(node, Expect):
        head = f"{pad}Expect[{node.binder} ~ {node.dist.name}]{t}"
    elif isinstance(node, Decision):
        head = f"{pad}{node.op.capitalize()}[{node.binder} in {node.var_type}]{t}"
    elif isinstance(node, Dist):
        head = f"{pad}{node.name}{t}"
    else:
        head = f"{pad}{type(node).__name__}{' ' + node.name if hasattr(node, 'name') else ''}{t}"
    return "\n".join([head] + [pretty(c, indent + 1) for c in node.children()])
