r"""Index samplers for finite sums: which items a minibatch holds, and their weights.

A sampler returns indices ``j_1..j_b`` in ``[0, n)`` and weights ``w`` with

.. math::  E\Big[\sum_{k=1}^b w_k f(j_k)\Big] = \sum_{i=0}^{n-1} f(i)

-- the unbiasedness every finite-sum estimator builds on.

* :class:`UniformSampler` -- ``b`` indices uniform with replacement, ``w_k = n / b``.
* :class:`ImportanceSampler` -- ``b`` indices i.i.d. from probabilities ``p`` (importance
  sampling), ``w_k = (n / b) \cdot 1 / (n p_{j_k}) = 1 / (b p_{j_k})``: unbiased because
  :math:`E[w_k f(j_k)] = \sum_i p_i f(i) / (b p_i) = \frac1b \sum_i f(i)` for every ``p``
  with ``p_i > 0`` wherever ``f(i) != 0``.  The probabilities mix the given weights
  with the uniform distribution,

  .. math::  p_i = (1 - \theta)\, \frac{w_i}{\sum_l w_l} + \frac{\theta}{n}, \qquad \theta = 0.1 \text{ by default},

  so that every item keeps a positive probability (no bias even where ``w_i = 0``) and
  the importance weights stay bounded, :math:`1/(n p_i) \le 1/\theta` -- the variance is
  never more than :math:`1/\theta` times that of uniform sampling.  Needell, Srebro &
  Ward ("Stochastic gradient descent, weighted sampling, and the randomized Kaczmarz
  algorithm", NeurIPS 2014 / Math. Prog. 2016) sample with :math:`p_i \propto L_i` and
  propose this mixture ("partially biased sampling", there with θ = 1/2); Zhao & Zhang
  ("Stochastic optimization with importance sampling for regularized loss
  minimization", ICML 2015) show that :math:`p_i \propto L_i` (or :math:`\propto \|\nabla
  f_i\|`) minimises the variance bound of prox-SGD/SDCA.  ``θ = 0`` is allowed when
  every weight is positive.

  *Exactness.*  The draw is made in integers: the probabilities are quantised to counts
  :math:`c_i = \max(1, \mathrm{round}(2^{30} p_i))` (``c_i = 0`` only where ``p_i = 0``),
  ``cdf`` is their cumulative sum, a draw is ``searchsorted(cdf, u, 'right')`` with ``u``
  uniform on the integers ``[0, cdf[-1])``, and ``probs = c / cdf[-1]`` are the
  probabilities of that draw (exactly, up to the ~2^-32 non-uniformity of
  ``jax.random.randint`` and the rounding of one division) -- the weights use these, so
  the estimator is unbiased for the distribution actually sampled, in float32 as in
  float64 (a floating-point inverse CDF would bias items with ``p_i`` below the float
  spacing near 1).  Cost per draw
  ``O(b log n)``; the arrays are built once per solve, and are array fields (traced): new
  data or new weights never recompile.

:class:`FixedIndexSampler` is not random: it returns indices given in advance (a traced
array), with the same weights ``n / b``.  The lowering uses it to evaluate the objective
on a chosen minibatch, ``F(w; {j_1..j_b})``; with one index ``j`` this is the per-item
function ``h_j(w)`` with ``(1/n) sum_j h_j(w) = f(w)`` (SAGA's table is built from it).

In the DSL, ``sampling = weights(expr)`` / ``sampling = lipschitz`` put an *unbound*
:class:`ImportanceSampler` (no arrays) in the transformed program; when data arrive the
driver computes the weights and stores the bound sampler in the data pytree under
:data:`BOUND`, and :func:`bind_samplers` substitutes it while tracing.
"""

from __future__ import annotations

from typing import Mapping

import equinox as eqx
import jax
import jax.numpy as jnp

#: the default uniform share θ of an importance-sampling distribution
DEFAULT_MIX = 0.1
#: the data key under which the driver stores the bound samplers {binder: sampler}
BOUND = "sampling:bound"
_SCALE = 2 ** 30  # counts resolution; sum of counts <= 2^30 + n < 2^31 for n <= 2^28
MAX_ITEMS = 2 ** 28


