"""Finite-sum gradient estimators.

For an objective :math:`f(w) = g(w) + \\frac1n\\sum_i f_i(w)` the compiler provides the
stochastic objective :math:`F(w;\\xi)` (each sampled sum replaced by its reweighted
minibatch, :mod:`vrlang.estimators.sampling`) with :math:`E_\\xi F(w;\\xi) = f(w)`.
The estimators below are written against that one function, so they apply to any
program whose sampled sums enter the objective linearly.

* :class:`FullGradient` -- :math:`\\nabla f(w)` exactly (``full``).
* :class:`MinibatchGradient` -- :math:`\\nabla F(w;\\xi)` (``sgd``; Robbins & Monro 1951).
* :class:`SVRGGradient` -- :math:`\\nabla F(w;\\xi) - \\nabla F(\\tilde w;\\xi) + \\nabla f(\\tilde w)`
  with the snapshot :math:`\\tilde w` refreshed every ``epoch`` steps (Johnson & Zhang,
  "Accelerating stochastic gradient descent using predictive variance reduction",
  NeurIPS 2013).  Unbiased: the two sampled terms share :math:`\\xi` and have equal
  means up to the control variate's exact mean :math:`\\nabla f(\\tilde w)`.
* :class:`LSVRGGradient` -- loopless SVRG: the same estimate, the snapshot refreshed with
  probability ``p`` after each step (Kovalev, Horvath & Richtarik, ALT 2020).  Unbiased.
* :class:`SAGAGradient` -- a table of the last per-item gradients as control variate
  (Defazio, Bach & Lacoste-Julien, NeurIPS 2014).  Unbiased.
* :class:`SVRGGLMGradient`, :class:`LSVRGGLMGradient` -- SVRG/L-SVRG for a generalised linear
  model body: one draw of the minibatch, the scalar loss derivatives at the two points and one
  product with the minibatch rows (Johnson & Zhang 2013; Schmidt et al. 2017, §4).  Unbiased.
* :class:`SAGAGLMGradient` -- SAGA for a generalised linear model body
  :math:`h_j(w) = c\\,\\phi_j(\\langle x_j, w\\rangle) + \\rho(w)`: the table holds one scalar per item
  (the loss derivative at the margin), ``O(n)`` memory instead of ``O(n d)`` (Schmidt, Le Roux
  & Bach 2017, §4; Defazio et al. 2014).  Unbiased.

Importance sampling: every estimator draws through the objective's samplers, so
``sampling = weights(...)``/``lipschitz`` (:class:`~vrlang.estimators.sampling.ImportanceSampler`,
weights :math:`1/(b p_j)`) keeps :math:`E_\\xi F(w;\\xi) = f(w)` and every estimator above
its bias status; SAGA, which draws its own indices, takes the sampler as a field and
reweights its correction by :math:`1/(n p_j)` (see :class:`SAGAGradient`).
* :class:`SARAHGradient`, :class:`SPIDERGradient`, :class:`PAGEGradient` -- recursive
  estimators :math:`v_t = \\nabla F(w_t;\\xi_t) - \\nabla F(w_{t-1};\\xi_t) + v_{t-1}`,
  restarted from a (large-batch or full) gradient (Nguyen et al. 2017; Fang et al. 2018;
  Li et al. 2021).  Biased given the past (only the restart is unbiased).
* :class:`STORMGradient` -- momentum-based recursive estimator (Cutkosky & Orabona 2019).
  Biased.

Randomness: every estimator draws its minibatch from the key it is given (through the
objective's samplers), and its coins (L-SVRG, PAGE) from a key split off it.  The
two minibatch gradients of SVRG, L-SVRG and the recursive estimators (at the current and
at a reference point, one draw) are one ``vmap`` over the pair of points with the key
shared, so the draw and its gather happen once (:func:`_grad_pair`).  Numeric
hyperparameters (``p``, ``a``) are array fields, hence traced; only integers that fix
shapes or loop lengths (``epoch``, ``period``, ``batch``, ``n``) are static.
"""

from __future__ import annotations

from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp

from vrlang.estimators.base import AbstractGradientEstimator, CompiledObjective
from vrlang.estimators.sampling import UniformSampler


