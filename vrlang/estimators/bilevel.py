r"""Hypergradients through decision binders: ``argmin``/``argmax`` and value functions ``min``/``max``.

A decision binder ``argmin(v in T = init: g(v, x))`` denotes the solution map
:math:`v^*(x) = \arg\min_v g(v, x)`, where :math:`x` stands for everything the inner
objective closes over (the program's params, data, consts and the variables of enclosing
binders).  An outer objective :math:`F(x) = f(x, v^*(x))` then has the hypergradient

.. math::

    \nabla F(x) = \nabla_x f - \nabla^2_{xv} g \, [\nabla^2_{vv} g]^{-1} \nabla_v f
    \qquad\text{at } v = v^*(x)

(implicit function theorem applied to the stationarity condition :math:`\nabla_v g(v^*(x), x) = 0`).
This module provides the pieces as small equinox Modules, usable without the DSL:

Inner solvers (``minimize(fn, x0) -> x``; never differentiated):

* :class:`GradientDescent` -- :math:`v_{t+1} = v_t - \eta \nabla_v g(v_t)` for ``steps``
  steps (early stop at a relative gradient tolerance).  ``lr = None`` ("auto") is
  :math:`\eta = 1/L` with :math:`L` the top eigenvalue of :math:`\nabla^2_{vv} g` at the
  initial point, from a power iteration of Hessian-vector products.  (The DSL calls it
  ``sgd``: with an exact inner objective it is plain gradient descent.)
* :class:`LBFGS` -- ``optax.lbfgs`` with its zoom line search, in a ``lax.while_loop``.
* :class:`Adam` -- ``optax.adam`` with a constant step (early stop as gradient descent; its accuracy
  depends on the step: see the class).
* :class:`vrlang.estimators.inner_finite_sum.InnerSVRG`, ``InnerLSVRG``, ``InnerSAGA`` -- SVRG,
  loopless SVRG and SAGA on minibatches of the inner sums (the objective then also takes a draw
  number, ``fn(v, t)``, and carries a key and a fixed-index form: see that module).

Linear solvers for :math:`H u = b`, :math:`H = \nabla^2_{vv} g` given only as a matvec
(Hessian-vector products, :math:`H` is never formed except by :class:`Direct`).  Each is
wrapped in ``lax.custom_linear_solve(..., symmetric=True)`` so that reverse mode (which
transposes the solve) reuses the same solver on the same symmetric :math:`H`:

* :class:`CG` -- conjugate gradients (Hestenes & Stiefel 1952), at most ``iters`` HVPs,
  stopped at :math:`\|r\|_2 \le \mathrm{rtol}\,\|b\|_2`.  Needs :math:`H` positive definite
  (a strict local minimum); stops (keeping its last iterate) if :math:`p^\top H p \le 0`.
  Written out here rather than ``lineax.CG`` (0.1.1), whose stopping test is per coordinate,
  :math:`|r_i| \le \mathrm{rtol}\,|b_i|`: a right-hand side with exact zeros (a feature that
  is zero on every training row, e.g. the corner pixels of the digits) makes it 0/0 = NaN,
  read as "converged" after one step (a wrong hypergradient), and its breakdown test
  (NaN unless :math:`p^\top H p > 100\,\epsilon\,\dim(v)\,\|r\|^2`) fires on a well-posed
  float32 problem whose Hessian has eigenvalues below :math:`100\,\epsilon\,\dim(v)`
  (7.6e-3 for 640 unknowns; an L2 penalty of 1e-3 gives 1e-3).
* :class:`Neumann` -- the truncated Neumann series
  :math:`H^{-1} b \approx \alpha \sum_{k=0}^{K-1} (I - \alpha H)^k b`, :math:`\alpha = 1/L`
  (:math:`L` by power iteration unless given); the relative error of the series is at
  most :math:`(1 - \alpha\mu)^K` for :math:`\mu I \preceq H \preceq L I`
  (Lorraine, Vicol & Duvenaud, AISTATS 2020; Ghadimi & Wang 2018).
* :class:`Direct` -- materialises :math:`H` with ``jax.jacfwd`` of the matvec (d HVPs)
  and solves densely (``jnp.linalg.solve``): for small inner dimensions.

Hypergradient methods (``decide(op, fn, init)`` with ``op`` in argmin/argmax/min/max):

* :class:`Implicit` -- implicit differentiation (Bengio 2000; Pedregosa, ICML 2016
  "Hyperparameter optimization with approximate gradient"; Blondel et al., NeurIPS 2022
  "Efficient and modular implicit differentiation").  Implemented with
  ``jax.lax.custom_root(grad_v g, init, solve=inner, tangent_solve=linsolve)``:
  ``custom_root`` differentiates implicitly with respect to every tracer the inner
  objective closes over, so gradients reach params, data and outer binder variables.
  Exact up to the inner tolerance and the linear-solve tolerance.  For ``argmax`` the
  root of :math:`\nabla_v(-g)` is used, so the linear system is positive definite at a
  strict maximum too.
* :class:`Unroll` -- reverse-mode differentiation through ``steps`` gradient-descent
  iterations (Maclaurin, Duvenaud & Adams, ICML 2015; Franceschi et al., ICML 2017).
  Biased for finite ``steps`` (truncated): for a :math:`\mu`-strongly convex,
  :math:`L`-smooth inner problem with step :math:`\eta \le 1/L` the hypergradient error
  decays like :math:`O(k (1 - \eta\mu)^{k})` (Shaban et al., AISTATS 2019, "Truncated
  back-propagation for bilevel optimization"; for a quadratic inner problem from
  :math:`v_0` the relative error of :math:`dv_k/dx` is at most
  :math:`(1 - \eta\mu)^{k-1}(1 + k\eta L)`).  Memory: the ``lax.scan`` keeps the ``k``
  iterates (``k`` copies of :math:`v`) for the backward pass; the step is wrapped in
  ``jax.checkpoint`` so its intermediates (data-sized: residuals of the inner objective
  over its sums) are recomputed in the backward pass instead of stored, i.e. memory is
  :math:`O(k\,\dim v + \text{one step})` rather than :math:`O(k \cdot \text{one step})`.

Value functions ``min(v: g(v, x))`` / ``max(...)``: the value :math:`g(v^*, x)` with
:math:`v^* = \mathrm{stop\_gradient}(\text{inner solution})`.  By Danskin's theorem
(envelope theorem) :math:`\nabla_x \min_v g(v, x) = \partial_x g(v^*(x), x)` -- no linear
solve.  ``minimize max(y ...: e)`` is therefore solved by descent on the outer variable
with the inner maximisation re-solved (to tolerance) at every outer step: descent-ascent
with an exact inner player.  This is sound when the inner problem has a unique solution
that the inner solver finds (e.g. strongly concave in ``y``); for nonconvex-nonconcave
or merely concave inner problems the Danskin gradient may not be a gradient of the value
function and the outer iteration may cycle -- a dedicated min-max solver comes later.
(With :class:`Unroll`, ``min``/``max`` are differentiated through the unrolled value.)

Warm starts: with ``Implicit(warm = True)`` (the DSL's default for ``implicit``) each outer
step of a stochastic or first-order solve starts the inner solver at the previous step's
solution, kept as binder state by :mod:`vrlang.estimators.binder_state`; inside a sum over
blocks each block keeps its own (the blockwise scheme of multi-block bilevel problems).
Exact evaluations (the logged objective, ``Program.grad``, ``lbfgs``) start from ``init``.

With a minibatched sum inside the inner problem, ``implicit(linsolve = neumann)`` becomes stocBiO
(:class:`vrlang.estimators.stochastic_implicit.StochasticImplicit`: minibatch inner steps, a stochastic
Neumann series with independent minibatch HVPs).  Two further methods keep their own binder state: the fully first-order penalty (F2SA) in
:mod:`vrlang.estimators.penalty` and BO-REP in :mod:`vrlang.estimators.borep`.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

DECISION_OPS = ("argmin", "argmax", "min", "max")
POWER_ITERS = 30  # HVPs spent on an automatic step size (inner lr = auto, Neumann alpha)
_POWER_KEY = 20261126


def default_tol(dtype=None) -> float:
    """The default relative tolerance, ``eps ** (2/3)`` of the float type (about 4e-11 in float64, 2e-5 in float32)."""
    dtype = jnp.result_type(float) if dtype is None else dtype
    return float(jnp.finfo(dtype).eps) ** (2.0 / 3.0)


def _norm(x):
    return jnp.sqrt(jnp.sum(x * x))


def top_eigenvalue(matvec, like, iters: int = POWER_ITERS):
    """Power iteration for the largest |eigenvalue| of a symmetric linear map on vectors shaped like ``like``."""
    v = jax.random.normal(jax.random.PRNGKey(_POWER_KEY), like.shape, like.dtype)

    def body(_, carry):
        v, _lam = carry
        v = v / jnp.maximum(_norm(v), jnp.finfo(like.dtype).tiny)
        hv = matvec(v)
        return hv, _norm(hv)

    _, lam = jax.lax.fori_loop(0, iters, body, (v, jnp.zeros((), like.dtype)))
    return lam


def hessian_matvec(fn, x):
    """``u -> ∇²fn(x) u`` (forward-over-reverse, linearised once)."""
    _, mv = jax.linearize(jax.grad(fn), x)
    return mv


AUTO_DRAWS = 4  # minibatch draws whose Hessians set a stochastic method's lr = auto


def inverse_step(L, scale=1.0, fallback=1e-3):
    """``scale / L`` for a curvature estimate ``L``; ``fallback`` when ``L`` is not finite and positive."""
    tiny = jnp.finfo(jnp.result_type(L)).tiny
    return jnp.where(jnp.isfinite(L) & (L > tiny), scale / jnp.maximum(L, tiny), fallback)


def sampled_top_eigenvalue(fn, x, draws):
    """The largest top Hessian eigenvalue of ``fn(., draw)`` at ``x`` over ``draws`` (minibatch draws:
    keys or draw numbers), by power iteration: a curvature the sampled objectives all respect."""
    return jnp.max(jax.vmap(lambda t: top_eigenvalue(hessian_matvec(lambda v: fn(v, t), x), x))(draws))


def neumann_series(matvec, b, alpha, iters: int):
    """``alpha * sum_{k<iters} (I - alpha H)^k b`` (``iters - 1`` HVPs)."""
    def body(_, c):
        p, acc = c
        p = p - alpha * matvec(p)
        return p, acc + p

    _, acc = jax.lax.fori_loop(0, iters - 1, body, (b, b))
    return alpha * acc


def _auto_lr(fn, x0):
    return inverse_step(top_eigenvalue(hessian_matvec(fn, x0), x0))


# ------------------------------------------------------------------------------------------ inner solvers


class GradientDescent(eqx.Module):
    """Gradient descent with a fixed step; ``lr = None`` means 1/L at the initial point (power iteration)."""

    steps: int = eqx.field(static=True, default=100)
    lr: float | None = eqx.field(static=True, default=None)
    tol: float | None = eqx.field(static=True, default=None)  # relative to the gradient norm at x0

    def step_size(self, fn, x0):
        return jnp.asarray(self.lr, x0.dtype) if self.lr is not None else _auto_lr(fn, x0)

    def minimize(self, fn, x0, ref=None):
        """From ``x0``; stop at ``||grad|| <= tol ||grad(ref)||`` (``ref``: the cold start of a
        warm-started solve -- relative to a warm start already at the solution, the test would
        never pass and every solve would run all its steps)."""
        grad = jax.grad(fn)
        lr = self.step_size(fn, x0)
        g0 = grad(x0)
        gref = g0 if ref is None else grad(ref)
        thr = (self.tol if self.tol is not None else default_tol(x0.dtype)) * _norm(gref)

        def cond(c):
            k, _x, g, done = c
            return (k < self.steps) & ~done

        def body(c):
            k, x, g, _ = c
            x2 = x - lr * g
            ok = jnp.all(jnp.isfinite(x2))
            x = jnp.where(ok, x2, x)
            g = grad(x)
            return k + 1, x, g, (_norm(g) <= thr) | ~ok

        _, x, _, _ = jax.lax.while_loop(cond, body, (jnp.int32(0), x0, g0, _norm(g0) <= thr))
        return x

    def unrolled(self, fn, x0):
        """``steps`` differentiable steps (``lax.scan`` of a checkpointed step); the step size is not differentiated."""
        grad = jax.grad(fn)
        lr = jax.lax.stop_gradient(self.step_size(fn, x0))

        @jax.checkpoint
        def step(x, _):
            return x - lr * grad(x), None

        x, _ = jax.lax.scan(step, x0, None, length=self.steps)
        return x


class Adam(eqx.Module):
    """``optax.adam`` with a constant step ``lr`` on the exact inner objective, for at most ``steps`` steps,
    stopped at a relative gradient tolerance (as :class:`GradientDescent`; a non-finite step is skipped).

    Adam (Kingma & Ba, ICLR 2015) with a constant step is not guaranteed to converge to the minimiser,
    and the tolerance stop matters: its second-moment estimate decays with the gradient, so its
    effective step grows near the solution and the iterates can pass the solution and drift away.
    Measured on a 4-dimensional ridge problem (float64, tests/test_inner_solvers.py): with the default
    tolerance 300 / 1000 steps reach 1e-7 / 3e-11 relative error at lr = 0.01, 0.05 and 0.2 alike;
    without a reachable tolerance lr = 0.05 is at 2e-16 after 1000 steps but at 3e-3 after 3000.  The
    hypergradient is taken at the returned point.
    """

    steps: int = eqx.field(static=True, default=1000)
    lr: float = eqx.field(static=True, default=0.01)
    tol: float | None = eqx.field(static=True, default=None)

    def minimize(self, fn, x0, ref=None):
        """As :meth:`GradientDescent.minimize` (``ref``: the point the tolerance is relative to)."""
        opt = optax.adam(self.lr)
        grad = jax.grad(fn)
        g0 = grad(x0)
        gref = g0 if ref is None else grad(ref)
        thr = (self.tol if self.tol is not None else default_tol(x0.dtype)) * _norm(gref)

        def cond(c):
            k, _x, _s, _g, done = c
            return (k < self.steps) & ~done

        def body(c):
            k, x, s, g, _ = c
            updates, s2 = opt.update(g, s, x)
            x2 = optax.apply_updates(x, updates)
            ok = jnp.all(jnp.isfinite(x2))
            x = jnp.where(ok, x2, x)
            s = jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), s2, s)
            g = grad(x)
            return k + 1, x, s, g, (_norm(g) <= thr) | ~ok

        _, x, _, _, _ = jax.lax.while_loop(cond, body, (jnp.int32(0), x0, opt.init(x0), g0, _norm(g0) <= thr))
        return x

    def unrolled(self, fn, x0):  # pragma: no cover - refused by the transform
        raise NotImplementedError("unrolling differentiates gradient descent only")


class LBFGS(eqx.Module):
    """``optax.lbfgs`` (zoom line search) for at most ``steps`` iterations, stopped at a relative gradient tolerance."""

    steps: int = eqx.field(static=True, default=100)
    memory: int = eqx.field(static=True, default=10)
    tol: float | None = eqx.field(static=True, default=None)

    def minimize(self, fn, x0, ref=None):
        """As :meth:`GradientDescent.minimize` (``ref``: the point the tolerance is relative to)."""
        opt = optax.lbfgs(memory_size=self.memory)
        value_and_grad = optax.value_and_grad_from_state(fn)
        g0 = jax.grad(fn)(x0)
        gref = g0 if ref is None else jax.grad(fn)(ref)
        thr = (self.tol if self.tol is not None else default_tol(x0.dtype)) * _norm(gref)

        def cond(c):
            k, _x, _s, done = c
            return (k < self.steps) & ~done

        def body(c):
            k, x, s, _ = c
            value, g = value_and_grad(x, state=s)
            converged = _norm(g) <= thr
            updates, s2 = opt.update(g, s, x, value=value, grad=g, value_fn=fn)
            x2 = optax.apply_updates(x, updates)
            ok = ~converged & jnp.all(jnp.isfinite(x2))
            x = jnp.where(ok, x2, x)
            s = jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), s2, s)
            return k + 1, x, s, converged | ~ok

        _, x, _, _ = jax.lax.while_loop(cond, body, (jnp.int32(0), x0, opt.init(x0), _norm(g0) <= thr))
        return x

    def unrolled(self, fn, x0):  # pragma: no cover - refused by the transform
        raise NotImplementedError("unrolling differentiates gradient descent only")


# ------------------------------------------------------------------------------------------ linear solvers


class _LinearSolver(eqx.Module):
    def solve(self, matvec, b):  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, matvec, b):
        """Solve ``H u = b`` for a symmetric ``H``; transposable (reverse mode reuses ``solve``)."""
        return jax.lax.custom_linear_solve(matvec, b, self.solve, symmetric=True)


class CG(_LinearSolver):
    """Conjugate gradients: at most ``iters`` HVPs, stop at ``||r||_2 <= rtol ||b||_2`` (default rtol: :func:`default_tol`).

    The residual is updated by the usual recurrence; a non-positive or non-finite curvature
    ``p'Hp`` (``H`` not positive definite along ``p``) stops the iteration at the last iterate
    instead of producing NaN.
    """

    iters: int = eqx.field(static=True, default=100)
    rtol: float | None = eqx.field(static=True, default=None)

    def solve(self, matvec, b):
        rtol = self.rtol if self.rtol is not None else default_tol(b.dtype)
        thr2 = (rtol * rtol) * jnp.vdot(b, b)

        def cond(c):
            k, _x, _r, _p, rr = c
            return (k < self.iters) & (rr > thr2)

        def body(c):
            k, x, r, p, rr = c
            hp = matvec(p)
            php = jnp.vdot(p, hp)
            ok = (php > 0) & jnp.isfinite(php)
            alpha = jnp.where(ok, rr / jnp.where(ok, php, 1.0), 0.0)
            x = x + alpha * p
            r = r - alpha * hp
            rr2 = jnp.vdot(r, r)
            p = r + (rr2 / rr) * p  # rr > thr2 >= 0 inside the loop
            return jnp.where(ok, k + 1, self.iters), x, r, p, jnp.where(ok, rr2, rr)

        _, x, _, _, _ = jax.lax.while_loop(cond, body, (jnp.int32(0), jnp.zeros_like(b), b, b, jnp.vdot(b, b)))
        return x


class Neumann(_LinearSolver):
    """``alpha * sum_{k<iters} (I - alpha H)^k b`` (``iters - 1`` HVPs); default ``alpha = 1/L`` (power iteration)."""

    iters: int = eqx.field(static=True, default=100)
    alpha: float | None = eqx.field(static=True, default=None)

    def solve(self, matvec, b):
        if self.alpha is None:
            alpha = inverse_step(top_eigenvalue(matvec, b), fallback=0.0)
        else:
            alpha = jnp.asarray(self.alpha, b.dtype)
        return neumann_series(matvec, b, alpha, self.iters)


class Direct(_LinearSolver):
    """Materialise ``H`` (``jax.jacfwd`` of the matvec: dim v HVPs) and solve densely -- small inner problems only."""

    def solve(self, matvec, b):
        H = jax.jacfwd(matvec)(b)
        return jnp.linalg.solve(H, b)


# ------------------------------------------------------------------------------------------ methods


def _flat(fn, init, maximize: bool):
    """The inner objective on a flat vector, negated for argmax/max, and the initial point.

    Extra arguments are passed through (an inner solver that draws minibatches, e.g.
    :class:`vrlang.estimators.inner_finite_sum.InnerSVRG`, calls ``h(x, draw)``), and so are the
    attributes of a minibatch inner objective (``key``, ``items``, ``at``: see that module)."""
    x0, unravel = ravel_pytree(init)
    x0 = jax.lax.stop_gradient(x0)  # the solution map does not depend on the starting point
    sign = -1.0 if maximize else 1.0

    def h(x, *args):
        return sign * fn(unravel(x), *args)

    at = getattr(fn, "at", None)
    h.key, h.items = getattr(fn, "key", None), getattr(fn, "items", None)
    h.at = None if at is None else (lambda x, idx: sign * at(unravel(x), idx))
    return h, x0, unravel


class Implicit(eqx.Module):
    """Implicit differentiation at the inner solution (``custom_root``); Danskin for ``min``/``max``.

    ``warm``: the inner solve of an outer step starts from the previous step's solution (the
    binder's state, :mod:`vrlang.estimators.binder_state`) instead of ``init``.  The solution
    map does not depend on the starting point, so this changes only how many inner steps are
    needed (a tolerance-stopped inner solver stops early when the outer step was small).
    """

    inner: eqx.Module = GradientDescent()
    linsolve: _LinearSolver = CG()
    warm: bool = eqx.field(static=True, default=False)

    @property
    def stateful(self) -> bool:
        return self.warm

    def _solve(self, fn, init, maximize, start=None):
        """``(h, x0, unravel, ref)``: ``x0`` the start (warm, if given), ``ref`` the cold start."""
        h, x0, unravel = _flat(fn, init, maximize)
        ref = None
        if start is not None:
            ref, x0 = x0, jax.lax.stop_gradient(ravel_pytree(start)[0].astype(x0.dtype))
        return h, x0, unravel, ref

    def solution(self, fn, init, maximize: bool = False, start=None):
        h, x0, unravel, ref = self._solve(fn, init, maximize, start)
        inner = self.inner

        def solve(_root_fn, x):
            return inner.minimize(h, x, ref)

        x = jax.lax.custom_root(jax.grad(h), x0, solve, self.linsolve)
        return unravel(x)

    def value(self, fn, init, maximize: bool = False, start=None):
        return self._value(fn, init, maximize, start)[0]

    def _value(self, fn, init, maximize, start):
        h, x0, unravel, ref = self._solve(fn, init, maximize, start)
        v = unravel(jax.lax.stop_gradient(self.inner.minimize(h, x0, ref)))
        return fn(v), v

    def decide(self, op: str, fn, init):
        """``op`` in argmin/argmax (the solution) or min/max (the optimal value)."""
        return self.decide_from(op, fn, init, None)[0]

    def decide_from(self, op: str, fn, init, start):
        """As :meth:`decide`, with the inner solve started at ``start`` (``None``: at ``init``);
        returns ``(result, solution)`` -- the solution is the next step's ``start``."""
        maximize = op in ("argmax", "max")
        if op in ("argmin", "argmax"):
            v = self.solution(fn, init, maximize, start)
            return v, v
        return self._value(fn, init, maximize, start)


