r"""Structure detection on the IR: generalised linear models (GLMs) inside finite sums.

A sampled sum ``sum/mean(i in lo..hi: body)`` is a **generalised linear model** when its
body depends on the params only through one *linear form* -- the margin
:math:`m_i(w) = \langle x_i, w\rangle`, written ``dot(X[i], w)``, ``dot(w, X[i])`` or
``X[i] @ w`` with ``w`` a vector param and ``x_i`` any param-free vector expression of
``i`` -- possibly plus terms independent of ``i`` (a regulariser inside the sum):

.. math::  \mathrm{body}_i(\theta) = \phi_i\big(m_i(w)\big) + r(\theta),

and when the objective is affine in the sum with param-free coefficients,
:math:`f(\theta) = a \cdot S(\theta) + g(\theta)`.  Then the per-item functions
:math:`h_i` that the finite-sum estimators sample (``F(w; {i})``, the sum fixed to the
single item ``i``; :mod:`vrlang.estimators.sampling`) have the form

.. math::  h_i(\theta) = c\,\phi_i(m_i(w)) + \rho(\theta), \qquad
           \nabla h_i(\theta) = c\,\phi_i'(m_i)\, x_i + \nabla\rho(\theta),

with :math:`c = a n` for ``sum`` and :math:`c = a` for ``mean`` and :math:`\rho` the same
for every item.  Three things follow (Schmidt, Le Roux & Bach, "Minimizing finite sums
with the stochastic average gradient", Math. Prog. 2017, §4; Defazio, Bach &
Lacoste-Julien, NeurIPS 2014):

* SAGA needs only the scalar :math:`\phi_i'(m_i)` per item, not a gradient: ``n`` scalars
  of memory instead of ``n`` copies of the params
  (:class:`vrlang.estimators.finite_sum.SAGAGLMGradient`);
* the per-item smoothness constants are known from the data:
  :math:`L_i = |c|\,\sup_m |\phi_i''(m)|\,\|x_i\|^2 + L_\rho`, hence ``sampling =
  lipschitz`` (:math:`p_i \propto L_i`) and ``lr = auto`` (the minibatch steps of
  :mod:`vrlang.backend.structured`);
* the detector also proves the *absence* of structure, with a reason that the compiler
  shows (``dot(X[i], w)^2 * sumsq(w)`` is not a GLM: an item term multiplies a term in
  the params).

The check is structural: the margin is replaced by a placeholder variable
(:data:`MARGIN`), and what remains must be *additively separable* -- every sub-term
that depends on the params must be free of ``i`` (and of the margin), combined with the
rest by ``+``, ``-``, negation, or scaling by a constant.  Repeated occurrences of the
same linear form (e.g. ``log1pexp(dot(X[i], w)) - y[i] * dot(X[i], w)``) are recognised
by structural equality.  The functions :func:`glm_structure` (a binder in a program)
and :func:`analyse_body` (one body) return a :class:`GLM` or a :class:`NotGLM` with the
reason; both are plain data, used by the transforms and lowered in
:mod:`vrlang.backend.structured`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from vrlang.ir import nodes as N
from vrlang.ir.types import REAL

#: the placeholder variable that stands for the margin in :attr:`GLM.body_frozen`
MARGIN = "glm:margin"
#: the placeholder variable that stands for the sum's value in :attr:`GLM.root_outer`
TOTAL = "glm:sum"

_INFIX = {"add": "+", "sub": "-", "mul": "*", "div": "/", "pow": "^", "matmul": "@", "eq": "==", "ne": "!=",
          "lt": "<", "le": "<=", "gt": ">", "ge": ">=", "and": "and", "or": "or"}


@dataclass(frozen=True, eq=False)
class GLM:
    """A detected GLM body (see the module doc)."""

    binder: str
    sum: N.Sum
    margin: N.Node  # one occurrence of the linear form
    feature: N.Node  # x_i: the param-free side of the linear form
    param: str  # w
    occurrences: int  # how many (structurally equal) occurrences of the margin the body has
    regularizer: tuple[N.Node, ...]  # additive terms of the body that depend on the params but not on i
    body_frozen: N.Node  # the body with every occurrence of the margin replaced by Ref var MARGIN
    root_frozen: N.Node | None = None  # the objective with the sum's body frozen (None: body only)
    root_outer: N.Node | None = None  # the objective with the sum replaced by Ref var TOTAL

    def __bool__(self) -> bool:
        return True

    def describe(self) -> str:
        out = (f"generalised linear model: the params enter the body only through the margin "
               f"{render(self.margin)}")
        if self.regularizer:
            out += f", plus terms independent of `{self.binder}` (regulariser): " + ", ".join(
                render(t) for t in self.regularizer)
        return out


@dataclass(frozen=True)
class NotGLM:
    """Not a GLM, and why."""

    reason: str

    def __bool__(self) -> bool:
        return False


# ----------------------------------------------------------------------- helpers


def free(node: N.Node, memo: dict | None = None) -> tuple[frozenset, frozenset]:
    """(params, variables) that occur free in ``node`` (a binder's own variable is bound inside it)."""
    memo = {} if memo is None else memo
    k = id(node)
    if k in memo:
        return memo[k]
    ps: set = set()
    vs: set = set()
    if isinstance(node, N.Ref):
        if node.kind == "param":
            ps.add(node.name)
        elif node.kind == "var":
            vs.add(node.name)
    for c in node.children():
        p, v = free(c, memo)
        ps |= p
        vs |= v
    if isinstance(node, N.BINDER_NODES):
        vs.discard(node.binder)
    memo[k] = (frozenset(ps), frozenset(vs))
    return memo[k]


def skey(node: N.Node, memo: dict | None = None):
    """A structural key: equal keys mean the same computation (for repeated linear forms)."""
    memo = {} if memo is None else memo
    k = id(node)
    if k in memo:
        return memo[k]
    if isinstance(node, N.Lit):
        out = ("Lit", str(node.type), repr(node.value))
    elif isinstance(node, N.Ref):
        out = ("Ref", node.kind, node.name)
    elif isinstance(node, N.Op):
        out = ("Op", node.op, node.static, tuple(skey(a, memo) for a in node.args))
    elif isinstance(node, N.Index):
        out = ("Index", skey(node.base, memo), tuple(None if i is None else skey(i, memo) for i in node.items))
    elif isinstance(node, N.Vector):
        out = ("Vector", tuple(skey(i, memo) for i in node.items))
    elif isinstance(node, N.Sum):
        out = ("Sum", node.binder, node.lo, node.hi, node.mean, skey(node.body, memo))
    else:
        out = ("node", id(node))
    memo[k] = out
    return out


def replace(node: N.Node, mapping: dict, memo: dict | None = None) -> N.Node:
    """``node`` with the sub-nodes ``mapping[id(old)] = new`` substituted (sharing preserved)."""
    memo = {} if memo is None else memo
    k = id(node)
    if k in mapping:
        return mapping[k]
    if k in memo:
        return memo[k]

    def r(c):
        return None if c is None else replace(c, mapping, memo)

    changes: dict = {}
    if isinstance(node, (N.Op, N.ExternCall)):
        changes["args"] = tuple(r(a) for a in node.args)
    elif isinstance(node, N.Index):
        changes["base"] = r(node.base)
        changes["items"] = tuple(r(i) for i in node.items)
    elif isinstance(node, N.Vector):
        changes["items"] = tuple(r(i) for i in node.items)
    elif isinstance(node, N.Dist):
        changes["args"] = tuple(r(a) for a in node.args)
        changes["kwargs"] = tuple((n, r(v)) for n, v in node.kwargs)
    elif isinstance(node, N.Sum):
        changes["body"] = r(node.body)
    elif isinstance(node, N.Expect):
        changes["dist"] = r(node.dist)
        changes["body"] = r(node.body)
    elif isinstance(node, N.Decision):
        changes["init"] = r(node.init)
        changes["body"] = r(node.body)
    same = all(_same(v, getattr(node, f)) for f, v in changes.items())
    out = node if same else dataclasses.replace(node, **changes)
    memo[k] = out
    return out


def _same(new, old) -> bool:
    if isinstance(new, tuple):
        return isinstance(old, tuple) and len(new) == len(old) and all(_same(a, b) for a, b in zip(new, old))
    return new is old


def render(node: N.Node, depth: int = 0) -> str:
    """A compact source-like rendering of an IR node (for messages and ``explain``)."""
    if depth > 12:  # bounded (shared `let`s could make the text exponential)
        return "..."
    depth += 1
    if isinstance(node, N.Lit):
        v = node.value
        return f"{v:g}" if isinstance(v, float) else str(v)
    if isinstance(node, N.Ref):
        return "m" if node.name == MARGIN else node.name
    if isinstance(node, N.Op):
        args = [render(a, depth) for a in node.args]
        if node.op == "neg":
            return f"-{_paren(node.args[0], args[0])}"
        if node.op == "not":
            return f"not {_paren(node.args[0], args[0])}"
        if node.op in _INFIX and len(args) == 2:
            return f"{_paren(node.args[0], args[0])} {_INFIX[node.op]} {_paren(node.args[1], args[1])}"
        name = {"maximum": "max", "minimum": "min"}.get(node.op, node.op)
        extra = [str(s) for s in node.static]
        return f"{name}({', '.join(args + extra)})"
    if isinstance(node, N.Index):
        items = ", ".join(":" if i is None else render(i, depth) for i in node.items)
        return f"{_paren(node.base, render(node.base, depth))}[{items}]"
    if isinstance(node, N.Vector):
        return "[" + ", ".join(render(i, depth) for i in node.items) + "]"
    if isinstance(node, N.ExternCall):
        return f"{node.name}({', '.join(render(a, depth) for a in node.args)})"
    if isinstance(node, N.Sum):
        return f"{'mean' if node.mean else 'sum'}({node.binder} in {node.lo}..{node.hi}: {render(node.body, depth)})"
    if isinstance(node, N.Expect):
        return f"E({node.binder} ~ {node.dist.name}(...): {render(node.body, depth)})"
    if isinstance(node, N.Decision):
        return f"{node.op}({node.binder} in {node.var_type}: {render(node.body, depth)})"
    return type(node).__name__


def _paren(node, text: str) -> str:
    if isinstance(node, N.Op) and (node.op in _INFIX or node.op == "neg") or (
            isinstance(node, N.Lit) and isinstance(node.value, (int, float)) and node.value < 0):
        return f"({text})"
    return text


def _linear_form(node: N.Node, var: str, memo: dict):
    """``(param, feature)`` when ``node`` is ``dot(x, w)``/``dot(w, x)``/``x @ w`` with x free of params."""
    if not (isinstance(node, N.Op) and node.op in ("dot", "matmul") and len(node.args) == 2
            and node.type.rank == 0 and node.type.base == "real"):
        return None
    a, b = node.args
    for w, x in ((a, b), (b, a)):
        if isinstance(w, N.Ref) and w.kind == "param" and w.type.rank == 1 and x.type.rank == 1:
            ps, vs = free(x, memo)
            if not ps and var in vs:
                return w.name, x
    return None


def _contains(node: N.Node, target: N.Node, memo: dict) -> bool:
    k = id(node)
    if k not in memo:
        memo[k] = node is target or any(_contains(c, target, memo) for c in node.children())
    return memo[k]


# ----------------------------------------------------------------------- detection


def analyse_body(node: N.Sum) -> GLM | NotGLM:
    """Is the body of the sum ``node`` a GLM body (margin + terms independent of the index)?"""
    i = node.binder
    body = node.body
    memo: dict = {}
    if node.type.rank != 0:
        return NotGLM(f"the body of `{i}` is not a scalar ({node.type})")
    ps, vs = free(body, memo)
    if not ps:
        return NotGLM(f"the body of `{i}` does not depend on the params")
    outer = sorted(v for v in vs if v != i)
    if outer:
        return NotGLM(f"the body of `{i}` uses the variable{'s' if len(outer) > 1 else ''} "
                      f"{', '.join(f'`{v}`' for v in outer)} of an enclosing binder")
    groups: dict = {}
    keys: dict = {}
    for n in N.walk(body):
        lf = _linear_form(n, i, memo)
        if lf is not None:  # dot(x, w), dot(w, x) and x @ w are the same margin
            k = (lf[0], skey(lf[1], keys))
            groups.setdefault(k, []).append((n, lf))
    if not groups:
        return NotGLM(f"the params do not enter the body of `{i}` through a linear form dot(X[{i}], w) "
                      f"(a vector param w and data indexed by `{i}`)")
    if len(groups) > 1:
        forms = [render(g[0][0]) for g in groups.values()]
        return NotGLM(f"the body of `{i}` has several different linear forms ({', '.join(forms)}); "
                      "a generalised linear model has one margin")
    (occ,) = groups.values()
    margin, (param, feature) = occ[0]
    placeholder = N.Ref(REAL, "var", MARGIN, span=margin.span)
    frozen = replace(body, {id(n): placeholder for n, _ in occ})
    fmemo: dict = {}

    def deps(n):
        p, v = free(n, fmemo)
        return bool(p), (i in v or MARGIN in v)

    regs: list = []
    seen: dict = {}

    def bad(n):
        if id(n) in seen:  # a shared `let`: checked once
            return seen[id(n)]
        seen[id(n)] = out = _bad(n)
        return out

    def _bad(n):
        has_p, has_i = deps(n)
        if not has_p:
            return None
        if not has_i:
            if all(r is not n for r in regs):
                regs.append(n)
            return None
        if isinstance(n, N.Op):
            if n.op in ("add", "sub") and len(n.args) == 2:
                return bad(n.args[0]) or bad(n.args[1])
            if n.op == "neg":
                return bad(n.args[0])
            if n.op == "mul" and len(n.args) == 2:
                for c, o in ((n.args[0], n.args[1]), (n.args[1], n.args[0])):
                    if deps(c) == (False, False):
                        return bad(o)
            if n.op == "div" and len(n.args) == 2 and deps(n.args[1]) == (False, False):
                return bad(n.args[0])
        return n

    culprit = bad(frozen)
    if culprit is not None:
        cp_, _ = free(culprit, fmemo)
        where = render(culprit)
        return NotGLM(f"in the body of `{i}`, the term {where} depends both on `{i}` and on the param"
                      f"{'s' if len(cp_) > 1 else ''} {', '.join(f'`{p}`' for p in sorted(cp_))} other than through "
                      f"the margin {render(margin)} plus terms independent of `{i}` (m stands for the margin)")
    return GLM(i, node, margin, feature, param, len(occ), tuple(regs), frozen)


def _affine(node: N.Node, target: N.Node, cmemo: dict, fmemo: dict, seen: dict | None = None):
    """None when ``node`` is affine in ``target`` with param-free coefficients, else the offending node."""
    seen = {} if seen is None else seen
    if id(node) not in seen:
        seen[id(node)] = _affine1(node, target, cmemo, fmemo, seen)
    return seen[id(node)]


def _affine1(node, target, cmemo, fmemo, seen):
    if node is target or not _contains(node, target, cmemo):
        return None
    if isinstance(node, N.Op):
        a = node.args
        if node.op in ("add", "sub") and len(a) == 2:
            return _affine(a[0], target, cmemo, fmemo, seen) or _affine(a[1], target, cmemo, fmemo, seen)
        if node.op == "neg":
            return _affine(a[0], target, cmemo, fmemo, seen)
        if node.op == "mul" and len(a) == 2:
            for c, o in ((a[0], a[1]), (a[1], a[0])):
                if not _contains(c, target, cmemo) and not free(c, fmemo)[0]:
                    return _affine(o, target, cmemo, fmemo, seen)
        if node.op == "div" and len(a) == 2 and not _contains(a[1], target, cmemo) and not free(a[1], fmemo)[0]:
            return _affine(a[0], target, cmemo, fmemo, seen)
    return node


def glm_structure(root: N.Node, binder) -> GLM | NotGLM:
    """The GLM structure of the finite-index binder ``binder`` (a :class:`BinderInfo`) in the objective ``root``."""
    nodes = [n for n in binder.nodes if isinstance(n, N.Sum)]
    if len(nodes) != 1:
        return NotGLM(f"the sum over `{binder.name}` occurs {len(nodes)} times (e.g. a `def` called several "
                      "times); the structure is detected for a single sum")
    (node,) = nodes
    for n in N.walk(root):
        if isinstance(n, (N.Expect, N.Decision)):
            what = "E" if isinstance(n, N.Expect) else n.op
            return NotGLM(f"the objective also has the binder `{n.binder}` ({what}); "
                          "the structure is detected for objectives whose other binders are finite sums")
    body = analyse_body(node)
    if not body:
        return body
    culprit = _affine(root, node, {}, {})
    if culprit is not None:
        return NotGLM(f"the objective is not affine in the sum over `{body.binder}` with param-free coefficients "
                      f"(at {render(culprit)[:80]})")
    frozen_sum = dataclasses.replace(node, body=body.body_frozen)
    total = N.Ref(node.type, "var", TOTAL, span=node.span)
    return dataclasses.replace(body, root_frozen=replace(root, {id(node): frozen_sum}),
                               root_outer=replace(root, {id(node): total}))