class FullGradient(AbstractGradientEstimator):
    objective: CompiledObjective
    evals_per_step: float = eqx.field(static=True)
    steps_per_epoch: int = eqx.field(static=True)

    def estimate(self, params, state, key):
        return jax.grad(self.objective.value)(params), state


class MinibatchGradient(AbstractGradientEstimator):
    objective: CompiledObjective
    evals_per_step: float = eqx.field(static=True)
    steps_per_epoch: int = eqx.field(static=True)

    def estimate(self, params, state, key):
        return jax.grad(self.objective.sample)(params, key), state


class SVRGState(eqx.Module):
    snapshot: dict
    full_grad: dict
    count: jax.Array


class SVRGGradient(AbstractGradientEstimator):
    objective: CompiledObjective
    epoch: int = eqx.field(static=True)  # steps between snapshot refreshes
    evals_per_step: float = eqx.field(static=True)
    steps_per_epoch: int = eqx.field(static=True)

    def init(self, params, key):
        return SVRGState(params, jax.grad(self.objective.value)(params), jnp.zeros((), jnp.int32))

    def estimate(self, params, state, key):
        def refresh(s):
            return SVRGState(params, jax.grad(self.objective.value)(params), s.count)

        state = jax.lax.cond((state.count > 0) & (state.count % self.epoch == 0), refresh, lambda s: s, state)
        gw, gs = _grad_pair(self.objective, params, state.snapshot, key)
        grads = jax.tree_util.tree_map(lambda a, b, c: a - b + c, gw, gs, state.full_grad)
        return grads, SVRGState(state.snapshot, state.full_grad, state.count + 1)


def _grad_sample(objective: CompiledObjective):
    return jax.grad(objective.sample)


def _grad_pair(objective: CompiledObjective, a, b, key):
    """``(grad F(a; xi), grad F(b; xi))`` for one draw ``xi``: the gradient is ``vmap``-ed over the
    two points with the key shared, so the minibatch is drawn (and its rows gathered) once."""
    both = jax.tree_util.tree_map(lambda x, y: jnp.stack([x, y]), a, b)
    g = jax.vmap(jax.grad(objective.sample), in_axes=(0, None))(both, key)
    return _combine(lambda t: t[0], g), _combine(lambda t: t[1], g)


def _combine(f, *trees):
    return jax.tree_util.tree_map(f, *trees)


# ----------------------------------------------------------------------------- L-SVRG


class LSVRGState(eqx.Module):
    snapshot: dict
    full_grad: dict


class LSVRGGradient(AbstractGradientEstimator):
    r"""Loopless SVRG (Kovalev, Horváth & Richtárik, "Don't jump through hoops and remove
    those loops: SVRG and Katyusha are better without the outer loop", ALT 2020).

    .. math::
        g_t = \nabla F(w_t;\xi_t) - \nabla F(\tilde w_t;\xi_t) + \nabla f(\tilde w_t), \qquad
        \tilde w_{t+1} = \begin{cases} w_t & \text{with probability } p \\
                                       \tilde w_t & \text{otherwise.}\end{cases}

    The coin is drawn from a key split off ``key`` and the refresh (one full gradient) runs
    under ``lax.cond``.  Unbiased: :math:`E_\xi g_t = \nabla f(w_t)` for every snapshot.
    ``p`` is traced (an array field); the amortised cost ``2 s + p N`` (``s`` component
    gradients per minibatch, ``N`` per full gradient) is therefore a traced value too.
    """

    objective: CompiledObjective
    p: jax.Array  # snapshot refresh probability per step
    sampled_evals: int = eqx.field(static=True)
    exact_evals: int = eqx.field(static=True)
    steps_per_epoch: int = eqx.field(static=True)

    @property
    def evals_per_step(self):
        return 2.0 * self.sampled_evals + self.p * self.exact_evals

    def init(self, params, key):
        return LSVRGState(params, jax.grad(self.objective.value)(params))

    def estimate(self, params, state, key):
        k_sample, k_coin = jax.random.split(key)
        gw, gs = _grad_pair(self.objective, params, state.snapshot, k_sample)
        grads = _combine(lambda a, b, c: a - b + c, gw, gs, state.full_grad)

        def refresh(s):
            return LSVRGState(params, jax.grad(self.objective.value)(params))

        state = jax.lax.cond(jax.random.bernoulli(k_coin, self.p), refresh, lambda s: s, state)
        return grads, state


