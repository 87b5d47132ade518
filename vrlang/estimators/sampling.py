"""Index samplers for finite sums: which items a minibatch holds, and their weights.

A sampler returns indices ``j_1..j_b`` in ``[0, n)`` and weights ``w`` with
``E[sum_k w_k f(j_k)] = sum_i f(i)`` -- the unbiasedness every finite-sum estimator
builds on.  Uniform sampling with replacement uses ``w_k = n / b``.
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
