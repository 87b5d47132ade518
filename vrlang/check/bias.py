"""The bias analysis: a discipline checked by composition rules, as CVXPY checks convexity.

A sampled estimate of a finite sum is unbiased; it stays unbiased through operations
that are *linear in it*: ``+``, ``-``, negation, scaling by a quantity that does not
depend on the same random draw, indexing, ``dot``/``@`` with such a quantity, and
enclosing sums.  Any other operation applied to a sampled sum (``log``, ``^``,
``softplus``, a product of two estimates from the same draw, ...) makes the estimate
biased, since E[g(X)] != g(E[X]) for nonlinear g.  The analysis names the innermost
offending operation, the binder, and a fix.
"""

from __future__ import annotations

from vrlang.errors import VrWarning
from vrlang.ir import nodes as N

_LINEAR_ALL = {"add", "sub", "neg", "sum", "mean", "transpose"}
_LINEAR_ONE_SIDE = {"mul", "dot", "matmul"}  # linear in each argument separately
_LINEAR_FIRST = {"div"}  # linear in the numerator only

_OP_NAMES = {"pow": "^", "mul": "*", "div": "/", "dot": "dot", "matmul": "@"}


def _sampled_in(node: N.Node, sampled: set[str], memo: dict, absorbing: frozenset = frozenset()) -> frozenset:
    key = id(node)
    if key not in memo:
        found = set()
        if isinstance(node, (N.Sum, N.Expect)) and node.binder in sampled:
            found.add(node.binder)
        for c in _children(node, absorbing):
            found |= _sampled_in(c, sampled, memo, absorbing)
        memo[key] = frozenset(found)
    return memo[key]


def _children(node: N.Node, absorbing: frozenset):
    """A decision binder whose method handles sampled sums in its inner problem (``penalty``,
    stochastic ``implicit``) does not pass them on: the method's own bias status accounts for
    them, and its body is analysed as a root of its own."""
    if isinstance(node, N.Decision) and node.binder in absorbing:
        return [c for c in node.children() if c is not node.body]
    return node.children()


def analyse(root: N.Node, sampled: set[str], where: str = "the objective",
            kinds: dict[str, str] | None = None, absorbing: set[str] | frozenset = frozenset()) -> list[VrWarning]:
    """Warnings for every sampled binder that reaches ``root`` through a nonlinear operation
    (``absorbing``: decision binders whose method takes sampled sums in their inner problem)."""
    if not sampled:
        return []
    absorbing = frozenset(absorbing)
    memo: dict = {}
    warnings: dict[str, VrWarning] = {}

    visited: set[int] = set()

    def visit(node: N.Node):
        if id(node) in visited:  # a shared `let` is visited once (else the walk is exponential in the lets)
            return
        visited.add(id(node))
        here = _sampled_in(node, sampled, memo, absorbing)
        if not here:
            return
        nonlinear: set[str] = set()
        op_name = None
        if isinstance(node, (N.ExternCall, N.Dist)):  # an extern or a distribution's parameters: not linear
            for a in node.children():
                nonlinear |= _sampled_in(a, sampled, memo, absorbing)
            op_name = node.name
        if isinstance(node, N.Op):
            arg_sets = [_sampled_in(a, sampled, memo, absorbing) for a in node.args]
            if node.op in _LINEAR_ALL:
                pass
            elif node.op in _LINEAR_ONE_SIDE and len(arg_sets) == 2:
                nonlinear |= arg_sets[0] & arg_sets[1]  # the same draw on both sides
            elif node.op in _LINEAR_FIRST:
                nonlinear |= arg_sets[1]
            else:
                for s in arg_sets:
                    nonlinear |= s
            op_name = _OP_NAMES.get(node.op, node.op)
        if nonlinear:
            for b in sorted(nonlinear):
                if b not in warnings:
                    op = op_name
                    what = (f"the minibatched sum over `{b}`" if (kinds or {}).get(b, "index") == "index"
                            else f"the sampled expectation over `{b}`")
                    fix = (f"estimate `{b}` by full, or rewrite so that `{op}` is applied inside the sum"
                           if (kinds or {}).get(b, "index") == "index" else
                           f"estimate `{b}` by enum (exact) if its support is finite, or optimise an objective "
                           f"in which `{op}` is applied inside the expectation")
                    warnings[b] = VrWarning(
                        "W301",
                        f"{what} passes through the nonlinear `{op}` in {where}, "
                        f"so its gradient estimate is biased",
                        node.span, fix)
        for c in _children(node, absorbing):
            visit(c)

    visit(root)
    for node in N.walk(root):  # inner objectives that take sampled sums: those must enter them linearly
        if isinstance(node, N.Decision) and node.binder in absorbing:
            visit(node.body)
    return list(warnings.values())
