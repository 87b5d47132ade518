"""Index samplers for finite sums: which items a minibatch holds, and their weights.

A sampler returns indices ``j_1..j_b`` in ``[0, n)`` and weights ``w`` with
``E[sum_k w_k f(j_k)] = sum_i f(i)`` -- the unbiasedness every finite-sum estimator
builds on.  Uniform sampling with replacement uses ``w_k = n / b``.

:class:`FixedIndexSampler` is not random: it returns indices given in advance (a traced
array), with the same weights ``n / b``.  The lowering uses it to evaluate the objective
on a chosen minibatch, ``F(w; {j_1..j_b})``; with one index ``j`` this is the per-item
function ``h_j(w)`` with ``(1/n) sum_j h_j(w) = f(w)`` (SAGA's table is built from it).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp


class UniformSampler(eqx.Module):
    """``b`` indices drawn uniformly with replacement; weights ``n / b``."""

    batch: int = eqx.field(static=True)

    def sample(self, key, n: int, env=None):
        b = self.batch
        idx = jax.random.randint(key, (b,), 0, n, dtype=jnp.int32)
        return idx, jnp.full((b,), n / b, dtype=jnp.result_type(float))


class FixedIndexSampler(eqx.Module):
    """The given indices ``idx`` (shape ``(b,)``, values in ``[0, n)``), weights ``n / b``.

    The key is ignored: ``F(w; idx)`` is a deterministic function of ``idx``, and the
    uniform-random choice of ``idx`` is made by the estimator that calls it.
    """

    idx: jax.Array

    @property
    def batch(self) -> int:
        return int(self.idx.shape[0])

    def sample(self, key, n: int, env=None):
        idx = jnp.asarray(self.idx, jnp.int32)
        b = idx.shape[0]
        return idx, jnp.full((b,), n / b, dtype=jnp.result_type(float))
