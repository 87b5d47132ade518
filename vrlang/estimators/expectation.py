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
  ``optimal`` -- the per-coordinate variance-minimising constant baseline
  :math:`b^*_i = E[f\\,s_i^2]/E[s_i^2]`, :math:`s = \\nabla_\\phi \\log q_\\phi(z)` the score with
  respect to the distribution's *own parameter arrays* :math:`\\phi` (numpyro's pytree leaves
  of ``q``: ``loc`` and ``scale`` of a Normal, ``logits`` of ``Bernoulli(logits = t)``, each
  entry of ``theta`` in ``Categorical(logits = theta)``), one baseline per coordinate
  :math:`i` of :math:`\\phi` (Greensmith, Bartlett & Baxter 2004; Weaver & Tao 2001).  It is
  estimated *leave-one-out*, :math:`b_{k,i} = \\sum_{j\\ne k} f_j s_{j,i}^2 / \\sum_{j\\ne k} s_{j,i}^2`
  (the ``loo`` mean where that denominator is 0), so :math:`b_k` does not depend on
  :math:`z_k` and the estimate stays unbiased.  The surrogate is
  :math:`\\frac1K\\sum_k f(z_k) + \\sum_i \\phi_i\\,\\mathrm{sg}(G_i) - \\mathrm{sg}(\\phi_i G_i)` with
  :math:`G = \\frac1K\\sum_k (f_k - b_k) \\odot s_k` (per-sample scores by ``vmap(grad)`` of
  :math:`\\log q` in :math:`\\phi`): value the Monte Carlo mean, gradient in :math:`\\phi` exactly
  :math:`G`, and the chain rule from :math:`\\phi` to the params is JAX's, outside.
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
    if isinstance(dist, nd.CategoricalLogits) and tuple(dist.batch_shape) == ():
        return _categorical_log_prob(dist, z)
    return dist.log_prob(z)


def _categorical_log_prob(dist, z):
    """numpyro's ``CategoricalLogits.log_prob`` for one choice (scalar batch shape), read as ``log_pmf[z]``.

    The same formula (``logits - logsumexp(logits)``) and, with numpyro's argument validation on,
    the same ``-inf`` outside ``{0, .., C-1}``; numpyro broadcasts ``log_pmf`` to ``z.shape + (C,)``
    and reads it with ``take_along_axis``, whose gradient is a scatter into that broadcast copy
    (``K x C`` for ``K`` samples) summed back to ``C``: here the gradient is one scatter-add into ``C``.
    """
    from jax.scipy.special import logsumexp

    logits = dist.logits
    z = jnp.asarray(z)
    log_pmf = logits - logsumexp(logits, axis=-1, keepdims=True)
    out = log_pmf[z]
    if dist._validate_args:  # numpyro's validate_sample: -inf outside the support
        c = logits.shape[-1]
        out = jnp.where((z >= 0) & (z < c), out, -jnp.inf)
    return out


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
    baseline: str = eqx.field(static=True)  # none loo mean group_norm greedy optimal
    eval_samples: int = eqx.field(static=True, default=EVAL_SAMPLES)

    def surrogate(self, name, dist, body, key, cast):
        phi = dist_params(dist) if self.baseline == "optimal" else None  # before sampling caches lazy fields
        key, k = _eval_key_and_count(key, self.samples, self.eval_samples)
        z = jax.lax.stop_gradient(dist.sample(key, (k,)))
        f = jax.vmap(body)(cast(z), jnp.arange(k))
        f_mode = None
        if self.baseline == "greedy":
            f_mode = jax.lax.stop_gradient(body(cast(mode(name, dist)), k))  # own key: index k
        return jnp.mean(f, axis=0) + self.score_term(dist, z, jax.lax.stop_gradient(f), f_mode, phi=phi)

    def score_term(self, dist, z, fs, f_mode, control=None, phi=None):
        """Value 0; gradient :math:`\\frac1K\\sum_k (f_k - b_k) \\nabla \\log q(z_k)`, ``fs`` stop-gradient values.

        ``control = (c, us, u_mode)`` (from :class:`~vrlang.estimators.control_variate.CVEstimate`):
        the body is :math:`f - c_k u` for sample ``k`` (``c`` of the shape of ``fs``, ``us`` the
        control variate's centred values), and the baseline is the same rule applied to
        that body -- by linearity :math:`b_k[f] - c_k b_k[u]` (``group_norm``, not linear, is
        applied to each sample's own body).  ``phi`` is :func:`dist_params` of ``dist``
        (for ``optimal``).
        """
        if self.baseline == "optimal":
            return _optimal_score_term(phi, z, fs, control)
        adv = _advantage(self.baseline, fs, f_mode)
        if control is not None:
            c, us, u_mode = control  # c: fs.shape; us: (K,)
            ue = us.reshape(us.shape + (1,) * (fs.ndim - 1))
            if self.baseline == "group_norm":
                k = fs.shape[0]
                adv = jax.vmap(lambda ck, kk: _advantage("group_norm", fs - ck * ue, None)[kk])(c, jnp.arange(k))
            else:
                adv = adv - c * _advantage(self.baseline, ue, u_mode)
        logq = _sum_batch(log_prob(dist, z), 1)
        score = logq - jax.lax.stop_gradient(logq)  # value 0, gradient grad log q
        return _weighted_mean(score, adv)