# ------------------------------------------------------------------------------- SAGA


class SAGAState(eqx.Module):
    table: dict  # name -> (n, *shape): the last gradient of each item's function h_j
    mean: dict  # name -> shape: mean of the table over the n items


class SAGAGradient(AbstractGradientEstimator):
    r"""SAGA (Defazio, Bach & Lacoste-Julien, "SAGA: a fast incremental gradient method with
    support for non-strongly convex composite objectives", NeurIPS 2014), minibatch form.

    With the per-item functions :math:`h_j(w) = F(w; \{j\})` (the sampled sum's minibatch
    fixed to the single item ``j``, reweighted by ``n``; ``objective.at``), which satisfy
    :math:`\frac1n \sum_j h_j = f`, and a table :math:`T` of past per-item gradients:

    .. math::
        v_t = \sum_{k=1}^b \frac{\omega_k}{n} \big(\nabla h_{j_k}(w_t) - T[j_k]\big) + \frac1n \sum_{i=1}^n T[i],
        \qquad T[j_k] \leftarrow \nabla h_{j_k}(w_t),

    with :math:`(j_k, \omega_k)` from the sampler: uniform with replacement,
    :math:`\omega_k = n/b` (the classical :math:`\frac1b\sum_k`), or importance sampling
    from :math:`p`, :math:`\omega_k = 1/(b p_{j_k})`, i.e. each correction reweighted by
    :math:`1/(n p_j)`.  Unbiased for any table and any :math:`p > 0`:
    :math:`E\big[\sum_k \frac{\omega_k}{n} (\nabla h_{j_k} - T[j_k])\big] = \frac1n \sum_j
    (\nabla h_j(w) - T[j]) = \nabla f(w) - \frac1n\sum_i T[i]` (the sampler's contract
    :math:`E[\sum_k \omega_k g(j_k)] = \sum_i g(i)`).  With importance sampling the table
    mean is still the plain mean (it is the control variate's exact expectation).

    Memory: the table holds ``n`` copies of the gradient (``O(n d)``); it is initialised
    with the ``n`` per-item gradients at the initial params (``lax.map`` in chunks of
    ``init_chunk``).  The table mean is updated incrementally (duplicates in a minibatch
    counted once).  Requires exactly one sampled sum (of ``n`` items).  For a generalised
    linear model body the compiler uses :class:`SAGAGLMGradient` (``n`` scalars).
    """

    objective: CompiledObjective  # must provide ``at`` (fn_at)
    n: int = eqx.field(static=True)
    batch: int = eqx.field(static=True)
    evals_per_step: float = eqx.field(static=True)
    steps_per_epoch: int = eqx.field(static=True)
    init_chunk: int = eqx.field(static=True, default=256)
    sampler: Any = None  # UniformSampler(batch) when None; an ImportanceSampler reweights by 1/(n p_j)

    def item_grad(self, params, j):
        """:math:`\\nabla h_j(w)` for one item index ``j`` (a scalar int)."""
        return jax.grad(self.objective.at)(params, jnp.reshape(j, (1,)))

    def init(self, params, key):
        if self.objective.fn_at is None:
            raise ValueError("SAGAGradient needs an objective with a fixed-index form (fn_at)")
        idx = jnp.arange(self.n, dtype=jnp.int32)
        table = jax.lax.map(lambda j: self.item_grad(params, j), idx, batch_size=min(self.n, self.init_chunk))
        return SAGAState(table, _combine(lambda t: jnp.mean(t, axis=0), table))

    def estimate(self, params, state, key):
        n, b = self.n, self.batch
        idx, wts = _draw(self.sampler, b, key, n)
        new = jax.vmap(lambda j: self.item_grad(params, j))(idx)
        old = _combine(lambda t: t[idx], state.table)
        if wts is None:  # uniform: (1/b) sum_k
            grads = _combine(lambda nw, od, m: jnp.mean(nw - od, axis=0) + m, new, old, state.mean)
        else:  # sum_k (w_k / n) (.), w_k = 1 / (b p_{j_k})
            c = wts / n
            grads = _combine(lambda nw, od, m: jnp.tensordot(c.astype(nw.dtype), nw - od, axes=1) + m,
                             new, old, state.mean)
        first = _first_occurrence(idx)

        def upd_mean(m, nw, od):
            w = first.astype(nw.dtype).reshape((b,) + (1,) * (nw.ndim - 1))
            return m + jnp.sum(w * (nw - od), axis=0) / n

        mean = _combine(upd_mean, state.mean, new, old)
        # where(all(idx >= 0), ...) == new; the scatter must depend on the gather or XLA copies the table
        table = _combine(lambda t, nw, od: t.at[idx].set(jnp.where(jnp.all(idx >= 0), nw, od)), state.table, new, old)
        return grads, SAGAState(table, mean)


