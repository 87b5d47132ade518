r"""Component gradients per step of a program with decision binders (the solve history's ``grad_evals``).

The plain count (``vrlang.program._count``) multiplies the sizes of the sums along each path, so
an ``argmin`` written inside ``mean(j in 0..m: ...)`` is counted ``m`` times and its inner
iterations not at all.  The interpreter solves a decision binder once per item of its *home*
(:mod:`vrlang.ir.homes`), and one evaluation of it runs the inner method.  :func:`step_evaluations`
counts, per evaluation of the objective,

.. math::
    C = C_{\text{outer}} + \sum_d m_d\,(1 + e_d)\, C_d,

with :math:`C_{\text{outer}}` the plain count with the decision binders left out, :math:`m_d` the
number of items of :math:`d`'s home drawn per evaluation (the product of the effective sizes of the
sums down to the home; 1 at the root), :math:`C_d` the plain count of :math:`d`'s inner objective
(one gradient of it, on the minibatches of its own sampled sums) and :math:`e_d` the **static**
extra evaluations of the inner objective per solve (:func:`extra_evaluations`).  A Hessian-vector
product counts as 2 gradients.

Counted (:math:`e_d`): stocBiO (``implicit(linsolve = neumann)`` with a minibatched inner sum,
:mod:`vrlang.estimators.stochastic_implicit`): ``steps`` minibatch gradient steps + the stochastic
Neumann series run twice (the forward pass evaluates it on a zero vector, the backward pass on
:math:`\nabla_y f`), :math:`2 (Q - 1)` HVPs, + the mixed second derivative of the cross term (2)
beyond the cross-term gradient itself; for ``min``/``max`` value functions, ``steps``.

Not counted (:math:`e_d = 0`, the inner objective counted once per solve): the tolerance-stopped
exact inner solvers of ``implicit`` (``sgd``/``lbfgs``/``svrg`` inner solvers and ``cg``; the number
of iterations is decided at run time and not reported out of the traced solve), ``unroll``,
``penalty``, ``borep``, and the automatic step sizes computed once at the initial state.  Decision
binders nested inside another one's inner problem are counted with its body.  Outer estimators of
the variance-reduced families (svrg, saga, ...) keep their own cost formulas, without the inner
iterations.
"""

from __future__ import annotations

from vrlang.estimators.stochastic_implicit import StochasticImplicit
from vrlang.ir import homes as H
from vrlang.ir import nodes as N


def extra_evaluations(choice) -> float:
    """:math:`e_d`: static evaluations of the inner objective's gradient per solve beyond the one counted
    (see the module docstring); 0 where the count is not static."""
    plan = getattr(choice, "plan", None)
    if isinstance(plan, StochasticImplicit):
        if choice.options.get("stochastic", {}).get("values_only"):
            return float(plan.steps)
        return float(plan.steps + 4 * (plan.iters - 1) + 2)
    return 0.0


def _plain(node: N.Node, sizes: dict, memo: set, skip: frozenset = frozenset()) -> int:
    """The plain count (as ``vrlang.program._count``), with the decision nodes in ``skip`` left out."""
    if id(node) in memo:
        return 0  # a shared `let` is evaluated once
    memo.add(id(node))
    if isinstance(node, N.Decision) and id(node) in skip:
        return 0
    if isinstance(node, N.Sum):
        return sizes.get(node.binder, 1) * max(1, _plain(node.body, sizes, memo, skip))
    return sum(_plain(c, sizes, memo, skip) for c in node.children())


def _multiplicities(root: N.Node, sizes: dict) -> dict:
    """``{id(sum node): items drawn per evaluation}``, the product of the sizes down to and including it."""
    out: dict = {}

    def visit(node, m, seen):
        if id(node) in seen:
            return
        seen.add(id(node))
        if isinstance(node, N.Sum):
            m = m * sizes.get(node.binder, 1)
            out.setdefault(id(node), m)
        for c in node.children():
            visit(c, m, seen)

    visit(root, 1, set())
    return out


def step_evaluations(root: N.Node, sizes: dict, choices: dict) -> float:
    """Component gradients of one evaluation of ``root`` with the effective sizes ``sizes``, each decision
    binder counted once per item of its home with its static inner iterations (module docstring)."""
    decisions = {n.binder: n for n in N.walk(root) if isinstance(n, N.Decision)}
    homes = H.homes(root)
    mult = _multiplicities(root, sizes)
    counted = {}
    for b, node in decisions.items():
        home = homes.get(b)
        if home is None:
            counted[b] = 1
        elif isinstance(home, N.Sum) and id(home) in mult:
            counted[b] = mult[id(home)]
    total = float(_plain(root, sizes, set(), frozenset(id(decisions[b]) for b in counted)))
    for b, m in counted.items():
        body = max(1, _plain(decisions[b].body, sizes, set()))
        total += m * (1.0 + extra_evaluations(choices.get(b))) * body
    return max(1.0, total)


__all__ = ["extra_evaluations", "step_evaluations"]
