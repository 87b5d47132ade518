r"""The fully first-order penalty hypergradient (F2SA) for ``argmin``/``argmax``.

Bilevel problem: :math:`\min_x F(x) = f(x, y^*(x))`, :math:`y^*(x) = \arg\min_y g(x, y)`.  The
value-function penalty (Kwon, Kwon, Wright & Nowak, ICML 2023, "A fully first-order method for
stochastic bilevel optimization" -- F2SA; Kwon, Kwon, Wright & Nowak, ICLR 2024, "On penalty
methods for nonconvex bilevel optimization and first-order stochastic approximation"; the
ScaleBiO instantiation of Pan et al. 2024) replaces the constraint :math:`y = y^*(x)` by the
penalty :math:`\sigma\,(g(x, y) - \min_z g(x, z)) \ge 0`:

.. math::

    \mathcal L_\sigma(x, y, z) = f(x, y) + \sigma\,\big(g(x, y) - g(x, z)\big),
    \qquad
    \nabla_x \mathcal L^*_\sigma(x) = \nabla_x f(x, y_\sigma) + \sigma\big(\nabla_x g(x, y_\sigma)
        - \nabla_x g(x, z^*)\big)

at :math:`y_\sigma = \arg\min_y f/\sigma + g` and :math:`z^* = \arg\min_z g = y^*(x)`.  Only
gradients of :math:`f` and :math:`g` appear -- no Hessian-vector products.  For a
:math:`\mu`-strongly convex, smooth inner problem
:math:`\|\nabla \mathcal L^*_\sigma(x) - \nabla F(x)\| = O(1/\sigma)` (Kwon et al. 2023, Lemma 3.1):
the method is **biased**, and the bias shrinks like :math:`1/\sigma` (F2SA lets :math:`\sigma`
grow with the iterations).

How it maps onto vrlang (:mod:`vrlang.backend.lower`, ``Interpreter._penalised``):

* **Where f is.**  The outer "f" of a decision binder is the body of its *home*
  (:mod:`vrlang.ir.homes`): the innermost enclosing binder whose variable the inner problem uses
  -- a block of ``mean(t in 0..T: ...)`` in a multi-block problem -- or the whole objective.  The
  interpreter evaluates the home body :math:`B(x, v)` with the argmin's value replaced by ``v``
  and adds the penalty term there, so the home contributes
  :math:`B(x, y) + \sigma(h(x, y) - h(x, z))` (:math:`h = g`, or :math:`-g` for ``argmax``).
  Whatever surrounds the home (a mean over blocks, a ``log``, ``maximize``) applies to this
  value by the chain rule, and :math:`\nabla_x` of it is the F2SA estimate of
  :math:`\nabla_x B(x, y^*(x))` -- the local derivation holds for any :math:`B`.
* **State.**  ``y`` and ``z`` are binder state (one pair per home item: per block inside a sum over
  blocks, rewritten only for the sampled blocks), with the step counter ``t`` and the step sizes.
  The first evaluation (:class:`vrlang.estimators.binder_state.StatefulGradient`'s ``init``) solves
  :math:`z^*` and :math:`y_\sigma` with the ``inner`` solver.  Each outer step then takes ``steps``
  gradient steps (the single-loop F2SA with ``steps = 1``) before the x-gradient is formed:

  .. math::
      z \leftarrow z - \gamma\,\nabla_z h(x, z; \zeta), \qquad
      y \leftarrow y - \gamma_y\big(\nabla_y B(x, y; \xi)/\sigma_t + \nabla_y h(x, y; \zeta)\big),

  i.e. :math:`y` descends :math:`\mathcal L_\sigma/\sigma_t` so that the step is on the scale of
  :math:`g` for every :math:`\sigma` (F2SA's :math:`\alpha_k = \gamma/\lambda_k`).  ``lr = auto``:
  :math:`\gamma = 1/L_h`, :math:`\gamma_y = 1/L_y`, top eigenvalues of the Hessians of :math:`h`
  and of :math:`B/\sigma_0 + h` at the initial solutions (power iteration, once), the largest over
  4 minibatch draws when the sums inside are sampled (a minibatch Hessian can be several times
  steeper than the full one, and 1/L of the full one then diverges).  The
  x-gradient is then :math:`\nabla_x[B(x, y) + \sigma_t(h(x, y; \zeta') - h(x, z; \zeta'))]` at the
  new ``y``, ``z`` (one ``jax.grad`` of the program; ``y``, ``z`` carry no gradient).
* **Stochastic at both levels.**  Every term is a first-order gradient, linear in the sums it
  contains, so minibatched sums inside :math:`g` (and in :math:`B`) give unbiased estimates of
  :math:`\nabla_x \mathcal L_\sigma(x, y, z)` at the current ``y``, ``z``: the two evaluations of
  :math:`h` share one draw (their difference has less variance), the tracking steps draw afresh.
* **Schedule.**  :math:`\sigma_t = \sigma\,(1 + t)^{r}` with ``growth = r`` (0: constant), ``t`` the
  number of steps the home item has taken (a block's own clock).  ``sigma`` and ``growth`` may name
  a scalar ``const`` of the program: they are then traced, and a new value does not recompile.
* **Decreasing tracking steps** (``decay = c``; default 0, constant steps).  The tracking steps of
  outer step ``t`` are :math:`\gamma_t = \gamma\,(1 + t)^{-c}` for ``z`` and
  :math:`\gamma_{y,t} = \gamma_y (1 + t)^{-c}` for ``y`` (all ``steps`` inner steps of one outer step
  use the same step, as in F2SA's inner loop).  F2SA (Kwon et al. 2023, Algorithm 1 and its step-size
  design) takes :math:`\gamma_k \propto k^{-c}` for ``z``, :math:`\alpha_k \propto k^{-a}` for ``x``
  and ``y`` (on :math:`f + \lambda_k g`, i.e. :math:`\alpha_k\lambda_k \propto \gamma_k` on the scale of
  :math:`g`, which is what :math:`\gamma_{y,t}` is here), and :math:`\lambda_k = \sigma_k \propto
  k^{a - c}`; with noise in both levels :math:`a = 5/7`, :math:`c = 4/7`, which balances the descent
  term :math:`1/(K\alpha_K) = K^{-2/7}` against the squared penalty bias :math:`1/\lambda_K^2 = K^{-2/7}`
  (and the :math:`\alpha_k\lambda_k^2` variance of the x-gradient, :math:`k^{-3/7}`): an
  :math:`\epsilon`-stationary point (:math:`\|\nabla F\|^2 \le \epsilon`) in :math:`O(\epsilon^{-7/2})`
  iterations.  ``decay = true`` is that design: :math:`c = 4/7` and, unless ``growth`` is given,
  :math:`r = a - c = 1/7`.  The x step :math:`\alpha_k \propto k^{-5/7}` is the outer solver's:
  ``solve by sgd(lr = c, decay = 0.714)`` (:mod:`vrlang.solvers.spec`).  *Bias and
  cost*: the schedule changes neither the cost per step nor the bias at a given :math:`\sigma_t`
  (still :math:`O(1/\sigma_t)`, now shrinking like :math:`t^{-1/7}` with ``decay = true``); what it
  removes is the noise floor of the tracked pair -- with constant steps and minibatched sums ``y``,
  ``z`` hover at a distance :math:`O(\sqrt{\gamma})` from their targets, with decaying steps the
  distance keeps shrinking (like :math:`\sqrt{\gamma_t}` once the tracking has caught up), at the
  price of slower tracking when ``x`` moves fast.
* **Exact evaluations** (the logged objective, ``Program.objective``/``grad``, ``lbfgs``) solve
  :math:`z^*` and :math:`y_\sigma` (:math:`\sigma = \sigma_0`) with ``inner`` from ``init`` and return
  the true objective's value :math:`B(x, z^*)` with the penalty gradient
  :math:`\nabla_x \mathcal L_\sigma(x, y_\sigma, z^*)`: ``value + (L - stop_gradient(L))``.

Numerics: :math:`\sigma(\nabla_x h(y) - \nabla_x h(z))` subtracts nearly equal gradients; in float32
its relative rounding error grows like :math:`\sigma \varepsilon`, so prefer float64 for
:math:`\sigma \gtrsim 10^4`.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from vrlang.estimators.bilevel import AUTO_DRAWS, LBFGS, hessian_matvec, inverse_step, top_eigenvalue

_STEP_SALT, _FINAL_SALT, _AUTO_KEY = 0x5F2A, 0x5F2B, 0x5F2C


class HomeProblem(NamedTuple):
    """What a penalty method sees of the program at the decision binder's home.

    ``outer(v, key, frozen)`` is the home body with the argmin's value replaced by ``v``;
    ``inner(v, key, frozen)`` the inner objective (negated for ``argmax``).  ``key = None``
    evaluates every sum exactly; ``frozen = True`` evaluates with no gradient reaching the params
    (for inner loops).  ``key`` is the home's key, ``consts`` the program's consts.
    """

    outer: Callable
    inner: Callable
    key: Any
    consts: dict


def problem(outer: Callable, inner: Callable, key=None, consts=None) -> HomeProblem:
    """A :class:`HomeProblem` from plain functions ``outer(v)``, ``inner(v)`` (no sampling), for use
    without the DSL: ``jax.grad(lambda x: Penalty().exact(problem(lambda v: f(x, v), lambda v: g(x, v)), v0))``."""
    return HomeProblem(lambda v, k, frozen=False: outer(v), lambda v, k, frozen=False: inner(v), key, consts or {})


def _resolve(value, consts):
    """A number, or the name of a scalar const (traced)."""
    return jnp.asarray(consts[value]) if isinstance(value, str) else value


def _fold(key, *salts):
    if key is None:
        return None
    for s in salts:
        key = jax.random.fold_in(key, s)
    return key


class Penalty(eqx.Module):
    """The F2SA penalty hypergradient: ``y``, ``z`` tracked as binder state (see the module docstring).

    ``inner``: the solver of the exact solves (initial state, exact evaluations); ``sigma``,
    ``growth``: the penalty schedule (numbers or const names); ``lr``: the tracking step (``None`` =
    auto, 1/L); ``steps``: tracking steps per outer step (0: none -- ``y``, ``z`` stay where the
    state has them); ``decay``: the tracking steps of outer step ``t`` are ``lr * (1 + t)^-decay``
    (0: constant; F2SA's design with noise at both levels: 4/7, with ``growth = 1/7``; a number or a
    const name, traced like ``sigma``).
    """

    inner: eqx.Module = LBFGS()
    sigma: float | str = eqx.field(static=True, default=100.0)
    growth: float | str = eqx.field(static=True, default=0.0)
    lr: float | str | None = eqx.field(static=True, default=None)
    steps: int = eqx.field(static=True, default=1)
    decay: float | str = eqx.field(static=True, default=0.0)

    @property
    def stateful(self) -> bool:
        return True

    @property
    def home_term(self) -> bool:  # the interpreter evaluates the home body through this method
        return True

    def sigma_at(self, consts, t):
        """:math:`\\sigma_t = \\sigma (1 + t)^{growth}`."""
        s, r = _resolve(self.sigma, consts), _resolve(self.growth, consts)
        return s * (1.0 + t) ** r

    def decide(self, op, fn, init):
        raise TypeError("penalty needs the outer objective around the argmin: the interpreter evaluates it at the "
                        "argmin's home; without the DSL use Penalty.exact(problem(outer, inner), init)")

    def _solve_pair(self, home, unravel, x0, s):
        """:math:`z^* = \\arg\\min h`, :math:`y_\\sigma = \\arg\\min B/\\sigma + h` (from :math:`z^*`), exactly."""
        def h(v):
            return home.inner(unravel(v), None, True)

        def ly(v):
            return home.outer(unravel(v), None, True) / s + h(v)

        z = jax.lax.stop_gradient(self.inner.minimize(h, x0))
        y = jax.lax.stop_gradient(self.inner.minimize(ly, z))
        return y, z, h, ly

    def _auto_steps(self, home, unravel, y, z, s):
        r"""``lr = auto``: :math:`1/L` for z and y, with :math:`L` the largest top Hessian eigenvalue (power
        iteration) of :math:`h` (at z) and of :math:`B/\sigma_0 + h` (at y) over ``AUTO_DRAWS`` draws of
        the minibatches (fixed keys; all equal when the sums are exact): a step that is stable for the
        sampled objectives the tracking steps see, not only for the exact one."""
        keys = jax.random.split(jax.random.PRNGKey(_AUTO_KEY), AUTO_DRAWS)

        def top(key):
            kb, kg = key, _fold(key, _FINAL_SALT)

            def h(v):
                return home.inner(unravel(v), kg, True)

            def ly(v):
                return home.outer(unravel(v), kb, True) / s + h(v)

            return (top_eigenvalue(hessian_matvec(h, z), z), top_eigenvalue(hessian_matvec(ly, y), y))

        Lz, Ly = jax.vmap(top)(keys)
        return jax.lax.stop_gradient(inverse_step(jnp.max(Lz))), jax.lax.stop_gradient(inverse_step(jnp.max(Ly)))

    def lagrangian(self, home, unravel, y, z, s, key):
        """:math:`B(x, y) + \\sigma (h(x, y) - h(x, z))` at fixed ``y``, ``z`` (gradients reach x only);
        the two evaluations of ``h`` share one draw."""
        kg = _fold(key, _FINAL_SALT)
        yv, zv = unravel(y), unravel(z)
        return home.outer(yv, key, False) + s * (home.inner(yv, kg, False) - home.inner(zv, kg, False))

    def exact(self, home: HomeProblem, init):
        """An exact evaluation: value :math:`B(x, z^*)` (the true objective at the home), gradient
        :math:`\\nabla_x \\mathcal L_{\\sigma_0}(x, y_\\sigma, z^*)`."""
        x0, unravel = ravel_pytree(init)
        x0 = jax.lax.stop_gradient(x0)
        s = self.sigma_at(home.consts, 0.0)
        y, z, _, _ = self._solve_pair(home, unravel, x0, jax.lax.stop_gradient(s))
        value = home.outer(unravel(z), home.key, False)
        surrogate = self.lagrangian(home, unravel, y, z, s, home.key)
        return jax.lax.stop_gradient(value) + surrogate - jax.lax.stop_gradient(surrogate)

    def tracked(self, home: HomeProblem, init, state):
        """One outer step: ``steps`` tracking steps of ``z`` and ``y``, then the Lagrangian at the new
        pair.  ``state = None``: the initial state (exact solves, no tracking step).  Returns
        ``(value, new_state)``."""
        x0, unravel = ravel_pytree(init)
        x0 = jax.lax.stop_gradient(x0)
        dtype = x0.dtype
        sg = jax.lax.stop_gradient
        if state is None:
            s0 = sg(self.sigma_at(home.consts, 0.0))
            y, z, h, ly = self._solve_pair(home, unravel, x0, s0)
            if self.lr is None:
                lr_z, lr_y = self._auto_steps(home, unravel, y, z, s0)
            else:
                lr_z = lr_y = jnp.asarray(_resolve(self.lr, home.consts), dtype)
            t = jnp.zeros((), jnp.int32)
            steps = 0
        else:
            y, z = ravel_pytree(state["y"])[0].astype(dtype), ravel_pytree(state["z"])[0].astype(dtype)
            t, lr_y, lr_z = state["t"], state["lr_y"], state["lr_z"]
            steps = self.steps
        s = self.sigma_at(home.consts, t.astype(dtype))
        if steps:
            s_frozen = sg(s)
            if self.decay:  # F2SA's decreasing tracking steps: gamma_t = gamma (1 + t)^-decay
                shrink = (1.0 + t.astype(dtype)) ** (-_resolve(self.decay, home.consts))
                lr_y, lr_z = lr_y * shrink, lr_z * shrink

            def step(k, carry):
                yk, zk = carry
                kb = _fold(home.key, _STEP_SALT, k)
                kg = _fold(kb, _FINAL_SALT)

                def h(v):
                    return home.inner(unravel(v), kg, True)

                def ly(v):
                    return home.outer(unravel(v), kb, True) / s_frozen + h(v)

                return yk - lr_y * jax.grad(ly)(yk), zk - lr_z * jax.grad(h)(zk)

            y, z = jax.lax.fori_loop(0, steps, step, (y, z))
            y, z = sg(y), sg(z)
        value = self.lagrangian(home, unravel, y, z, s, home.key)
        if state is not None:  # the state keeps the initial steps (the schedule is applied to them)
            lr_y, lr_z = state["lr_y"], state["lr_z"]
        new = {"y": unravel(y), "z": unravel(z), "t": t + 1 if state is not None else t,
               "lr_y": jnp.asarray(lr_y, dtype), "lr_z": jnp.asarray(lr_z, dtype)}
        return value, new


#: ``decay = true``: F2SA's step-size design with noise at both levels (Kwon et al. 2023):
#: tracking steps ~ k^-(4/7), sigma ~ k^(1/7) (the x step ~ k^-(5/7) is the outer solver's)
F2SA_DECAY, F2SA_GROWTH = 4.0 / 7.0, 1.0 / 7.0

__all__ = ["F2SA_DECAY", "F2SA_GROWTH", "HomeProblem", "Penalty", "problem"]
