r"""Variance-reduced finite-sum solvers as the inner solver of ``implicit``:
``implicit(inner = svrg(steps, batch, lr, epoch) | lsvrg(steps, batch, lr, p) | saga(steps, batch, lr))``.

The inner problem :math:`\min_v g(v) = \frac1n \sum_i g_i(v)` (the finite sums of the argmin's
body) is solved from the (warm-started) inner state :math:`v_0` by ``steps`` steps
:math:`v_{t+1} = v_t - \eta\, d_t` on minibatches :math:`B_t` of ``batch`` items drawn uniformly
with replacement, :math:`d_t` a variance-reduced estimate of :math:`\nabla g(v_t)`:

* :class:`InnerSVRG` -- SVRG (Johnson & Zhang, NeurIPS 2013, "Accelerating stochastic gradient
  descent using predictive variance reduction"):
  :math:`d_t = \nabla g_{B_t}(v_t) - \nabla g_{B_t}(\tilde v) + \nabla g(\tilde v)`, the snapshot
  :math:`\tilde v \leftarrow v_t` (and its full gradient) refreshed when :math:`t \equiv 0 \pmod m`
  (``epoch = m``).  Every sum of the body is drawn on its own minibatch, the same :math:`B_t` at
  :math:`v_t` and at :math:`\tilde v` (so the correction has zero mean and a variance that vanishes
  as :math:`v_t, \tilde v \to v^*`).
* :class:`InnerLSVRG` -- loopless SVRG (Kovalev, Horváth & Richtárik, ALT 2020, "Don't jump through
  hoops and remove those loops"): the same :math:`d_t`, the snapshot refreshed to :math:`v_t` with
  probability ``p`` after each step (a coin drawn from the solve's key), so the expected cost per
  step is :math:`2b` item gradients + ``p`` full gradients (``p = 1/m`` costs what SVRG does).
* :class:`InnerSAGA` -- SAGA (Defazio, Bach & Lacoste-Julien, NeurIPS 2014), minibatch form, over
  the items of the body's one sum (:math:`g = \frac1n \sum_j h_j`, :math:`h_j` the body with that
  sum evaluated at the single item ``j``, reweighted by ``n``):
  :math:`d_t = \frac1b \sum_{k} (\nabla h_{j_k}(v_t) - T[j_k]) + \frac1n \sum_i T[i]`, then
  :math:`T[j_k] \leftarrow \nabla h_{j_k}(v_t)`.  The table :math:`T` holds one gradient w.r.t.
  :math:`v` per item -- ``n x dim(v)`` numbers (the generic table, also for a GLM body, where one
  scalar per item would do: :class:`vrlang.estimators.finite_sum.SAGAGLMGradient` is the outer
  estimator's version) -- built at the start of every inner solve from the (warm) start
  (``n`` item gradients, one full gradient's worth, ``lax.map`` in chunks) and dropped at its end:
  the binder state stays the solution alone.  Its mean is updated incrementally (duplicates in a
  minibatch counted once, as in the outer SAGA).

``lr = None`` (auto): :math:`\eta = s/\hat L`, :math:`\hat L` the largest top eigenvalue of
:math:`\nabla^2 g_B` (power iteration) over :data:`AUTO_DRAWS` minibatch draws at :math:`v_0` (the
minibatch smoothness bounds the step), :math:`s` = 1/2 for SVRG and L-SVRG and 1/3 for SAGA (its
classical :math:`1/(3L)`, Defazio et al. Thm 1); measured to converge on the ridge test problem at
``batch = 8``.  A step that would leave a non-finite point is skipped.

The solver is never differentiated: the hypergradient stays implicit differentiation at the
returned point (:class:`vrlang.estimators.bilevel.Implicit`: ``custom_root`` with the linear solve on
the exact inner Hessian), so its error is that of the inexact inner solution,
:math:`O(\|v_T - v^*\|)` -- flagged biased.

The objective handed to ``minimize`` (built by the lowering,
:meth:`vrlang.backend.lower.Interpreter._decide`, and carried through
:func:`vrlang.estimators.bilevel._flat`) is

* ``fn(v)`` -- the exact inner objective;
* ``fn(v, t)`` (``t`` an int32) -- every sum of the body estimated on the minibatch of draw ``t``
  (the same draw gives the same minibatch);
* ``fn.key`` -- the key the draws are folded into (the step's key folded with the binder's salt,
  or in an exact evaluation -- the logged objective, ``Program.grad`` -- a fixed key folded with
  the salt, so those stay deterministic); the solvers draw their own coins (L-SVRG) and indices
  (SAGA) from it, with draw numbers disjoint from the minibatch draws' ``0..steps-1``;
* ``fn.items`` and ``fn.at(v, idx)`` -- the number ``n`` of items of the body's one outermost sum
  (``None`` if it has none or several) and the body with that sum evaluated at the items ``idx``
  (int32, shape ``(b,)``, weights ``n/b``), its other sums exact: SAGA's :math:`h_j` is ``at(v, [j])``.
"""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp

from vrlang.estimators.bilevel import AUTO_DRAWS, inverse_step, sampled_top_eigenvalue
from vrlang.estimators.finite_sum import _first_occurrence

_AUTO_DRAW0 = 1 << 30  # draw numbers of the lr = auto minibatches (disjoint from the steps' 0..steps-1)
_COIN_DRAW0 = 1 << 29  # draw numbers of L-SVRG's coins
DEFAULT_EPOCH = 10
DEFAULT_P = 1.0 / DEFAULT_EPOCH  # L-SVRG: the expected refresh rate of svrg's default epoch
TABLE_CHUNK = 256  # SAGA: item gradients per lax.map chunk when the table is built