def _draw(sampler, b, key, n):
    """SAGA's indices: ``(idx, None)`` for uniform sampling (the classical draw), else ``(idx, weights)``."""
    if sampler is None or isinstance(sampler, UniformSampler):
        return jax.random.randint(key, (b,), 0, n, dtype=jnp.int32), None
    return sampler.sample(key, n)


def _first_occurrence(idx):
    """The incremental mean update counts each distinct index of a minibatch once."""
    return ~jnp.any(jnp.tril(idx[:, None] == idx[None, :], k=-1), axis=1)


class SAGAGLMState(eqx.Module):
    table: jax.Array  # (n,): s_j, the derivative of h_j in its margin at the last visit of item j
    mean: dict  # (1/n) sum_j s_j grad m_j, shaped like the params


class SAGAGLMGradient(AbstractGradientEstimator):
    r"""SAGA with a scalar table, for a generalised linear model body (Schmidt, Le Roux & Bach,
    "Minimizing finite sums with the stochastic average gradient", Math. Prog. 2017, §4;
    Defazio, Bach & Lacoste-Julien, NeurIPS 2014, §4 "implementation").

    When the per-item functions are :math:`h_j(\theta) = H_j(\theta, m_j(\theta))` with a
    margin :math:`m_j(\theta) = \langle x_j, w\rangle` linear in the params and
    :math:`\partial_\theta H_j(\theta, m) = \nabla\rho(\theta)` the same for every item (the
    i-independent part: a regulariser), their gradients are

    .. math::  \nabla h_j(\theta) = s_j(\theta)\, \nabla m_j + \nabla \rho(\theta), \qquad
               s_j(\theta) = \partial_m H_j(\theta, m_j(\theta)) = c\,\phi_j'(m_j(\theta)),

    so the table stores the scalars :math:`s_j` (``n`` numbers, not ``n`` gradients):

    .. math::
        v_t = \sum_{k=1}^b \frac{\omega_k}{n} \big(s_{j_k}(\theta_t) - S[j_k]\big) \nabla m_{j_k}
              + \frac1n \sum_{i} S[i]\, \nabla m_i + \nabla\rho(\theta_t), \qquad S[j_k] \leftarrow s_{j_k}(\theta_t).

    Unbiased for any table and sampler (:math:`E[\sum_k \omega_k g(j_k)] = \sum_i g(i)`):
    :math:`E v_t = \frac1n \sum_j s_j(\theta_t) \nabla m_j + \nabla\rho(\theta_t) = \nabla f(\theta_t)`.
    It equals :class:`SAGAGradient` when :math:`\rho` is absent, and on the first step; with a
    regulariser it differs only in keeping :math:`\nabla\rho` exact (current) instead of
    stale in the table -- the usual "just-in-time" treatment of the regulariser.  The mean
    :math:`\frac1n\sum_i S[i]\nabla m_i` is kept incrementally; sums
    :math:`\sum_k a_k \nabla m_{j_k}` are one vector-Jacobian product of the margins
    (``X[idx]^T a``), never a per-item gradient.

    ``margin(params, data, consts, j)`` returns :math:`m_j` (``j`` in ``[0, n)``) and
    ``frozen(params, m, data, consts, j)`` returns :math:`H_j(\theta, m)` -- :math:`h_j` with its
    margin replaced by the scalar ``m`` (the compiler builds both from the IR,
    :mod:`vrlang.backend.structured`).  Cost: ``b`` margins and scalar derivatives per step
    plus one gradient of :math:`\rho`; memory ``n`` scalars + one copy of the params.
    """

    objective: CompiledObjective
    n: int = eqx.field(static=True)
    batch: int = eqx.field(static=True)
    evals_per_step: float = eqx.field(static=True)
    steps_per_epoch: int = eqx.field(static=True)
    margin: Callable = eqx.field(static=True)
    frozen: Callable = eqx.field(static=True)
    sampler: Any = None

    def _margins(self, params, idx):
        d, c = self.objective.data, self.objective.consts
        return jax.vmap(lambda j: self.margin(params, d, c, j))(idx)

    def _slopes(self, params, m, idx):
        d, c = self.objective.data, self.objective.consts
        ds = jax.grad(self.frozen, argnums=1)
        return jax.vmap(lambda mk, j: ds(params, mk, d, c, j))(m, idx)

    def _pull(self, params, idx):
        """``a -> sum_k a_k grad m_{j_k}`` (linear; the margins are linear in the params)."""
        _, vjp = jax.vjp(lambda p: self._margins(p, idx), params)
        return lambda a: vjp(a)[0]

    def init(self, params, key):
        idx = jnp.arange(self.n, dtype=jnp.int32)
        m = self._margins(params, idx)
        s = self._slopes(params, m, idx)
        mean = self._pull(params, idx)(s / self.n)
        return SAGAGLMState(s, mean)

    def estimate(self, params, state, key):
        n, b = self.n, self.batch
        idx, wts = _draw(self.sampler, b, key, n)
        m = self._margins(params, idx)
        s_new = self._slopes(params, m, idx)
        s_old = state.table[idx]
        d, c = self.objective.data, self.objective.consts
        g_rho = jax.grad(self.frozen)(params, m[0], d, c, idx[0])  # the same for every item
        pull = self._pull(params, idx)
        coef = (1.0 / b) if wts is None else wts / n
        first = _first_occurrence(idx).astype(s_new.dtype)
        # both linear combinations of the drawn rows in one product: (corr, mean's change) = pull([a1; a2])
        both = jax.vmap(pull)(jnp.stack([coef * (s_new - s_old), first * (s_new - s_old) / n]).astype(s_new.dtype))
        corr, dmean = _combine(lambda t: t[0], both), _combine(lambda t: t[1], both)
        grads = _combine(lambda a, mu, r: a + mu + r, corr, state.mean, g_rho)
        mean = _combine(lambda mu, dm: mu + dm, state.mean, dmean)
        return grads, SAGAGLMState(state.table.at[idx].set(jnp.where(idx >= 0, s_new, s_old)), mean)


