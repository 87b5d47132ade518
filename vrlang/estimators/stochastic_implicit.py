r"""Implicit hypergradients with a minibatched inner problem (stocBiO).

Bilevel problem :math:`\min_x F(x) = f(x, y^*(x))`, :math:`y^*(x) = \arg\min_y g(x, y)`, with
:math:`g = \frac1n\sum_i g_i` a finite sum estimated by minibatches (``estimate i by sgd(batch = b)``
on a sum inside the ``argmin``).  The implicit hypergradient

.. math::
    \nabla F(x) = \nabla_x f - \nabla^2_{xy} g\, [\nabla^2_{yy} g]^{-1} \nabla_y f

is estimated as in stocBiO (Ji, Yang & Liang, ICML 2021, "Bilevel optimization: convergence
analysis and enhanced design", Algorithm 2), with independent minibatches
:math:`B_0, B_1, \dots, B_{Q-1}` of the inner sum:

.. math::
    \hat v = \alpha \sum_{q=0}^{Q-1} \prod_{j=1}^{q} (I - \alpha H_{B_j})\, \nabla_y f,
    \qquad
    \hat\nabla F = \nabla_x f - \nabla^2_{xy} g_{B_0}\, \hat v,

(:math:`H_B = \nabla^2_{yy} g_B`; the products share their factors, :math:`p_q = (I - \alpha H_{B_q})
p_{q-1}`, i.e. :math:`Q - 1` minibatch HVPs).  The factors are independent, so
:math:`\mathbb E \prod_j (I - \alpha H_{B_j}) = (I - \alpha H)^q` and, at an exact :math:`y^*`,
:math:`\mathbb E \hat\nabla F` is the **Q-term truncated-Neumann hypergradient**
:math:`\nabla_x f - \nabla^2_{xy} g\, \alpha \sum_{q<Q} (I - \alpha H)^q \nabla_y f` (with
:math:`\nabla_y f`, :math:`\nabla_x f` themselves unbiased when the outer sums are minibatched:
their draws are independent of the inner ones).  Relative to the true hypergradient it is
**biased** by the truncation, at most :math:`(1 - \alpha\mu)^Q` relative for
:math:`\mu I \preceq H`, and by the inexact inner solution.

The inner variable :math:`y` is binder state (:mod:`vrlang.estimators.binder_state`): each outer
step first takes ``steps`` minibatch gradient steps :math:`y \leftarrow y - \eta \nabla_y
g_{B'_k}(x, y)` (a fresh minibatch per step, drawn by the inner sum's own sampler) from the
previous step's :math:`y`, then forms the estimate above at the new :math:`y`.  ``lr = None``
(auto): :math:`\eta = 1/L`, :math:`L` the largest top eigenvalue of :math:`H_B` (power iteration)
over 4 fixed minibatch draws at the initial solution, computed once and kept in the state;
:math:`\alpha` defaults to :math:`\eta`.

How the estimate reaches ``jax.grad``: with :math:`u(x) = \nabla_y g_{B_0}(x, \bar y)` at the
(stop-gradient) :math:`\bar y`, the argmin's value is

.. math::
    y_{\text{out}}(x) = \bar y - S\,\big(u(x) - \mathrm{sg}[u(x)]\big),

where :math:`S` is the stochastic Neumann operator above, written as
``lax.custom_linear_solve(..., symmetric=True)`` whose ``solve`` is the series (keys closed over):
the value is :math:`\bar y`, and reverse mode gives
:math:`\bar x = -(\partial_x u)^\top S\, \bar y_{\text{out}}` -- exactly
:math:`-\nabla^2_{xy} g_{B_0}\hat v` for the cotangent :math:`\bar y_{\text{out}} = \nabla_y f`.
Keys: every draw is ``fold_in`` of the step's key (the env key folded with the binder's salt),
with separate salts for the inner steps, the Neumann factors and the cross term.  (The forward
pass also runs the series once, on a zero vector: ``custom_linear_solve`` evaluates its solve.)

``min``/``max`` value functions: Danskin's gradient :math:`\partial_x g_{B_0}(x, y)` at the
tracked :math:`y` -- unbiased given :math:`y^*`, no linear solve.

Exact evaluations (no key: the initial state, the logged objective, ``Program.grad``,
``lbfgs``) take the exact path of :class:`vrlang.estimators.bilevel.Implicit` (exact inner
solve by ``inner``, deterministic Neumann series with :math:`\alpha = 1/L` of the full Hessian).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from vrlang.estimators.bilevel import AUTO_DRAWS, Implicit, inverse_step, sampled_top_eigenvalue

_STEP_SALT, _NEUMANN_SALT, _CROSS_SALT, _AUTO_KEY = 0x5B10, 0x5B11, 0x5B12, 0x5B13


def _fold(key, *salts):
    for s in salts:
        key = jax.random.fold_in(key, s)
    return key


def minibatch_auto_lr(h, y):
    """``lr = auto`` of a minibatched inner problem ``h(v, key)``: the inverse of the largest top eigenvalue
    of the minibatch Hessian at ``y`` over ``AUTO_DRAWS`` fixed draws (no gradient through it)."""
    keys = jax.random.split(jax.random.PRNGKey(_AUTO_KEY), AUTO_DRAWS)
    return jax.lax.stop_gradient(inverse_step(sampled_top_eigenvalue(h, y, keys)))


def sgd_steps(h, y, lr, key, steps):
    """``steps`` SGD steps on ``h(v, key)`` from ``y``, step k on the minibatch of ``key`` folded with
    ``_STEP_SALT`` and k (stocBiO's inner steps, BO-REP's periodic lower update)."""
    def step(k, w):
        return w - lr * jax.grad(lambda v: h(v, _fold(key, _STEP_SALT, k)))(w)

    return jax.lax.fori_loop(0, steps, step, y)


def stochastic_neumann(hvp, b, alpha, terms: int, key):
    r""":math:`\alpha \sum_{q<Q} \prod_{j=1}^{q} (I - \alpha H_{B_j}) b` with ``hvp(key_j, p)`` = :math:`H_{B_j} p`,
    ``key_j = fold_in(key, j)`` (``terms - 1`` HVPs)."""
    def body(j, c):
        p, acc = c
        p = p - alpha * hvp(jax.random.fold_in(key, j), p)
        return p, acc + p

    _, acc = jax.lax.fori_loop(1, terms, body, (b, b))
    return alpha * acc


class StochasticImplicit(Implicit):
    """stocBiO: minibatch inner steps from the tracked y, stochastic Neumann with independent minibatch HVPs.

    ``inner``/``linsolve``: the exact path (as :class:`Implicit`); ``steps``: minibatch gradient steps on
    y per outer step (0: y stays at its state); ``lr``: their step (``None``: auto, see the module
    docstring); ``iters``: Q, the Neumann terms; ``alpha``: the Neumann step (``None``: the inner step).
    """

    steps: int = eqx.field(static=True, default=10)
    lr: float | None = eqx.field(static=True, default=None)
    iters: int = eqx.field(static=True, default=100)
    alpha: float | None = eqx.field(static=True, default=None)

    @property
    def stateful(self) -> bool:
        return True

    def decide_sampled(self, op: str, fn, init, state, key):
        """One evaluation of ``op`` (argmin/argmax/min/max) with binder state.

        ``fn(v, key, frozen)`` is the inner objective (``key = None``: exact sums; ``frozen``: no
        gradient reaches what it closes over).  ``state = None``: the initial state (exact solve from
        ``init``).  ``key = None``: an exact evaluation (the exact path, warm-started at the state).
        Returns ``(result, new_state)``; the state is ``{"y", "lr", "alpha"}``.
        """
        maximize = op in ("argmax", "max")
        sign = -1.0 if maximize else 1.0
        x0, unravel = ravel_pytree(init)
        dtype = x0.dtype
        sg = jax.lax.stop_gradient

        def h(v, k, frozen=True):
            return sign * fn(unravel(v), k, frozen)

        if key is None or state is None:
            start = None if state is None else state["y"]
            out, sol = Implicit.decide_from(self, op, lambda v: fn(v, None, False), init, start)
            y = sg(ravel_pytree(sol)[0].astype(dtype))
            if state is None:
                lr = jnp.asarray(self.lr, dtype) if self.lr is not None else minibatch_auto_lr(h, y)
                alpha = jnp.asarray(self.alpha, dtype) if self.alpha is not None else lr
            else:
                lr, alpha = state["lr"], state["alpha"]
            return out, {"y": unravel(y), "lr": lr, "alpha": alpha}
        y = sg(ravel_pytree(state["y"])[0].astype(dtype))
        lr, alpha = state["lr"], state["alpha"]
        if self.steps:
            y = sg(sgd_steps(h, y, lr, key, self.steps))
        new = {"y": unravel(y), "lr": lr, "alpha": alpha}
        kc = _fold(key, _CROSS_SALT)
        if op in ("min", "max"):  # Danskin at the tracked y, on the cross-term minibatch
            return fn(unravel(y), kc, False), new
        kn = _fold(key, _NEUMANN_SALT)

        def hvp(k, p):
            return jax.jvp(jax.grad(lambda v: h(v, k)), (y,), (p,))[1]

        u = jax.grad(lambda v: h(v, kc, False))(y)  # gradient reaches x through the closure

        def solve(_matvec, b):
            return stochastic_neumann(hvp, b, alpha, self.iters, kn)

        corr = jax.lax.custom_linear_solve(lambda p: hvp(kn, p), u - sg(u), solve, symmetric=True)
        return unravel(y - corr), new


__all__ = ["StochasticImplicit", "minibatch_auto_lr", "sgd_steps", "stochastic_neumann"]
