"""The abstract syntax tree: frozen dataclasses, each carrying its source span.

The AST is exactly what the user wrote (no name resolution, no inlining); the checker
turns it into the typed IR (:mod:`vrlang.ir`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from vrlang.errors import Span

# ----------------------------------------------------------------------------- types


@dataclass(frozen=True)
class TypeExpr:
    base: str  # "real" | "int" | "bool"
    dims: tuple[Union[int, str], ...]
    span: Span | None = field(default=None, compare=False)

    def __str__(self) -> str:
        return self.base + (f"[{', '.join(map(str, self.dims))}]" if self.dims else "")


# ----------------------------------------------------------------------- expressions


@dataclass(frozen=True)
class Expr:
    span: Span | None = field(default=None, compare=False, kw_only=True)


@dataclass(frozen=True)
class Number(Expr):
    value: float | int
    is_int: bool


@dataclass(frozen=True)
class Name(Expr):
    id: str


@dataclass(frozen=True)
class Unary(Expr):
    op: str  # "-" | "+" | "not"
    operand: Expr


@dataclass(frozen=True)
class Binary(Expr):
    op: str  # + - * / @ ^ == != < <= > >= and or
    left: Expr
    right: Expr


@dataclass(frozen=True)
class Keyword:
    name: str
    value: Expr
    span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Call(Expr):
    func: str
    args: tuple[Expr, ...]
    kwargs: tuple[Keyword, ...]
    func_span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True)
class SliceAll(Expr):
    """The ``:`` subscript (a whole axis)."""


@dataclass(frozen=True)
class Index(Expr):
    base: Expr
    indices: tuple[Expr, ...]


@dataclass(frozen=True)
class Vector(Expr):
    items: tuple[Expr, ...]


# Binders: OP(binder, ...: body)


@dataclass(frozen=True)
class RangeVar:
    name: str
    lo: Expr
    hi: Expr
    span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True)
class RandomVar:
    name: str
    dist: Expr
    span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True)
class DecisionVar:
    name: str
    type: TypeExpr
    init: Expr | None
    span: Span | None = field(default=None, compare=False)


BinderVar = Union[RangeVar, RandomVar, DecisionVar]


@dataclass(frozen=True)
class BinderExpr(Expr):
    op: str  # sum mean E argmin argmax min max
    vars: tuple[BinderVar, ...]
    body: Expr
    op_span: Span | None = field(default=None, compare=False)


# ------------------------------------------------------------------------ statements


@dataclass(frozen=True)
class Stmt:
    span: Span | None = field(default=None, compare=False, kw_only=True)


@dataclass(frozen=True)
class Use(Stmt):
    module: str | None  # dotted name, e.g. "std.losses"
    path: str | None  # or a file path


@dataclass(frozen=True)
class Data(Stmt):
    name: str
    type: TypeExpr
    source: str | None


@dataclass(frozen=True)
class Const(Stmt):
    name: str
    type: TypeExpr | None
    value: Expr


@dataclass(frozen=True)
class Constraint:
    kind: str  # positive simplex unit_interval box
    lo: Expr | None = None
    hi: Expr | None = None
    span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Param(Stmt):
    name: str
    type: TypeExpr
    constraint: Constraint | None
    init: Expr | None


@dataclass(frozen=True)
class Arg:
    name: str
    type: TypeExpr | None
    span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Extern(Stmt):
    name: str
    args: tuple[Arg, ...]
    result: TypeExpr


@dataclass(frozen=True)
class Def(Stmt):
    name: str
    args: tuple[Arg, ...]
    result: TypeExpr | None
    body: Expr


@dataclass(frozen=True)
class Let(Stmt):
    name: str
    value: Expr


@dataclass(frozen=True)
class Objective(Stmt):
    sense: str  # "minimize" | "maximize"
    expr: Expr


@dataclass(frozen=True)
class Estimate(Stmt):
    binder: str
    spec: Expr
    binder_span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Solve(Stmt):
    spec: Expr


@dataclass(frozen=True)
class Report(Stmt):
    name: str
    expr: Expr


@dataclass(frozen=True)
class Program:
    statements: tuple[Stmt, ...]
    source: str = field(default="", compare=False, repr=False)
    file: str | None = field(default=None, compare=False)