# ------------------------------------------------------------- SVRG / L-SVRG for GLM bodies


class SVRGGLMState(eqx.Module):
    snapshot: dict
    base: dict  # grad f(snapshot) - grad rho(snapshot): (1/n) sum_j s_j(snapshot) grad m_j
    count: jax.Array  # SVRG: steps since init (the snapshot is refreshed every ``epoch`` steps); L-SVRG: unused


class GLMControl(eqx.Module):
    """The SVRG control-variate step on a GLM body, shared by :class:`SVRGGLMGradient` and
    :class:`LSVRGGLMGradient` (see the first for the maths)."""

    objective: CompiledObjective
    n: int = eqx.field(static=True)
    margin: Callable = eqx.field(static=True)
    frozen: Callable = eqx.field(static=True)
    sampler: Any = None  # a bound sampler: UniformSampler(b) or ImportanceSampler
    salt: int | None = eqx.field(static=True, default=None)  # the key is folded with it before the draw

    def draw(self, key):
        k = key if self.salt is None else jax.random.fold_in(key, self.salt)
        return self.sampler.sample(k, self.n)

    def rho_grad(self, params):
        """:math:`\\nabla\\rho(\\theta)`: the gradient of the item-independent part (any item, any margin)."""
        fdt = jnp.result_type(float)
        return jax.grad(self.frozen)(params, jnp.zeros((), fdt), self.objective.data, self.objective.consts,
                                     jnp.zeros((), jnp.int32))

    def snapshot_base(self, params):
        full = jax.grad(self.objective.value)(params)
        return _combine(lambda a, r: a - r, full, self.rho_grad(params))

    def correction(self, params, snapshot, key):
        """:math:`\\sum_k \\frac{\\omega_k}{n} (s_{j_k}(\\theta) - s_{j_k}(\\tilde\\theta)) \\nabla m_{j_k}
        + \\nabla\\rho(\\theta)` from one draw of the minibatch."""
        d, c, n = self.objective.data, self.objective.consts, self.n
        idx, wts = self.draw(key)

        def margins(p):
            return jax.vmap(lambda j: self.margin(p, d, c, j))(idx)

        m_w, pull = jax.vjp(margins, params)  # the margins are linear: pull is X_B^T a for any point
        m_s = margins(snapshot)  # the same rows X_B (the gather is shared)
        ds = jax.grad(self.frozen, argnums=1)
        s_w = jax.vmap(lambda mk, j: ds(params, mk, d, c, j))(m_w, idx)
        s_s = jax.vmap(lambda mk, j: ds(snapshot, mk, d, c, j))(m_s, idx)
        (corr,) = pull(((wts / n) * (s_w - s_s)).astype(m_w.dtype))
        return _combine(lambda a, r: a + r, corr, self.rho_grad(params))


