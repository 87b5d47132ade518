r"""Control variates for expectations: ``cv(g, mean = m, coef = c | optimal, inner = E)``.

For an expectation :math:`E_{z\sim q_\theta}[f(z, \theta)]` and a *control variate*
:math:`g(z, \theta)` whose mean :math:`m(\theta) = E_{q_\theta}[g]` is known in closed form,

.. math::  E_{q_\theta}[f] = E_{q_\theta}[\,f - c\,(g - m)\,]  \quad\text{for every } c \text{ and every } \theta,

so any unbiased estimator of the right-hand side (the *inner* estimator: ``reparam``,
``score`` with any baseline, ``importance``) estimates the left-hand side without bias,
value and gradient: the gradient of the right-hand side is the gradient of the left
because :math:`E_{q_\theta}[g] - m(\theta) \equiv 0` (so ``m`` is differentiated too: it
may depend on the params).  :class:`CVEstimate` runs the inner estimator on the body
:math:`f'_k = f(z_k) - c_k\,(g(z_k) - m)`:

* ``reparam``: :math:`\frac1K\sum_k f'(z_k)`, :math:`z_k = g_\theta(\epsilon_k)`;
* ``score``: :math:`\frac1K\sum_k f'_k + \mathrm{sg}(f'_k - b'_k)(\log q(z_k) - \mathrm{sg}\log q(z_k))`
  with the inner baseline applied to the modified body (:meth:`ScoreEstimate.score_term`);
* ``importance``: :math:`\frac1K\sum_k w_k f'_k`, :math:`w_k = q_\theta(z_k)/p(z_k)`.

The coefficient :math:`c_k` is stop-gradient (a constant of the estimator):

* ``coef = c`` (a number or an expression of consts/params/data): fixed. Unbiased.
* ``coef = optimal``: the variance-minimising :math:`c^* = \mathrm{Cov}(h, v)/\mathrm{Var}(v)` of
  the inner estimator's per-sample terms :math:`h_k = a_k f_k`, :math:`v_k = a_k (g_k - m)`
  (:math:`a_k = 1`, or the importance weight :math:`w_k`; for ``reparam``/``score``
  :math:`c^* = \mathrm{Cov}(f, g)/\mathrm{Var}(g)`), estimated **leave-one-out** from the
  *other* :math:`K - 1` samples,
  :math:`c_k = \sum_{j\ne k} (h_j - \bar h_{-k})\,v_j \,/\, \sum_{j\ne k} v_j^2` (the variance of
  :math:`v` about its known mean 0; :math:`c_k = 0` where the denominator is 0).
  :math:`c_k` is independent of :math:`z_k`, so
  :math:`E[c_k (g(z_k) - m)] = E[c_k]\,E[g(z_k) - m] = 0`: unbiased.  Needs ``samples >= 3``
  (with one other sample the centred numerator is 0).  With few samples :math:`c_k` is
  noisy: its error is about :math:`\sigma_{res} / (\sum_{j\ne k} v_j^2)^{1/2}`, and for Gaussian
  :math:`g` the estimator's variance, :math:`\propto E[1/\chi^2_{K-1}]`, is finite only for
  :math:`K \ge 4`; with 3 or 4 samples the estimated coefficient can cost more variance than
  it saves -- use ``samples >= 8``, or a fixed ``coef``.
* ``coef = optimal(loo = false)``: the same ratio on all :math:`K` samples, the sample
  itself included.  Then :math:`c` and :math:`g(z_k)` are correlated and
  :math:`E[c\,(\bar g - m)] = \mathrm{Cov}(c, \bar g) \ne 0` in general: **biased**, by an
  amount that vanishes as :math:`K` grows (flagged; the compiler warns W303).  Measured on
  ``E(z ~ Normal(0.5, 0.8): z^2 + z)`` with ``g = z`` and ``score(samples = 4, baseline =
  loo)``: the gradient in the scale is halved (``tests/test_control_variates.py``).

The control-variate method: e.g. Glasserman, *Monte Carlo Methods in Financial
Engineering* (2003), §4.1; for gradient estimators Mohamed, Rosca, Figurnov & Mnih,
"Monte Carlo Gradient Estimation in Machine Learning" (JMLR 2020), §7.4.

``body(z, j, expr)`` evaluates ``expr`` at the sample ``z`` (the program's interpreter
does it for IR nodes; ``expr=None`` is the body ``f``); ``g``, ``mean`` and ``value`` (the
fixed coefficient) are such handles.  ``mean`` and ``value`` must not depend on ``z``.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from vrlang.estimators.expectation import (EVAL_SAMPLES, ImportanceEstimate, ReparamEstimate, ScoreEstimate,
                                           _eval_key_and_count, dist_params, mode)

COEF_RULES = ("fixed", "loo", "same")


def _ratio(h, v, mask):
    """``sum (h - hbar) v / sum v^2`` over the samples where ``mask`` (0 where ``sum v^2`` is 0).

    The sample covariance of ``h`` and ``v`` over the sample variance of ``v`` about its
    *known* mean 0 (``v = a (g - m)``).  That variance has one more degree of freedom than
    the centred one, so the ratio has lighter tails with few samples (the centred ratio is
    the slope through two points when ``n = 2``: its variance is infinite), and on average
    it shrinks the coefficient by about ``(n - 1)/n``, which helps at small ``n``.  Measured
    against the centred ratio and the ratio of unbiased estimates (``n/(n-1)`` times this)
    on the tests' Bernoulli and Gaussian cases, it has the lowest or close to the lowest
    variance for 3 to 16 samples.  Note ``sum (h - hbar) v = sum (h - hbar)(v - vbar)``.
    """
    n = jnp.sum(mask)
    hm = _expand(mask, h)
    hb = jnp.sum(hm * h, axis=0) / n
    cov = jnp.sum(hm * (h - hb) * _expand(v, h), axis=0)
    var = jnp.sum(mask * v * v)
    ok = var > 0
    return jnp.where(ok, cov / jnp.where(ok, var, 1.0), 0.0)


def _expand(x, like):
    """``x`` of shape ``(K,)`` with trailing unit axes, to broadcast against ``like`` of shape ``(K, ...)``."""
    return x.reshape(x.shape + (1,) * (like.ndim - 1))


def optimal_coef(h, v, loo: bool = True):
    """Per-sample coefficients ``c_k`` (shape ``h.shape``) of ``Cov(h, v)/Var(v)``.

    ``loo``: ``c_k`` from the samples ``j != k`` only (unbiased); else one coefficient from
    all ``K`` samples (biased).  ``h`` (shape ``(K, ...)``: an array-valued body gets one
    coefficient per component) and ``v`` (shape ``(K,)``) are stop-gradient values.
    """
    k = h.shape[0]
    idx = jnp.arange(k)
    if loo:
        return jax.vmap(lambda kk: _ratio(h, v, (idx != kk).astype(v.dtype)))(idx)
    return jnp.broadcast_to(_ratio(h, v, jnp.ones_like(v)), h.shape)


class CVEstimate(eqx.Module):
    """``E_q[f] = E_q[f - c (g - m)]``, estimated by ``inner`` (see the module docstring)."""

    inner: Any  # ReparamEstimate | ScoreEstimate | ImportanceEstimate
    coef: str = eqx.field(static=True)  # fixed | loo | same
    g: Any = eqx.field(static=True, default=None)  # handle: body(z, j, g) = g(z)
    mean: Any = eqx.field(static=True, default=None)  # handle: the known mean of g (no z)
    value: Any = eqx.field(static=True, default=None)  # handle of the fixed coefficient (coef == "fixed")

    def __check_init__(self):
        if self.coef not in COEF_RULES:
            raise ValueError(f"coef must be one of {COEF_RULES}, got {self.coef!r}")
        if not isinstance(self.inner, (ReparamEstimate, ScoreEstimate, ImportanceEstimate)):
            raise TypeError(f"cv wraps reparam, score or importance, not {type(self.inner).__name__}")

    @property
    def samples(self) -> int:
        return self.inner.samples

    def coefficients(self, h, v, body, z0):
        """``c`` of shape ``h.shape`` (stop-gradient) from the per-sample terms ``h``, ``v``."""
        if self.coef == "fixed":
            c = jax.lax.stop_gradient(jnp.asarray(body(z0, None, self.value), h.dtype))
            return jnp.broadcast_to(c, h.shape)
        return jax.lax.stop_gradient(optimal_coef(h, v, loo=self.coef == "loo"))

    def surrogate(self, name, dist, body, key, cast):
        sg = jax.lax.stop_gradient
        inner = self.inner
        score = isinstance(inner, ScoreEstimate)
        phi = dist_params(dist) if score and inner.baseline == "optimal" else None  # before sampling
        key, k = _eval_key_and_count(key, inner.samples, getattr(inner, 'eval_samples', EVAL_SAMPLES))
        idx = jnp.arange(k)
        a = None  # per-sample weights of the inner estimator (importance sampling)
        if isinstance(inner, ReparamEstimate):
            z = dist.rsample(key, (k,))
        elif score:
            z = sg(dist.sample(key, (k,)))
        else:
            z, a = inner.draw(dist, key, k)
        zc = cast(z)
        f = jax.vmap(body)(zc, idx)
        u = jax.vmap(lambda zz, j: body(zz, j, self.g))(zc, idx) - body(zc[0], None, self.mean)
        h, v = (f, u) if a is None else (_expand(a, f) * f, a * u)
        c = self.coefficients(sg(h), sg(v), body, zc[0])
        fp = f - c * _expand(u, f)
        out = jnp.mean(fp if a is None else _expand(a, f) * fp, axis=0)
        if score:
            f_mode = u_mode = None
            if inner.baseline == "greedy":
                zm = cast(mode(name, dist))
                f_mode = sg(body(zm, k))  # own key: index k
                u_mode = sg(body(zm, k, self.g) - body(zm, None, self.mean))
            out = out + inner.score_term(dist, z, sg(f), f_mode, control=(c, sg(u), u_mode), phi=phi)
        return out
