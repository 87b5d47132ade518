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

Counted (:math:`e_d`, in gradients of the inner objective :math:`g`, beyond the one counted):

* stocBiO (``implicit(linsolve = neumann)`` with a minibatched inner sum,
  :mod:`vrlang.estimators.stochastic_implicit`): ``steps`` minibatch gradient steps + the stochastic
  Neumann series run twice (the forward pass evaluates it on a zero vector, the backward pass on
  :math:`\nabla_y f`), :math:`2 (Q - 1)` HVPs, + 2 for the mixed second derivative of the cross term;
  for ``min``/``max`` value functions, ``steps``;
* ``unroll(steps)``: ``steps`` gradients forward, and per step backward the checkpointed step
  recomputed (1) and its vector-Jacobian product (an HVP, 2): :math:`4 \cdot steps - 1`, + 60 for
  ``lr = auto`` (30 power-iteration HVPs per solve);
* ``penalty(steps)``: per tracking step a gradient of :math:`g` at ``z`` and of :math:`f/\sigma + g`
  at ``y``, and the x-gradient's second evaluation of :math:`g`: :math:`2 \cdot steps + 1` of
  :math:`g`, and ``steps`` more evaluations of the home body :math:`f` (counted as the home body's
  plain count);
* ``borep(period, steps, iters = Q)``: ``steps / period`` (amortised) + :math:`2 (Q - 1)` (the
  Neumann HVPs of the backward pass) + 2 (mixed second derivative).

Not counted (:math:`e_d = 0`, the inner objective counted once per solve): the tolerance-stopped
exact inner solves of ``implicit`` (``sgd``/``lbfgs``/``adam`` inner solvers with ``cg``, ``neumann``
or ``direct``: the number of inner iterations is decided at run time and is not reported out of the
traced solve, so the whole method is left at one gradient rather than half counted), the minibatch
inner solvers ``svrg``/``lsvrg``/``saga`` of ``implicit`` (a fixed number of minibatch steps: not yet
counted), and the automatic step sizes computed once at the initial state.  Decision binders nested inside another
one's inner problem are counted with its body.  Outer estimators of the variance-reduced families
(svrg, saga, ...) keep their own cost formulas, without the inner iterations.
"""

from __future__ import annotations

from vrlang.estimators.bilevel import POWER_ITERS, Unroll
from vrlang.estimators.borep import BoRep
from vrlang.estimators.penalty import Penalty
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
    if isinstance(plan, Unroll):
        return float(4 * plan.inner.steps - 1 + (2 * POWER_ITERS if plan.inner.lr is None else 0))
    if isinstance(plan, Penalty):
        return float(2 * plan.steps + 1)
    if isinstance(plan, BoRep):
        return plan.steps / plan.period + 2.0 * (plan.iters - 1) + 2.0
    return 0.0


def extra_home_evaluations(choice) -> float:
    """Extra evaluations of the decision's home body per step (``penalty``'s tracking gradients of f)."""
    plan = getattr(choice, "plan", None)
    return float(plan.steps) if isinstance(plan, Penalty) else 0.0


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
    skip = frozenset(id(decisions[b]) for b in counted)
    total = float(_plain(root, sizes, set(), skip))
    for b, m in counted.items():
        body = max(1, _plain(decisions[b].body, sizes, set()))
        total += m * (1.0 + extra_evaluations(choices.get(b))) * body
        again = extra_home_evaluations(choices.get(b))
        if again:  # the home body (f), per home item: the root's plain count, or the home sum's body
            home = homes.get(b)
            total += again * (_plain(root, sizes, set(), skip) if home is None
                              else m * max(1, _plain(home.body, sizes, set(), skip)))
    return max(1.0, total)


__all__ = ["extra_evaluations", "extra_home_evaluations", "step_evaluations"]