class SVRGGLMGradient(AbstractGradientEstimator):
    r"""SVRG (Johnson & Zhang 2013) for a generalised linear model body, with the scalar derivative
    (the "just-in-time" SVRG of Schmidt, Le Roux & Bach 2017, §4, applied to SVRG; cf. Johnson & Zhang,
    §3: for linear predictors :math:`\nabla h_j` is a scalar times :math:`x_j`).

    For per-item functions :math:`h_j(\theta) = H_j(\theta, m_j(\theta))` with a margin
    :math:`m_j = \langle x_j, w\rangle` and :math:`\nabla h_j = s_j(\theta)\,\nabla m_j + \nabla\rho(\theta)`
    (:class:`SAGAGLMGradient`), the SVRG estimate
    :math:`\nabla F(w;\xi) - \nabla F(\tilde w;\xi) + \nabla f(\tilde w)` is, with one draw
    :math:`(j_k, \omega_k)` of the sampler,

    .. math::
        g = \sum_{k=1}^b \frac{\omega_k}{n}\big(s_{j_k}(\theta) - s_{j_k}(\tilde\theta)\big)\, x_{j_k}
            + \nabla\rho(\theta) + \underbrace{\nabla f(\tilde\theta) - \nabla\rho(\tilde\theta)}_{\text{stored}},

    i.e. ``X_B^T ((phi'(X_B w) - phi'(X_B w~)) * weights) + base + grad rho(w)``: the minibatch rows
    are gathered once, the scalar derivatives replace two per-item gradients, and one
    vector-Jacobian product of the margins gives the sum.  Unbiased for every sampler with
    :math:`E[\sum_k \omega_k g(j_k)] = \sum_i g(i)` (uniform, or importance sampling with
    :math:`\omega_k = 1/(b p_{j_k})`): :math:`E g = \frac1n\sum_j (s_j(\theta) - s_j(\tilde\theta)) x_j
    + \nabla\rho(\theta) + \nabla f(\tilde\theta) - \nabla\rho(\tilde\theta) = \nabla f(\theta)`.  With
    uniform sampling it equals :class:`SVRGGradient` on the same key (same indices); with
    importance sampling too when the regulariser is outside the sum (a regulariser inside the
    sum's body is kept exact here, where the generic estimate reweights it by
    :math:`\sum_k \omega_k / n`, whose mean is 1).  The snapshot (and ``base``, one exact gradient)
    is refreshed every ``epoch`` steps; ``steps_per_epoch`` is independent of it.
    """

    control: GLMControl
    epoch: int = eqx.field(static=True)  # steps between snapshot refreshes
    evals_per_step: float = eqx.field(static=True)
    steps_per_epoch: int = eqx.field(static=True)

    @property
    def objective(self):
        return self.control.objective

    def init(self, params, key):
        return SVRGGLMState(params, self.control.snapshot_base(params), jnp.zeros((), jnp.int32))

    def estimate(self, params, state, key):
        def refresh(s):
            return SVRGGLMState(params, self.control.snapshot_base(params), s.count)

        state = jax.lax.cond((state.count > 0) & (state.count % self.epoch == 0), refresh, lambda s: s, state)
        g = self.control.correction(params, state.snapshot, key)
        grads = _combine(lambda a, b: a + b, g, state.base)
        return grads, SVRGGLMState(state.snapshot, state.base, state.count + 1)


