r"""SVRG as the inner solver of ``implicit`` (``implicit(inner = svrg(steps, batch, lr, epoch))``).

The inner problem :math:`\min_v g(v) = \frac1n \sum_i g_i(v)` (the finite sums of the argmin's
body) is solved by SVRG (Johnson & Zhang, NeurIPS 2013, "Accelerating stochastic gradient
descent using predictive variance reduction"), started at the (warm-started) inner state
:math:`v_0`:

.. math::
    \tilde v \leftarrow v_t,\ \mu \leftarrow \nabla g(\tilde v) \quad\text{when } t \equiv 0 \pmod m, \qquad
    v_{t+1} = v_t - \eta\,\big(\nabla g_{B_t}(v_t) - \nabla g_{B_t}(\tilde v) + \mu\big),

for ``steps`` steps, :math:`B_t` a minibatch of ``batch`` items drawn uniformly with replacement
over each sum of the body, the same :math:`B_t` at :math:`v_t` and at the snapshot :math:`\tilde v`
(so the correction has zero mean and a variance that vanishes as :math:`v_t, \tilde v \to v^*`).
``lr = None`` (auto): :math:`\eta = 1/(2\hat L)`, :math:`\hat L` the largest top eigenvalue of
:math:`\nabla^2 g_B` (power iteration) over :data:`AUTO_DRAWS` minibatch draws at :math:`v_0`
(the minibatch smoothness bounds the SVRG step; the factor 1/2 is a safety margin, measured to
converge on the ridge test problem at ``batch = 8`` where 1/L̂ also does).

The solver is never differentiated: the hypergradient stays implicit differentiation at the
returned point (:class:`vrlang.estimators.bilevel.Implicit`: ``custom_root`` with the linear solve on
the exact inner Hessian), so its error is that of the inexact inner solution,
:math:`O(\|v_T - v^*\|)`.

The objective handed to :meth:`InnerSVRG.minimize` takes an optional *draw*: ``fn(v)`` is the exact
inner objective, ``fn(v, t)`` (``t`` an int32) the objective with every sum of the body estimated on
the minibatch of draw ``t`` (the lowering, :meth:`vrlang.backend.lower.Interpreter._decide`, folds
``t`` into a key: the step's key folded with the binder's salt, or in an exact evaluation -- the
logged objective, ``Program.grad`` -- a fixed key folded with the salt, so those stay
deterministic).  The same draw gives the same minibatch.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from vrlang.estimators.bilevel import AUTO_DRAWS, inverse_step, sampled_top_eigenvalue

_AUTO_DRAW0 = 1 << 30  # draw numbers of the lr = auto minibatches (disjoint from the steps' 0..steps-1)
DEFAULT_EPOCH = 10


class InnerSVRG(eqx.Module):
    """SVRG on the inner finite sum: ``steps`` minibatch steps, snapshot (full gradient) every ``epoch`` steps."""

    steps: int = eqx.field(static=True, default=100)
    batch: int = eqx.field(static=True, default=8)
    lr: float | None = eqx.field(static=True, default=None)
    epoch: int = eqx.field(static=True, default=DEFAULT_EPOCH)

    def step_size(self, fn, x0):
        if self.lr is not None:
            return jnp.asarray(self.lr, x0.dtype)
        draws = _AUTO_DRAW0 + jnp.arange(AUTO_DRAWS, dtype=jnp.int32)
        return inverse_step(sampled_top_eigenvalue(fn, x0, draws), scale=0.5)

    def minimize(self, fn, x0, ref=None):
        """SVRG from ``x0`` (``ref``, the cold start of a warm-started solve, is not used: no early stop)."""
        del ref
        full = jax.grad(lambda v: fn(v))
        mb = jax.grad(lambda v, t: fn(v, t))
        lr = jax.lax.stop_gradient(self.step_size(fn, x0))
        m = max(1, self.epoch)

        def body(t, c):
            x, snap, mu = c
            snap, mu = jax.lax.cond(t % m == 0, lambda: (x, full(x)), lambda: (snap, mu))
            x2 = x - lr * (mb(x, t) - mb(snap, t) + mu)
            return jnp.where(jnp.all(jnp.isfinite(x2)), x2, x), snap, mu

        x, _, _ = jax.lax.fori_loop(0, self.steps, body, (x0, x0, jnp.zeros_like(x0)))
        return x

    def unrolled(self, fn, x0):  # pragma: no cover - refused by the transform
        raise NotImplementedError("unrolling differentiates gradient descent only")


__all__ = ["DEFAULT_EPOCH", "InnerSVRG"]