class Unroll(eqx.Module):
    """Differentiate through ``steps`` gradient-descent steps (biased for finite ``steps``)."""

    inner: GradientDescent = GradientDescent()

    def solution(self, fn, init, maximize: bool = False):
        h, x0, unravel = _flat(fn, init, maximize)
        return unravel(self.inner.unrolled(h, x0))

    def value(self, fn, init, maximize: bool = False):
        return fn(self.solution(fn, init, maximize))

    def decide(self, op: str, fn, init):
        maximize = op in ("argmax", "max")
        return self.solution(fn, init, maximize) if op in ("argmin", "argmax") else self.value(fn, init, maximize)


def argmin(fn, init, method=None):
    """``argmin_v fn(v)`` from ``init``, differentiable in whatever ``fn`` closes over (default: implicit, CG)."""
    return (method or Implicit()).decide("argmin", fn, init)


def argmax(fn, init, method=None):
    return (method or Implicit()).decide("argmax", fn, init)


__all__ = ["Adam", "CG", "DECISION_OPS", "Direct", "GradientDescent", "Implicit", "LBFGS", "Neumann", "Unroll",
           "argmax", "argmin", "default_tol", "hessian_matvec", "inverse_step", "neumann_series",
           "sampled_top_eigenvalue", "top_eigenvalue"]