def _advantage(baseline: str, fs, f_mode):
    """``f_k - b_k`` for the scalar baselines (``fs`` stop-gradient, shape ``(K, ...)``)."""
    k = fs.shape[0]
    if baseline == "none":
        return fs
    if baseline == "loo":
        return fs - (jnp.sum(fs, axis=0, keepdims=True) - fs) / (k - 1)
    if baseline == "mean":
        return fs - jnp.mean(fs, axis=0, keepdims=True)
    if baseline == "group_norm":
        return (fs - jnp.mean(fs, axis=0, keepdims=True)) / (jnp.std(fs, axis=0, keepdims=True) + 1e-8)
    if baseline == "greedy":
        return fs - f_mode
    raise ValueError(baseline)  # pragma: no cover - the transform refuses other names


def dist_params(dist):
    """``(phi, rebuild)``: the floating-point parameter arrays of a numpyro distribution, and
    ``rebuild(phi')`` the same distribution with ``phi'`` in their place.

    ``phi`` are the distribution's pytree leaves (its parameters as numpyro stores them,
    after broadcasting; integer leaves such as ``total_count`` are kept fixed).  Call it
    before sampling: sampling may cache derived fields (``probs`` of a ``BernoulliLogits``).
    """
    leaves, treedef = jax.tree_util.tree_flatten(dist)
    floating = [jnp.issubdtype(jnp.result_type(x), jnp.floating) for x in leaves]
    phi = [x for x, f in zip(leaves, floating) if f]

    def rebuild(new):
        it = iter(new)
        return jax.tree_util.tree_unflatten(treedef, [next(it) if f else x for x, f in zip(leaves, floating)])

    return phi, rebuild


def loo_sum(x):
    """``out[k] = sum_{j != k} x[j]`` along axis 0, without subtracting (exclusive prefix + suffix sums)."""
    zero = jnp.zeros_like(x[:1])
    before = jnp.concatenate([zero, jnp.cumsum(x, axis=0)[:-1]], axis=0)
    after = jnp.concatenate([jnp.cumsum(x[::-1], axis=0)[:-1][::-1], zero], axis=0)
    return before + after


def per_sample_scores(phi, z):
    """``[s_l]`` with ``s_l[k] = d log q_phi(z_k) / d phi_l`` (``vmap`` of ``grad``): one ``(K, *phi_l.shape)`` each."""
    params, rebuild = phi

    def logq(ps, z1):
        return jnp.sum(log_prob(rebuild(ps), z1))

    return jax.vmap(jax.grad(logq), in_axes=(None, 0))(params, z)


def optimal_baselines(fs, s):
    """Leave-one-out per-coordinate baselines ``b[k] = sum_{j!=k} f_j s_j^2 / sum_{j!=k} s_j^2``.

    ``fs`` has shape ``(K,)``, ``s`` shape ``(K, *shape)``; where the denominator is 0 (no
    other sample moves that coordinate) the baseline is the mean of the other ``f_j``.  Every
    ``b[k]`` is a function of the samples ``j != k`` only (unbiased).
    """
    k = fs.shape[0]
    fb = fs.reshape((k,) + (1,) * (s.ndim - 1))
    w = s * s
    num, den = loo_sum(fb * w), loo_sum(w)
    loo = loo_sum(fb) / (k - 1)
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), loo)


def _optimal_score_term(phi, z, fs, control):
    params, _ = phi
    scores = per_sample_scores(phi, z)
    total = 0.0
    for p, s in zip(params, scores):
        k = s.shape[0]

        def adv(vals, s=s, k=k):
            return vals.reshape((k,) + (1,) * (s.ndim - 1)) - optimal_baselines(vals, s)

        a = adv(fs)
        if control is not None:
            c, us, _ = control
            a = a - c.reshape((k,) + (1,) * (s.ndim - 1)) * adv(us)
        G = jax.lax.stop_gradient(jnp.mean(a * s, axis=0))  # the gradient in this parameter array
        t = jnp.sum(p * G)
        total = total + (t - jax.lax.stop_gradient(t))  # value 0, gradient G in p (chain rule to the params: JAX)
    return total