def _guarded(x, x2):
    """``x2`` unless it has a non-finite entry (then the step is skipped)."""
    return jnp.where(jnp.all(jnp.isfinite(x2)), x2, x)


class _MinibatchInner(eqx.Module):
    """What the three solvers share: ``steps`` steps on minibatches of ``batch``, the step size."""

    lr_scale: ClassVar[float] = 0.5

    steps: int = eqx.field(static=True, default=100)
    batch: int = eqx.field(static=True, default=8)
    lr: float | None = eqx.field(static=True, default=None)

    def step_size(self, fn, x0):
        if self.lr is not None:
            return jnp.asarray(self.lr, x0.dtype)
        draws = _AUTO_DRAW0 + jnp.arange(AUTO_DRAWS, dtype=jnp.int32)
        return jax.lax.stop_gradient(inverse_step(sampled_top_eigenvalue(fn, x0, draws), scale=self.lr_scale))

    def unrolled(self, fn, x0):  # pragma: no cover - refused by the transform
        raise NotImplementedError("unrolling differentiates gradient descent only")


def _svrg_step(mb, x, snap, mu, lr, t):
    """The SVRG/L-SVRG step on the minibatch of draw ``t``: ``x - lr (g_t(x) - g_t(snap) + mu)``, guarded."""
    return _guarded(x, x - lr * (mb(x, t) - mb(snap, t) + mu))


class InnerSVRG(_MinibatchInner):
    """SVRG on the inner finite sum: ``steps`` minibatch steps, snapshot (full gradient) every ``epoch`` steps."""

    epoch: int = eqx.field(static=True, default=DEFAULT_EPOCH)

    def minimize(self, fn, x0, ref=None):
        """SVRG from ``x0`` (``ref``, the cold start of a warm-started solve, is not used: no early stop)."""
        del ref
        full = jax.grad(lambda v: fn(v))
        mb = jax.grad(lambda v, t: fn(v, t))
        lr = self.step_size(fn, x0)
        m = max(1, self.epoch)

        def body(t, c):
            x, snap, mu = c
            snap, mu = jax.lax.cond(t % m == 0, lambda: (x, full(x)), lambda: (snap, mu))
            return _svrg_step(mb, x, snap, mu, lr, t), snap, mu

        x, _, _ = jax.lax.fori_loop(0, self.steps, body, (x0, x0, jnp.zeros_like(x0)))
        return x


class InnerLSVRG(_MinibatchInner):
    """Loopless SVRG on the inner finite sum: the snapshot refreshed with probability ``p`` after each step."""

    p: float = eqx.field(static=True, default=DEFAULT_P)

    def minimize(self, fn, x0, ref=None):
        """L-SVRG from ``x0`` (snapshot at ``x0``); the coins are drawn from ``fn.key``."""
        del ref
        full = jax.grad(lambda v: fn(v))
        mb = jax.grad(lambda v, t: fn(v, t))
        lr = self.step_size(fn, x0)
        key = fn.key

        def body(t, c):
            x, snap, mu = c
            x2 = _svrg_step(mb, x, snap, mu, lr, t)
            coin = jax.random.bernoulli(jax.random.fold_in(key, _COIN_DRAW0 + t), self.p)
            snap, mu = jax.lax.cond(coin, lambda: (x, full(x)), lambda: (snap, mu))  # w <- v_t (Kovalev et al.)
            return x2, snap, mu

        x, _, _ = jax.lax.fori_loop(0, self.steps, body, (x0, x0, full(x0)))
        return x


class InnerSAGA(_MinibatchInner):
    """SAGA on the items of the inner problem's one sum: a table of ``n`` per-item gradients w.r.t. ``v``."""

    lr_scale: ClassVar[float] = 1.0 / 3.0

    def minimize(self, fn, x0, ref=None):
        """SAGA from ``x0``, the table built at ``x0``; the indices are drawn from ``fn.key``."""
        del ref
        n, b, key = fn.items, self.batch, fn.key
        if n is None:  # refused at compile time (vrlang.transforms.bilevel.check_decisions)
            raise ValueError("inner saga needs an inner objective with exactly one outermost finite sum")

        def item_grad(x, j):
            return jax.grad(fn.at)(x, jnp.reshape(j, (1,)))

        lr = self.step_size(fn, x0)
        table = jax.lax.map(lambda j: item_grad(x0, j), jnp.arange(n, dtype=jnp.int32),
                            batch_size=min(n, TABLE_CHUNK))

        def body(t, c):
            x, table, mean = c
            idx = jax.random.randint(jax.random.fold_in(key, t), (b,), 0, n, dtype=jnp.int32)
            new = jax.vmap(item_grad, in_axes=(None, 0))(x, idx)
            diff = new - table[idx]
            x2 = _guarded(x, x - lr * (jnp.mean(diff, axis=0) + mean))
            first = _first_occurrence(idx).astype(diff.dtype)
            return x2, table.at[idx].set(new), mean + first @ diff / n

        x, _, _ = jax.lax.fori_loop(0, self.steps, body, (x0, table, jnp.mean(table, axis=0)))
        return x


MINIBATCH_SOLVERS = (InnerSVRG, InnerLSVRG, InnerSAGA)  # the inner solvers that draw minibatches

__all__ = ["DEFAULT_EPOCH", "DEFAULT_P", "InnerLSVRG", "InnerSAGA", "InnerSVRG", "MINIBATCH_SOLVERS", "TABLE_CHUNK"]