class UniformSampler(eqx.Module):
    """``b`` indices drawn uniformly with replacement; weights ``n / b``."""

    batch: int = eqx.field(static=True)

    def sample(self, key, n: int, env=None):
        b = self.batch
        idx = jax.random.randint(key, (b,), 0, n, dtype=jnp.int32)
        return idx, jnp.full((b,), n / b, dtype=jnp.result_type(float))

    def with_batch(self, batch: int) -> "UniformSampler":
        return UniformSampler(batch)


class ImportanceSampler(eqx.Module):
    """``b`` indices i.i.d. from ``probs`` (exactly); weights ``1 / (b p_j)`` (see the module doc).

    Build it with :meth:`from_weights`; ``probs`` and ``cdf`` are ``None`` in the DSL's
    transformed program until the data arrive (an *unbound* sampler, which cannot sample).
    """

    batch: int = eqx.field(static=True)
    probs: jax.Array | None = None  # (n,) the sampling probabilities, exactly those of the draw
    cdf: jax.Array | None = None  # (n,) int32 cumulative integer counts
    source: str = eqx.field(static=True, default="")  # what the weights are (for messages)
    mix: float = eqx.field(static=True, default=DEFAULT_MIX)  # θ, the uniform share

    @staticmethod
    def from_weights(weights, batch: int, mix: float = DEFAULT_MIX, source: str = "") -> "ImportanceSampler":
        """``p = (1 - mix) w / sum(w) + mix / n`` from non-negative weights ``w`` (traceable).

        The caller guarantees ``w >= 0``, ``sum(w) > 0`` and, when ``mix == 0``, ``w > 0``
        (the DSL checks this when the data arrive, error E430).
        """
        w = jnp.asarray(weights)
        w = w.astype(jnp.result_type(float)) if not jnp.issubdtype(w.dtype, jnp.floating) else w
        n = w.shape[0]
        if n > MAX_ITEMS:
            raise ValueError(f"importance sampling supports at most {MAX_ITEMS} items, got {n}")
        p = (1.0 - mix) * w / jnp.sum(w) + mix / n
        counts = jnp.round(p * _SCALE).astype(jnp.int32)
        counts = jnp.where(p > 0, jnp.maximum(counts, 1), 0)
        cdf = jnp.cumsum(counts, dtype=jnp.int32)
        probs = counts.astype(w.dtype) / cdf[-1].astype(w.dtype)
        return ImportanceSampler(batch, probs, cdf, source, float(mix))

    def with_batch(self, batch: int) -> "ImportanceSampler":
        return ImportanceSampler(batch, self.probs, self.cdf, self.source, self.mix)

    def sample(self, key, n: int, env=None):
        if self.probs is None:
            raise ValueError("this ImportanceSampler is not bound to data (build it with from_weights)")
        if self.probs.shape[0] != n:
            raise ValueError(f"this ImportanceSampler has {self.probs.shape[0]} items, the sum has {n}")
        b = self.batch
        u = jax.random.randint(key, (b,), 0, self.cdf[-1], dtype=jnp.int32)
        idx = jnp.minimum(jnp.searchsorted(self.cdf, u, side="right"), n - 1).astype(jnp.int32)
        p = self.probs[idx]
        return idx, (1.0 / (b * p)).astype(p.dtype)


class FixedIndexSampler(eqx.Module):
    """The given indices ``idx`` (shape ``(b,)``, values in ``[0, n)``), weights ``n / b``.

    The key is ignored: ``F(w; idx)`` is a deterministic function of ``idx``, and the
    random choice of ``idx`` is made by the estimator that calls it.
    """

    idx: jax.Array

    @property
    def batch(self) -> int:
        return int(self.idx.shape[0])

    def sample(self, key, n: int, env=None):
        idx = jnp.asarray(self.idx, jnp.int32)
        b = idx.shape[0]
        return idx, jnp.full((b,), n / b, dtype=jnp.result_type(float))


def bind_samplers(samplers: Mapping, data: Mapping | None, batches: Mapping | None = None) -> dict:
    """The samplers to trace with: each unbound one replaced by its bound version in ``data[BOUND]``.

    ``batches`` (binder -> b) redraws at another batch size (SPIDER's large batch).
    """
    bound = data.get(BOUND, {}) if isinstance(data, Mapping) else {}
    out = {}
    for b, s in samplers.items():
        s = bound.get(b, s)
        if batches and b in batches:
            s = s.with_batch(batches[b])
        out[b] = s
    return out


def is_importance(sampler) -> bool:
    return isinstance(sampler, ImportanceSampler)