class EMAScoreEstimate(eqx.Module):
    r"""REINFORCE with an exponential-moving-average baseline (Williams 1992, §7 "reinforcement
    comparison"; Mnih & Gregor 2014 use a running mean as one of their baselines).

    The baseline :math:`b_t` is a running mean of past values of :math:`f`, kept as binder
    state (:mod:`vrlang.estimators.binder_state`): the surrogate at step :math:`t` uses
    :math:`b_t` and returns :math:`b_{t+1} = \beta b_t + (1 - \beta)\frac1K\sum_k f(z_k)`.
    Unbiased: :math:`b_t` depends only on earlier steps' samples, never on :math:`z_k`, so
    :math:`E[(f(z_k) - b_t)\nabla\log q(z_k)] = E[f\nabla\log q]`.  The state has the shape of
    :math:`f` (one baseline per element of an array-valued body); inside a sum over data each
    item keeps its own.  Before the first step (an exact evaluation) the state is that
    evaluation's mean of :math:`f`.
    """

    samples: int = eqx.field(static=True)
    decay: float = eqx.field(static=True)
    eval_samples: int = eqx.field(static=True, default=EVAL_SAMPLES)

    stateful = True
    requires_state = True  # without state the baseline would silently be 0

    def surrogate(self, name, dist, body, key, cast):
        return self.surrogate_from(name, dist, body, key, cast, None)[0]

    def surrogate_from(self, name, dist, body, key, cast, state):
        key, k = _eval_key_and_count(key, self.samples, self.eval_samples)
        z = jax.lax.stop_gradient(dist.sample(key, (k,)))
        f = jax.vmap(body)(cast(z), jnp.arange(k))
        logq = _sum_batch(log_prob(dist, z), 1)
        fs = jax.lax.stop_gradient(f)
        mean_f = jnp.mean(fs, axis=0)
        b = jnp.zeros_like(mean_f) if state is None else state
        score = logq - jax.lax.stop_gradient(logq)
        new = mean_f if state is None else self.decay * state + (1 - self.decay) * mean_f
        return jnp.mean(f, axis=0) + _weighted_mean(score, fs - b[None]), new


def _support_probs(dist, support):
    """``q(z)`` for every ``z`` of the support: the distribution's own probabilities for a scalar
    Bernoulli/Categorical with logits (no gather of log-probabilities at the support points)."""
    import numpyro.distributions as nd

    if tuple(dist.batch_shape) == ():
        if isinstance(dist, nd.BernoulliLogits):
            return jnp.stack([jax.nn.sigmoid(-dist.logits), jax.nn.sigmoid(dist.logits)])
        if isinstance(dist, nd.CategoricalLogits):
            return jax.nn.softmax(dist.logits)
    return jnp.exp(log_prob(dist, support))


class EnumEstimate(eqx.Module):
    def surrogate(self, name, dist, body, key, cast):
        if name == "Bernoulli":
            support = jnp.arange(2, dtype=jnp.int32)
        else:  # Categorical
            support = jnp.arange(dist.probs.shape[-1], dtype=jnp.int32)
        p = _support_probs(dist, support)
        vals = jax.vmap(body)(cast(support), jnp.arange(support.shape[0]))
        w = p.reshape(p.shape + (1,) * (vals.ndim - 1))
        return jnp.sum(w * vals, axis=0)


class ImportanceEstimate(eqx.Module):
    samples: int = eqx.field(static=True)
    self_normalized: bool = eqx.field(static=True)
    proposal: object  # a numpyro distribution with constant parameters
    eval_samples: int = eqx.field(static=True, default=EVAL_SAMPLES)

    def draw(self, dist, key, k):
        """``(z, w)``: ``k`` proposal samples (stop-gradient) and their weights ``q(z)/p(z)``
        (differentiable in the target's parameters; divided by their mean when self-normalised)."""
        prop = self.proposal
        shape = jax.lax.broadcast_shapes(tuple(prop.batch_shape), tuple(dist.batch_shape))
        if tuple(prop.batch_shape) != shape:  # a scalar proposal for an array-valued choice
            prop = prop.expand(shape)
        z = jax.lax.stop_gradient(prop.sample(key, (k,)))
        logw = _sum_batch(log_prob(dist, z), 1) - jax.lax.stop_gradient(_sum_batch(log_prob(prop, z), 1))
        w = jnp.exp(logw)
        if self.self_normalized:
            w = w / jnp.sum(w) * k
        return z, w

    def surrogate(self, name, dist, body, key, cast):
        key, k = _eval_key_and_count(key, self.samples, self.eval_samples)
        z, w = self.draw(dist, key, k)
        f = jax.vmap(body)(cast(z), jnp.arange(k))
        return _weighted_mean(w, f)
