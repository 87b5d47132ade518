"""Estimator and solver specs: ``name(key = value, ...)`` checked against a signature.

A spec is parsed with the language's own grammar (start symbol ``spec``) and its
arguments are evaluated as compile-time constants: numbers, names such as ``auto`` or
``uniform``, nested specs (``inner = sgd(lr = 0.1)``) -- never arbitrary code.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from typing import Any

from vrlang.errors import Span, VrEstimatorError
from vrlang.syntax import ast


@dataclass(frozen=True)
class Spec:
    name: str
    args: dict[str, Any]
    span: Span | None = field(default=None, compare=False)
    arg_spans: dict[str, Span | None] = field(default_factory=dict, compare=False)

    def __str__(self) -> str:
        if not self.args:
            return self.name
        return f"{self.name}({', '.join(f'{k} = {_show(v)}' for k, v in self.args.items())})"


def _show(v) -> str:
    if isinstance(v, ast.Expr):
        return unparse(v)
    return str(v) if not isinstance(v, float) else f"{v:g}"


def unparse(e: ast.Expr) -> str:
    """Source text of an expression argument such as ``weights(norm(X[i]))`` (for messages)."""
    if isinstance(e, ast.Number):
        return f"{e.value:g}" if isinstance(e.value, float) else str(e.value)
    if isinstance(e, ast.Name):
        return e.id
    if isinstance(e, ast.Unary):
        return f"{e.op}{' ' if e.op == 'not' else ''}{_atom(e.operand)}"
    if isinstance(e, ast.Binary):
        return f"{_atom(e.left)} {e.op} {_atom(e.right)}"
    if isinstance(e, ast.Call):
        parts = [unparse(a) for a in e.args] + [f"{k.name} = {unparse(k.value)}" for k in e.kwargs]
        return f"{e.func}({', '.join(parts)})"
    if isinstance(e, ast.Index):
        return f"{_atom(e.base)}[{', '.join(':' if isinstance(i, ast.SliceAll) else unparse(i) for i in e.indices)}]"
    if isinstance(e, ast.Vector):
        return "[" + ", ".join(unparse(i) for i in e.items) + "]"
    return "<expression>"


def _atom(e: ast.Expr) -> str:
    return f"({unparse(e)})" if isinstance(e, (ast.Binary, ast.Unary)) else unparse(e)


def _value(e: ast.Expr):
    if isinstance(e, ast.Number):
        return e.value
    if isinstance(e, ast.Unary) and e.op == "-" and isinstance(e.operand, ast.Number):
        return -e.operand.value
    if isinstance(e, ast.Name):
        if e.id in ("true", "false"):
            return e.id == "true"
        return Spec(e.id, {}, e.span)
    if isinstance(e, ast.Call):
        from vrlang.check.distributions import DISTRIBUTIONS
        if e.func in DISTRIBUTIONS or e.args:
            # a distribution (a proposal) or a call with positional arguments (`ema(0.9)`,
            # `weights(expr)`): the estimator that takes it checks it
            return e
        return to_spec(e)
    return e  # an expression (e.g. weights(expr)); the estimator that takes it checks it


# Estimators whose arguments include expressions of the program (kept as AST, checked by the
# estimator's transform); the first may be given positionally: cv(g, mean = m, coef = c).
EXPRESSION_ARGS = {"cv": ("g", "mean", "coef")}


def to_spec(e: ast.Expr) -> Spec:
    if isinstance(e, ast.Name):
        return Spec(e.id, {}, e.span)
    if isinstance(e, ast.Call):
        raw = EXPRESSION_ARGS.get(e.func, ())
        if e.args and (not raw or len(e.args) > 1):
            extra = e.args[1] if raw else e.args[0]
            raise VrEstimatorError("E300", f"arguments of `{e.func}` must be named, e.g. {e.func}(batch = 16)"
                                   if not raw else f"`{e.func}` takes one positional argument ({raw[0]}); name "
                                   f"the others, e.g. {e.func}(z, mean = 0, coef = optimal)", extra.span)
        args, spans = {}, {}
        if e.args:
            args[raw[0]], spans[raw[0]] = e.args[0], e.args[0].span
        for k in e.kwargs:
            if k.name in args:
                raise VrEstimatorError("E300", f"`{k.name}` of `{e.func}` is given twice (positionally and by name)",
                                       k.span)
            args[k.name] = k.value if k.name in raw else _value(k.value)
            spans[k.name] = k.span
        return Spec(e.func, args, e.span, spans)
    raise VrEstimatorError("E300", "expected a name or a call such as `sgd(lr = 0.1)`", e.span)


def check_args(spec: Spec, allowed: dict[str, str], what: str) -> None:
    """Refuse unknown keyword arguments, with a did-you-mean."""
    for k in spec.args:
        if k not in allowed:
            close = difflib.get_close_matches(k, list(allowed), n=1, cutoff=0.6)
            hint = f"did you mean `{close[0]}`?" if close else (
                f"`{spec.name}` takes: {', '.join(allowed)}" if allowed else f"`{spec.name}` takes no arguments")
            raise VrEstimatorError("E301", f"{what} `{spec.name}` has no argument `{k}`",
                                   spec.arg_spans.get(k) or spec.span, hint)


def number(spec: Spec, key: str, default, *, integer=False, positive=True, allow_auto=False, upper=None):
    v = spec.args.get(key, default)
    if allow_auto and isinstance(v, Spec) and v.name == "auto" and not v.args:
        return "auto"
    span = spec.arg_spans.get(key) or spec.span
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise VrEstimatorError("E302", f"`{key}` of `{spec.name}` must be a number"
                               + (" or `auto`" if allow_auto else "") + (f", got `{v}`" if isinstance(v, Spec) else ""), span)
    if not math.isfinite(v):
        raise VrEstimatorError("E302", f"`{key}` of `{spec.name}` must be finite, got {v}", span)
    if integer and (not float(v).is_integer()):
        raise VrEstimatorError("E302", f"`{key}` of `{spec.name}` must be an integer, got {v}", span)
    if positive and not v > 0:
        raise VrEstimatorError("E302", f"`{key}` of `{spec.name}` must be positive, got {v}", span)
    if upper is not None and v > upper:
        raise VrEstimatorError("E302", f"`{key}` of `{spec.name}` must be at most {upper}, got {v}", span)
    return int(v) if integer else float(v)
