r"""BO-REP: periodic lower-level updates with initialisation refinement (Hao, Gong & Liu, ICLR 2024).

"Bilevel optimization under unbounded smoothness: a new algorithm and convergence analysis"
(Jie Hao, Xiaochuan Gong, Mingrui Liu).  For :math:`\min_x f(x, y^*(x))`,
:math:`y^*(x) = \arg\min_y g(x, y)` with a :math:`\mu`-strongly convex lower level, BO-REP

1. **refines the initialisation**: before the first outer step a subroutine computes an accurate
   :math:`y_0 \approx y^*(x_0)`;
2. **updates the lower variable periodically**: only every ``I`` outer steps, :math:`y` takes
   ``N`` gradient steps on :math:`g(x_t, \cdot)` from its previous value (warm start); in between
   it is held fixed;
3. **estimates the hypergradient at the current** :math:`y_t` with a truncated Neumann series,
   :math:`\hat\nabla F = \nabla_x f - \nabla^2_{xy} g\;\alpha\sum_{q<Q}(I - \alpha\nabla^2_{yy}g)^q\;\nabla_y f`;
4. **moves the upper variable by normalised momentum**,
   :math:`m_t = \beta m_{t-1} + (1 - \beta)\hat\nabla F(x_t, y_t)`,
   :math:`x_{t+1} = x_t - \eta\, m_t / \|m_t\|` -- robust to an upper level whose smoothness grows
   with the gradient norm (:math:`(L_0, L_1)`-smoothness, e.g. recurrent networks).

Mapping onto vrlang: (1)-(3) are this binder's estimator, :class:`BoRep`: its binder state is
``y``, the step counter ``t`` and the lower step size (per block inside a sum over blocks, like a
warm start); the state after the first (exact) evaluation is the refined :math:`y_0`, solved by the
``inner`` solver.  The hypergradient is ``jax.lax.custom_root`` at the *tracked* ``y`` (its
``solve`` returns ``y`` after the periodic update, not a fresh solve), whose tangent solve is the
Neumann series -- Hessian-vector products only.  (4) is the outer solver ``normalized(lr, beta)``
(:mod:`vrlang.solvers.spec`); ``borep`` requires it (E503).

Stochastic lower level (:class:`StochasticBoRep`, chosen by the compiler when a sum inside the
``argmin`` is minibatched, ``estimate i by sgd(batch = b)``): UpdateLower is ``N`` steps of SGD,
:math:`y \leftarrow y - \eta \nabla_y g_{B_k}(x, y)` with a fresh minibatch per step, and the
hypergradient is stocBiO's estimate at the tracked :math:`y`
(:class:`vrlang.estimators.stochastic_implicit.StochasticImplicit` with no inner steps): the
Q-term Neumann series with independent minibatch HVPs and a minibatch cross term, whose
expectation given :math:`y` is the Q-term truncated-Neumann hypergradient at :math:`y` -- the
paper's stochastic Hessian-vector product oracle; the paper's estimator may truncate the
series at a random length instead of summing it, with that same expectation.

Differences from the paper (documented in ``explain`` and docs/language.md):

* with ``full`` sums inside the ``argmin`` the lower level is evaluated exactly, so UpdateLower
  is ``N`` steps of gradient descent rather than SGD and the Neumann series uses exact
  Hessian-vector products (the stochastic variant above is the paper's setting);
* the refinement is the ``inner`` solver run to its tolerance, not the paper's epoch-SGD schedule;
* normalised momentum acts on the solver's unconstrained coordinates (constraint
  reparameterisations, e.g. ``positive`` = softplus);
* inside a sum over blocks each block counts its own steps (the period is per block), and a
  block's ``y`` is updated only when the block is sampled.

Bias: the hypergradient is evaluated at a stale, inexact :math:`y_t` and truncates the Neumann
series (relative error :math:`\le (1 - \alpha\mu)^Q`): **biased** (flagged); exact evaluations
(``Program.grad``, the logged objective) solve the lower level with ``inner`` from ``init``.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from vrlang.estimators.bilevel import LBFGS, Implicit, Neumann, _auto_lr, _flat, _LinearSolver, neumann_series
from vrlang.estimators.stochastic_implicit import StochasticImplicit, minibatch_auto_lr, sgd_steps


class NeumannAt(_LinearSolver):
    """The truncated Neumann series with a *traced* step ``alpha`` (from the binder state)."""

    alpha: jax.Array
    iters: int = eqx.field(static=True, default=20)

    def solve(self, matvec, b):
        return neumann_series(matvec, b, jnp.asarray(self.alpha, b.dtype), self.iters)


class BoRep(eqx.Module):
    """BO-REP's lower level: refined start, ``steps`` gradient steps every ``period`` outer steps,
    Neumann-series hypergradient at the tracked ``y`` (``iters`` terms, step ``alpha`` or the lower step)."""

    inner: eqx.Module = LBFGS()
    period: int = eqx.field(static=True, default=5)
    steps: int = eqx.field(static=True, default=10)
    lr: float | None = eqx.field(static=True, default=None)
    iters: int = eqx.field(static=True, default=20)
    alpha: float | None = eqx.field(static=True, default=None)

    @property
    def stateful(self) -> bool:
        return True

    def decide(self, op, fn, init):
        """An exact evaluation: the inner problem solved by ``inner`` from ``init``, Neumann tangent solve."""
        return Implicit(self.inner, Neumann(self.iters, self.alpha)).decide(op, fn, init)

    def decide_from(self, op, fn, init, state):
        """``(solution, new_state)``: the tracked ``y`` (refined when ``state`` is ``None``, updated every
        ``period`` steps), differentiated implicitly at ``y`` with the Neumann series."""
        if op not in ("argmin", "argmax"):  # refused by the transform
            raise ValueError("borep applies to argmin/argmax")
        h, x0, unravel = _flat(fn, init, op == "argmax")
        sg = jax.lax.stop_gradient
        steps, period = self.steps, self.period
        if state is None:
            t = jnp.zeros((), jnp.int32)
            y = sg(self.inner.minimize(h, x0))  # initialisation refinement
            lr = sg(_auto_lr(h, y)) if self.lr is None else jnp.asarray(self.lr, x0.dtype)
        else:
            y_prev, t, lr = sg(ravel_pytree(state["y"])[0].astype(x0.dtype)), state["t"], state["lr"]

            def update(v):
                return jax.lax.fori_loop(0, steps, lambda _, w: w - lr * jax.grad(h)(w), v)

            due = (t > 0) & (t % period == 0)
            y = sg(jax.lax.cond(due, update, lambda v: v, y_prev))
        alpha = lr if self.alpha is None else jnp.asarray(self.alpha, x0.dtype)

        def solve(_root_fn, _guess):
            return y  # the tracked lower variable: no fresh solve

        v = jax.lax.custom_root(jax.grad(h), y, solve, NeumannAt(alpha, self.iters))
        return unravel(v), {"y": unravel(y), "t": t + 1 if state is not None else t, "lr": jnp.asarray(lr, x0.dtype)}


class StochasticBoRep(BoRep):
    """BO-REP with a minibatched lower level: SGD for the periodic update, stocBiO's estimate at the tracked ``y``."""

    def decide_sampled(self, op, fn, init, state, key):
        """``(solution, new_state)``; ``fn(v, key, frozen)`` the inner objective (``key = None``: exact sums).

        ``state = None`` (the initial state): the refined start, as :meth:`BoRep.decide_from`, with
        ``lr = auto`` the inverse of the largest top eigenvalue of the minibatch Hessian over
        ``AUTO_DRAWS`` fixed draws at it; ``key = None``: the exact algorithm (:meth:`BoRep.decide_from`).
        """
        if op not in ("argmin", "argmax"):  # refused by the transform
            raise ValueError("borep applies to argmin/argmax")
        exact = lambda v: fn(v, None, False)  # noqa: E731
        sign = -1.0 if op == "argmax" else 1.0
        x0, unravel = ravel_pytree(init)
        sg = jax.lax.stop_gradient

        def h(v, k):
            return sign * fn(unravel(v), k, True)

        if state is None:
            out, new = BoRep.decide_from(self, op, exact, init, None)
            if self.lr is None:
                y = ravel_pytree(new["y"])[0].astype(x0.dtype)
                new = {**new, "lr": minibatch_auto_lr(h, y).astype(x0.dtype)}
            return out, new
        if key is None:
            return BoRep.decide_from(self, op, exact, init, state)
        y, t, lr = sg(ravel_pytree(state["y"])[0].astype(x0.dtype)), state["t"], state["lr"]

        y = sg(jax.lax.cond((t > 0) & (t % self.period == 0), lambda v: sgd_steps(h, v, lr, key, self.steps),
                            lambda v: v, y))
        alpha = lr if self.alpha is None else jnp.asarray(self.alpha, x0.dtype)
        at_y = StochasticImplicit(self.inner, Neumann(self.iters), True, 0, None, self.iters, None)
        out, _ = at_y.decide_sampled(op, fn, init, {"y": unravel(y), "lr": lr, "alpha": alpha}, key)
        return out, {"y": unravel(y), "t": t + 1, "lr": lr}


__all__ = ["BoRep", "NeumannAt", "StochasticBoRep"]
