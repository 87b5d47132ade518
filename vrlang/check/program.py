"""The checked program: what the checker hands to the rest of the compiler."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vrlang.errors import Span, VrWarning
from vrlang.ir.nodes import Node
from vrlang.ir.types import Dim, VType
from vrlang.syntax import ast


@dataclass
class DataDecl:
    name: str
    type: VType
    source: str | None
    span: Span | None


@dataclass
class ConstDecl:
    name: str
    type: VType
    value: np.ndarray
    span: Span | None
    baked_at: Span | None = None  # first use fixed at compile time (range end, box bound, initial value)


@dataclass
class ParamDecl:
    name: str
    type: VType
    constraint: str | None  # positive simplex unit_interval box
    bounds: tuple[float, float] | None
    init: np.ndarray | None
    span: Span | None


@dataclass
class ExternDecl:
    name: str
    arg_types: tuple[VType, ...]
    result: VType
    span: Span | None


@dataclass
class BinderInfo:
    """One binder handle (a variable name in `sum(i ...)`, `E(z ~ ...)`, `argmin(v ...)`)."""

    name: str
    kind: str  # "index" | "random" | "decision"
    op: str  # sum mean E argmin argmax min max
    span: Span | None
    nodes: list[Node] = field(default_factory=list)  # instances (several when inside a def)
    spec: ast.Expr | None = None  # from `estimate`, or None for the default
    spec_span: Span | None = None


@dataclass
class BoundCheck:
    """`X[i]` with `i in lo..hi`: at data time, hi must not exceed the axis size."""

    var: str
    hi: Dim
    array: str
    axis: int
    dim: Dim
    span: Span | None


@dataclass
class CheckedProgram:
    source: str
    file: str | None
    data: dict[str, DataDecl]
    consts: dict[str, ConstDecl]
    params: dict[str, ParamDecl]
    externs: dict[str, ExternDecl]
    sense: str
    objective: Node
    objective_span: Span | None
    reports: dict[str, Node]
    binders: dict[str, BinderInfo]
    solver_spec: ast.Expr | None
    solver_span: Span | None
    bound_checks: list[BoundCheck]
    symbols: dict[str, list[tuple[str, int]]]  # shape symbol -> [(data name, axis)]
    warnings: list[VrWarning] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)