class LSVRGGLMGradient(AbstractGradientEstimator):
    r"""Loopless SVRG (:class:`LSVRGGradient`; Kovalev, Horváth & Richtárik, ALT 2020) for a GLM
    body, with the estimate of :class:`SVRGGLMGradient` (one draw, scalar derivatives).  The coin
    and the minibatch come from the same split of ``key`` as in :class:`LSVRGGradient`, so with
    uniform sampling the two agree on the same key.  Unbiased.
    """

    control: GLMControl
    p: jax.Array
    sampled_evals: int = eqx.field(static=True)
    exact_evals: int = eqx.field(static=True)
    steps_per_epoch: int = eqx.field(static=True)

    @property
    def objective(self):
        return self.control.objective

    @property
    def evals_per_step(self):
        return 2.0 * self.sampled_evals + self.p * self.exact_evals

    def init(self, params, key):
        return SVRGGLMState(params, self.control.snapshot_base(params), jnp.zeros((), jnp.int32))

    def estimate(self, params, state, key):
        k_sample, k_coin = jax.random.split(key)
        g = self.control.correction(params, state.snapshot, k_sample)
        grads = _combine(lambda a, b: a + b, g, state.base)

        def refresh(s):
            return SVRGGLMState(params, self.control.snapshot_base(params), s.count)

        state = jax.lax.cond(jax.random.bernoulli(k_coin, self.p), refresh, lambda s: s, state)
        return grads, state


# ------------------------------------------------------------- recursive (SARAH family)


class RecursiveState(eqx.Module):
    prev: dict  # the point of the previous call
    v: dict  # the previous estimate
    count: jax.Array  # steps since the last restart (mod period), or a started flag


def _recursive(objective, params, state, key):
    """:math:`\\nabla F(w_t;\\xi) - \\nabla F(w_{t-1};\\xi) + v_{t-1}` (one shared minibatch)."""
    gw, gp = _grad_pair(objective, params, state.prev, key)
    return _combine(lambda a, b, c: a - b + c, gw, gp, state.v)


class SARAHGradient(AbstractGradientEstimator):
    r"""SARAH (Nguyen, Liu, Scheinberg & Takáč, "SARAH: a novel method for machine learning
    problems using stochastic recursive gradient", ICML 2017).

    .. math::
        v_t = \begin{cases} \nabla f(w_t) & t \equiv 0 \pmod m \\
        \nabla F(w_t;\xi_t) - \nabla F(w_{t-1};\xi_t) + v_{t-1} & \text{otherwise.} \end{cases}

    Biased: :math:`E[v_t \mid \text{past}] = \nabla f(w_t) - \nabla f(w_{t-1}) + v_{t-1}
    \ne \nabla f(w_t)` in general; its variance shrinks with the step, hence "variance
    reduced".  Cost per epoch of ``m`` steps: one full gradient and ``2 (m - 1)`` minibatches.
    """

    unbiased = False
    objective: CompiledObjective
    epoch: int = eqx.field(static=True)  # m: steps between full-gradient restarts
    evals_per_step: float = eqx.field(static=True)
    steps_per_epoch: int = eqx.field(static=True)

    def init(self, params, key):
        return RecursiveState(params, _combine(jnp.zeros_like, params), jnp.zeros((), jnp.int32))

    def estimate(self, params, state, key):
        v = jax.lax.cond(state.count == 0, lambda: jax.grad(self.objective.value)(params),
                         lambda: _recursive(self.objective, params, state, key))
        return v, RecursiveState(params, v, (state.count + 1) % self.epoch)


