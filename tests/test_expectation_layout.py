"""Expectations of sums over data compile to the layout of the hand-written estimator.

``E(w ~ q: mean(i in 0..n: (dot(X[i], w) - y[i])^2))`` is evaluated with ``vmap`` over the
samples around ``vmap`` over the rows.  Written ``dot(X[i], w)``, JAX batches the product
to ``X @ W.T`` (rows first) and moves the samples to the front with a transpose, which the
CPU compiler turns into a two-stage reduction over the rows; the lowering evaluates it as
``dot(w, X[i])`` instead (``W @ X.T``, vrlang/backend/lower.py ``Interpreter._dot_order``),
the form written by hand in benchmarks/expectation.py.  Categorical log-probabilities of
one choice are read as ``log_pmf[z]`` (vrlang/estimators/expectation.py), not through
numpyro's broadcast ``take_along_axis``.  These tests pin the values (estimates from fixed
keys against ``jax.grad`` of hand-written surrogates drawing the same samples, both orders
of ``dot``) and the structure (no transpose left in the evaluation).
"""

from __future__ import annotations

import zlib

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as nd
import pytest

import vrlang
from vrlang.estimators.expectation import log_prob

K = 4
HEAD = "data X: real[n, d]\ndata y: real[n]\nparam m: real[d] = 0\nparam s: real[d] in positive = 1\n"
E_OF_SUM = HEAD + "minimize E(w ~ Normal(m, s): mean(i in 0..n: (dot({a}, {b}) - y[i])^2))"
SUM_OF_E = HEAD + "minimize mean(i in 0..n: E(w ~ Normal(m, s): (dot({a}, {b}) - y[i])^2))"
CAT = """data X: real[n, d]
data y: real[n]
param theta: real[3] = 0
param W: real[3, d] = 0
minimize E(c ~ Categorical(logits = theta): mean(i in 0..n: (dot(X[i], W[c]) - y[i])^2))
"""


def _salt(name):
    return zlib.crc32(name.encode()) & 0x7FFFFFFF  # vrlang.backend.lower.binder_salt


def _data(n=40, d=3, seed=0):
    rng = np.random.default_rng(seed)
    return {"X": rng.normal(size=(n, d)), "y": rng.normal(size=n)}


def _estimate(src, spec, binder, data, params, key, x64=True):
    est = vrlang.compile(src, estimators={binder: spec}, x64=x64).gradient_estimator(data)
    return est.module.estimate({k: jnp.asarray(v) for k, v in params.items()}, None, key)[0], est


def _hand_e_of_sum(p, D, key):
    """reparam(samples = K) of E_OF_SUM, vrlang's keys: w_k = m + s * eps_k, eps = normal(fold_in(key, salt))."""
    eps = jax.random.normal(jax.random.fold_in(key, _salt("w")), (K, p["m"].shape[0]))
    w = p["m"] + eps * p["s"]
    return jnp.mean(jnp.mean((w @ D["X"].T - D["y"]) ** 2, axis=1))


@pytest.mark.parametrize("a,b", [("X[i]", "w"), ("w", "X[i]")])
def test_expectation_of_sum_matches_hand_written(a, b):
    D = _data()
    params = {"m": np.array([0.3, -0.2, 0.1]), "s": np.array([0.7, 1.1, 0.9])}
    with jax.enable_x64(True):
        for seed in range(2):
            key = jax.random.PRNGKey(seed)
            g, _ = _estimate(E_OF_SUM.format(a=a, b=b), f"reparam(samples = {K})", "w", D, params, key)
            P = {k: jnp.asarray(v) for k, v in params.items()}
            want = jax.grad(_hand_e_of_sum)(P, {k: jnp.asarray(v) for k, v in D.items()}, key)
            for k in P:
                np.testing.assert_allclose(np.asarray(g[k]), np.asarray(want[k]), rtol=1e-11, atol=1e-12)


