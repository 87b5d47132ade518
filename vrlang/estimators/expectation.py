"""Gradient estimators for expectations ``E(z ~ q_theta: f(z, theta))``.

Each estimator turns the expectation into a *surrogate*: a scalar (or array) whose value
is a Monte Carlo estimate of the expectation and whose JAX gradient is the estimator's
gradient.  ``body(z, j)`` evaluates ``f`` at the sample ``z`` (vmapped over samples);
``j`` is the sample's index, from which the random choices nested in ``f`` get their own
key (so they are independent across samples).  ``dist`` is the numpyro distribution
``q_theta`` with its parameters traced.  Log-probabilities go through :func:`log_prob`.

* :class:`ReparamEstimate` -- pathwise (Kingma & Welling 2014; Rezende et al. 2014):
  :math:`z_k = g_\\theta(\\epsilon_k)`, surrogate :math:`\\frac1K\\sum_k f(z_k)`.  Unbiased.
* :class:`ScoreEstimate` -- REINFORCE (Williams 1992):
  surrogate :math:`\\frac1K\\sum_k f(z_k) + \\mathrm{sg}(f(z_k) - b_k)\\,(\\log q(z_k) - \\mathrm{sg}\\log q(z_k))`
  with :math:`z_k` stop-gradient samples; its value is the plain Monte Carlo mean and its
  gradient :math:`\\frac1K\\sum_k \\nabla_\\theta f(z_k) + (f(z_k) - b_k)\\nabla_\\theta\\log q(z_k)`.
  Baselines :math:`b_k`: ``none`` (0); ``loo`` -- the mean of the *other* samples (RLOO,
  Kool, van Hoof & Welling 2019), unbiased since :math:`b_k` is independent of
  :math:`z_k`; ``greedy`` -- :math:`f` at the mode of :math:`q` (ReMax, Li et al. 2023),
  unbiased; ``mean`` -- the group mean *including* :math:`z_k` (Dr. GRPO style), biased:
  its expected gradient is :math:`\\frac{K-1}K` of the true one; ``group_norm`` -- the
  GRPO advantage :math:`(f_k - \\bar f)/\\mathrm{std}(f)` (Shao et al. 2024), biased
  (the scale depends on the samples).
* :class:`EnumEstimate` -- exact :math:`\\sum_{z} q(z) f(z)` over a finite support,
  vectorised over the support.
* :class:`ImportanceEstimate` -- :math:`z_k \\sim p` (a fixed proposal),
  :math:`\\frac1K\\sum_k \\frac{q_\\theta(z_k)}{p(z_k)} f(z_k)`; unbiased.  With
  ``self_normalized`` the weights are divided by their sum: consistent but biased.

When the program is evaluated "exactly" (``key=None``: the logged objective), a sampled
expectation uses a fixed key and at least :data:`EVAL_SAMPLES` samples, so the logged
objective is a deterministic Monte Carlo estimate with common random numbers
(``eval_samples = m`` in the spec: max(k, m) samples instead, e.g. a few for a VAE whose
per-epoch ELBO over all the data would otherwise cost 256 passes).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

EVAL_SAMPLES = 256
_EVAL_KEY = 0x5EED


def _sum_batch(logp, n_sample_dims: int):
    """Sum the log-probability over the batch axes: one random choice = the whole array."""
    axes = tuple(range(n_sample_dims, logp.ndim))
    return jnp.sum(logp, axis=axes) if axes else logp


def log_prob(dist, z):
    """``dist.log_prob(z)``, except for ``Bernoulli(logits = l)``.

    numpyro's ``BernoulliLogits.log_prob`` (a stable formula with ``clip`` and ``abs``) has
    a wrong derivative at ``l == 0`` -- the kinks of ``clip`` and ``abs`` -- giving
    d/dl log p(1) = 1 and d/dl log p(0) = 0 instead of 1/2 and -1/2; a param's default
    initial value is 0, so a first step would be biased.  ``log_sigmoid`` is smooth.
    """
    import numpyro.distributions as nd

    if isinstance(dist, nd.BernoulliLogits):
        lg = dist.logits
        return jnp.where(z == 1, jax.nn.log_sigmoid(lg), jax.nn.log_sigmoid(-lg))
    return dist.log_prob(z)


def _eval_key_and_count(key, samples: int, eval_samples: int = EVAL_SAMPLES):
    if key is None:
        return jax.random.PRNGKey(_EVAL_KEY), max(samples, eval_samples)
    return key, samples


def _weighted_mean(weights, vals):
    w = weights.reshape(weights.shape + (1,) * (vals.ndim - weights.ndim))
    return jnp.mean(w * vals, axis=0)


def mode(name: str, dist):
    """The mode of the supported discrete/location families (for the greedy baseline)."""
    if name == "Bernoulli":
        return (dist.probs > 0.5).astype(jnp.int32)
    if name == "Categorical":
        return jnp.argmax(dist.probs, axis=-1).astype(jnp.int32)
    if name in ("Normal", "Laplace", "Cauchy", "StudentT", "Logistic", "Gumbel", "MultivariateNormal"):
        return jnp.broadcast_to(dist.loc, dist.batch_shape + dist.event_shape)
    raise ValueError(name)  # refused at compile time


GREEDY_FAMILIES = ("Bernoulli", "Categorical", "Normal", "Laplace", "Cauchy", "StudentT", "Logistic", "Gumbel",
                   "MultivariateNormal")


class ReparamEstimate(eqx.Module):
    samples: int = eqx.field(static=True)
    eval_samples: int = eqx.field(static=True, default=EVAL_SAMPLES)

    def surrogate(self, name, dist, body, key, cast):
        key, k = _eval_key_and_count(key, self.samples, self.eval_samples)
        z = dist.rsample(key, (k,))
        return jnp.mean(jax.vmap(body)(cast(z), jnp.arange(k)), axis=0)


class ScoreEstimate(eqx.Module):
    samples: int = eqx.field(static=True)
    baseline: str = eqx.field(static=True)  # none loo mean group_norm greedy
    eval_samples: int = eqx.field(static=True, default=EVAL_SAMPLES)

    def surrogate(self, name, dist, body, key, cast):
        key, k = _eval_key_and_count(key, self.samples, self.eval_samples)
        z = jax.lax.stop_gradient(dist.sample(key, (k,)))
        f = jax.vmap(body)(cast(z), jnp.arange(k))
        logq = _sum_batch(log_prob(dist, z), 1)
        fs = jax.lax.stop_gradient(f)
        if self.baseline == "none":
            adv = fs
        elif self.baseline == "loo":
            adv = fs - (jnp.sum(fs, axis=0, keepdims=True) - fs) / (k - 1)
        elif self.baseline == "mean":
            adv = fs - jnp.mean(fs, axis=0, keepdims=True)
        elif self.baseline == "group_norm":
            adv = (fs - jnp.mean(fs, axis=0, keepdims=True)) / (jnp.std(fs, axis=0, keepdims=True) + 1e-8)
        elif self.baseline == "greedy":
            b = jax.lax.stop_gradient(body(cast(mode(name, dist)), k))  # own key: index k
            adv = fs - b
        else:  # pragma: no cover - the transform refuses other names
            raise ValueError(self.baseline)
        score = logq - jax.lax.stop_gradient(logq)  # value 0, gradient grad log q
        return jnp.mean(f, axis=0) + _weighted_mean(score, adv)


class EnumEstimate(eqx.Module):
    def surrogate(self, name, dist, body, key, cast):
        if name == "Bernoulli":
            support = jnp.arange(2, dtype=jnp.int32)
        else:  # Categorical
            support = jnp.arange(dist.probs.shape[-1], dtype=jnp.int32)
        p = jnp.exp(log_prob(dist, support))
        vals = jax.vmap(body)(cast(support), jnp.arange(support.shape[0]))
        w = p.reshape(p.shape + (1,) * (vals.ndim - 1))
        return jnp.sum(w * vals, axis=0)


class ImportanceEstimate(eqx.Module):
    samples: int = eqx.field(static=True)
    self_normalized: bool = eqx.field(static=True)
    proposal: object  # a numpyro distribution with constant parameters
    eval_samples: int = eqx.field(static=True, default=EVAL_SAMPLES)

    def surrogate(self, name, dist, body, key, cast):
        key, k = _eval_key_and_count(key, self.samples, self.eval_samples)
        prop = self.proposal
        shape = jax.lax.broadcast_shapes(tuple(prop.batch_shape), tuple(dist.batch_shape))
        if tuple(prop.batch_shape) != shape:  # a scalar proposal for an array-valued choice
            prop = prop.expand(shape)
        z = jax.lax.stop_gradient(prop.sample(key, (k,)))
        logw = _sum_batch(log_prob(dist, z), 1) - jax.lax.stop_gradient(_sum_batch(log_prob(prop, z), 1))
        w = jnp.exp(logw)
        f = jax.vmap(body)(cast(z), jnp.arange(k))
        if self.self_normalized:
            w = w / jnp.sum(w) * k
        return _weighted_mean(w, f)