class SPIDERGradient(AbstractGradientEstimator):
    r"""SPIDER (Fang, Li, Lin & Zhang, "SPIDER: near-optimal non-convex optimization via
    stochastic path-integrated differential estimator", NeurIPS 2018).

    .. math::
        v_t = \begin{cases} \nabla F_B(w_t;\zeta_t) & t \equiv 0 \pmod q \\
        \nabla F(w_t;\xi_t) - \nabla F(w_{t-1};\xi_t) + v_{t-1} & \text{otherwise,} \end{cases}

    where :math:`F_B` is the objective with each sampled sum replaced by a large minibatch
    (``large``, a second :class:`CompiledObjective` whose samplers draw ``B`` items), or the
    exact objective when ``large`` is ``None`` (then SPIDER is SARAH with period ``q``).
    Only the estimator is provided; SPIDER-SFO's normalised step is the solver's business.
    Biased (recursive).
    """

    unbiased = False
    objective: CompiledObjective
    large: CompiledObjective | None
    period: int = eqx.field(static=True)  # q
    evals_per_step: float = eqx.field(static=True)
    steps_per_epoch: int = eqx.field(static=True)

    def init(self, params, key):
        return RecursiveState(params, _combine(jnp.zeros_like, params), jnp.zeros((), jnp.int32))

    def estimate(self, params, state, key):
        def restart():
            if self.large is None:
                return jax.grad(self.objective.value)(params)
            return jax.grad(self.large.sample)(params, key)

        v = jax.lax.cond(state.count == 0, restart, lambda: _recursive(self.objective, params, state, key))
        return v, RecursiveState(params, v, (state.count + 1) % self.period)


class PAGEGradient(AbstractGradientEstimator):
    r"""PAGE (Li, Bao, Zhang & Richtárik, "PAGE: a simple and optimal probabilistic gradient
    estimator for nonconvex optimization", ICML 2021).

    .. math::
        v_0 = \nabla f(w_0), \qquad v_t = \begin{cases} \nabla f(w_t) & \text{with probability } p \\
        v_{t-1} + \nabla F(w_t;\xi_t) - \nabla F(w_{t-1};\xi_t) & \text{otherwise.} \end{cases}

    The coin comes from a key split off ``key``; ``p`` is traced.  Biased (recursive).
    Amortised cost ``p N + (1 - p) 2 s``; the paper's choice is ``p = b / (b + n)``.
    """

    unbiased = False
    objective: CompiledObjective
    p: jax.Array
    sampled_evals: int = eqx.field(static=True)
    exact_evals: int = eqx.field(static=True)
    steps_per_epoch: int = eqx.field(static=True)

    @property
    def evals_per_step(self):
        return self.p * self.exact_evals + (1.0 - self.p) * 2.0 * self.sampled_evals

    def init(self, params, key):
        return RecursiveState(params, _combine(jnp.zeros_like, params), jnp.zeros((), jnp.int32))

    def estimate(self, params, state, key):
        k_sample, k_coin = jax.random.split(key)
        full = (state.count == 0) | jax.random.bernoulli(k_coin, self.p)
        v = jax.lax.cond(full, lambda: jax.grad(self.objective.value)(params),
                         lambda: _recursive(self.objective, params, state, k_sample))
        return v, RecursiveState(params, v, jnp.ones((), jnp.int32))


class STORMGradient(AbstractGradientEstimator):
    r"""STORM (Cutkosky & Orabona, "Momentum-based variance reduction in non-convex SGD",
    NeurIPS 2019), with a constant momentum parameter ``a``:

    .. math::
        d_0 = \nabla F(w_0;\xi_0), \qquad
        d_t = \nabla F(w_t;\xi_t) + (1 - a)\,\big(d_{t-1} - \nabla F(w_{t-1};\xi_t)\big).

    ``a = 1`` is plain SGD; ``a`` is traced.  Biased (recursive).  Two minibatch gradients
    per step (one on the first).  The paper's adaptive schedule :math:`a_t = c\,\eta_t^2`
    is not implemented.
    """

    unbiased = False
    objective: CompiledObjective
    a: jax.Array
    evals_per_step: float = eqx.field(static=True)
    steps_per_epoch: int = eqx.field(static=True)

    def init(self, params, key):
        return RecursiveState(params, _combine(jnp.zeros_like, params), jnp.zeros((), jnp.int32))

    def estimate(self, params, state, key):
        g = _grad_sample(self.objective)

        def first():
            return g(params, key)

        def recurse():
            gw, gp = _grad_pair(self.objective, params, state.prev, key)
            return _combine(lambda x, y, d: x + (1.0 - self.a) * (d - y), gw, gp, state.v)

        d = jax.lax.cond(state.count == 0, first, recurse)
        return d, RecursiveState(params, d, jnp.ones((), jnp.int32))