def test_expectation_inside_sum_same_in_both_orders():
    D = _data()
    params = {"m": np.array([0.3, -0.2, 0.1]), "s": np.array([0.7, 1.1, 0.9])}
    with jax.enable_x64(True):
        key = jax.random.PRNGKey(3)
        for spec in (f"reparam(samples = {K})", f"score(samples = {K}, baseline = loo)"):
            g1, _ = _estimate(SUM_OF_E.format(a="X[i]", b="w"), spec, "w", D, params, key)
            g2, _ = _estimate(SUM_OF_E.format(a="w", b="X[i]"), spec, "w", D, params, key)
            for k in params:
                np.testing.assert_allclose(np.asarray(g1[k]), np.asarray(g2[k]), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("a,b", [("X[i]", "w"), ("w", "X[i]")])
def test_expectation_of_sum_has_no_transpose(a, b):
    """Power: before the reordering the forward evaluation of dot(X[i], w) had one transpose (and the
    estimate two); the benchmark problem's optimised HLO then had a reduce-window the hand-written one has not."""
    D = _data()
    _, est = _estimate(E_OF_SUM.format(a=a, b=b), f"reparam(samples = {K})", "w", D,
                       {"m": np.zeros(3), "s": np.ones(3)}, jax.random.PRNGKey(0), x64=False)
    p = {"m": jnp.zeros(3), "s": jnp.ones(3)}
    fwd = jax.make_jaxpr(lambda q: est.module.objective.sample(q, jax.random.PRNGKey(0)))(p)
    full = jax.make_jaxpr(lambda q: est.module.estimate(q, None, jax.random.PRNGKey(0))[0])(p)
    assert "transpose" not in str(fwd)
    assert "transpose" not in str(full)


def _hand_cat_loo(p, D, key):
    """score(samples = K, baseline = loo) of CAT with vrlang's keys (benchmarks/expectation.py hand_cat)."""
    c = jax.random.categorical(jax.random.fold_in(key, _salt("c")), p["theta"], shape=(K,))
    f = jnp.mean((p["W"][c] @ D["X"].T - D["y"]) ** 2, axis=1)
    fs = jax.lax.stop_gradient(f)
    b = (jnp.sum(fs) - fs) / (K - 1)
    logq = jax.nn.log_softmax(p["theta"])[c]
    return jnp.mean(f) + jnp.mean((fs - b) * (logq - jax.lax.stop_gradient(logq)))


def test_categorical_score_matches_hand_written():
    D = _data()
    rng = np.random.default_rng(5)
    params = {"theta": rng.normal(size=3), "W": rng.normal(size=(3, 3))}
    with jax.enable_x64(True):
        for seed in range(3):
            key = jax.random.PRNGKey(seed)
            g, _ = _estimate(CAT, f"score(samples = {K}, baseline = loo)", "c", D, params, key)
            P = {k: jnp.asarray(v) for k, v in params.items()}
            want = jax.grad(_hand_cat_loo)(P, {k: jnp.asarray(v) for k, v in D.items()}, key)
            for k in P:
                np.testing.assert_allclose(np.asarray(g[k]), np.asarray(want[k]), rtol=1e-10, atol=1e-12)


def test_categorical_log_prob_is_numpyros():
    """Same values (in and out of the support: -inf) and gradients as numpyro's CategoricalLogits.log_prob."""
    theta = jnp.array([0.3, -1.2, 2.0, 0.1])
    z = jnp.array([0, 1, 2, 3, 3, 1])
    out = jnp.array([-1, 4, 7])
    q = nd.Categorical(logits=theta)
    np.testing.assert_array_equal(np.asarray(log_prob(q, z)), np.asarray(q.log_prob(z)))
    assert np.all(np.isneginf(np.asarray(log_prob(q, out))))
    np.testing.assert_array_equal(np.asarray(log_prob(q, jnp.int32(2))), np.asarray(q.log_prob(jnp.int32(2))))
    g = jax.grad(lambda t: jnp.sum(log_prob(nd.Categorical(logits=t), z)))(theta)
    want = jax.grad(lambda t: jnp.sum(nd.Categorical(logits=t).log_prob(z)))(theta)
    np.testing.assert_allclose(np.asarray(g), np.asarray(want), rtol=1e-6)
    # a batch of choices keeps numpyro's own formula
    qb = nd.Categorical(logits=jnp.stack([theta, -theta]))
    zb = jnp.array([[0, 3], [2, 1]])
    np.testing.assert_array_equal(np.asarray(log_prob(qb, zb)), np.asarray(qb.log_prob(zb)))
