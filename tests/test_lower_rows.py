"""Exact sums read ``X[i, ...]`` as rows of ``X[lo:hi]`` mapped over with ``i`` (vrlang/backend/lower.py).

Before, ``vmap`` over ``i = arange(lo, hi)`` of ``X[i]`` compiled to a gather of every row
(a full copy of X per evaluation; benchmarks/expectation.py measured it at 1.3-1.7x the
hand-written time).  These tests pin the result (values and gradients equal ``jax.grad``
of plain references, including offset ranges, nested sums, 2-d indexing, param rows and
ranges shorter than the axis) and that the compiled objective has no gather left.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import vrlang

SRC = """
data X: real[n, d]
data y: real[n]
data Z: real[m, d]
param w: real[d] = 0
param phi: real[n] = 0
minimize sum(i in 1..n: (dot(X[i], w) - y[i])^2 + phi[i]^2 * X[i, 0])
         + mean(i2 in 0..n: sum(j in 0..d: X[i2, j] * w[j] * phi[i2]))
         + sum(k in 0..m: sumsq(Z[k] - X[k]))
"""


def _data(seed=0, n=9, d=4, m=5):
    rng = np.random.default_rng(seed)
    return {"X": rng.normal(size=(n, d)), "y": rng.normal(size=n), "Z": rng.normal(size=(m, d))}


def _reference(p, D):
    X, y, Z = D["X"], D["y"], D["Z"]
    m = Z.shape[0]
    a = jnp.sum(((X @ p["w"] - y) ** 2 + p["phi"] ** 2 * X[:, 0])[1:])
    b = jnp.mean((X @ p["w"]) * p["phi"])
    c = jnp.sum((Z - X[:m]) ** 2)
    return a + b + c


def test_values_and_gradients_match_references():
    D = _data()
    prog = vrlang.compile(SRC, x64=True)
    rng = np.random.default_rng(1)
    params = {"w": rng.normal(size=4), "phi": rng.normal(size=9)}
    with jax.enable_x64(True):
        P = {k: jnp.asarray(v) for k, v in params.items()}
        JD = {k: jnp.asarray(v) for k, v in D.items()}
        want_v = float(_reference(P, JD))
        want_g = jax.grad(_reference)(P, JD)
    np.testing.assert_allclose(prog.objective(params, D), want_v, rtol=1e-12)
    g = prog.grad(params, D)
    for k in params:
        np.testing.assert_allclose(g[k], np.asarray(want_g[k]), rtol=1e-11, atol=1e-12)


def test_exact_sum_compiles_without_gather():
    src = "data X: real[n, d]\ndata y: real[n]\nparam w: real[d] = 0\nminimize mean(i in 0..n: (dot(X[i], w) - y[i])^2)"
    D = {k: v for k, v in _data().items() if k != "Z"}
    prog = vrlang.compile(src)
    est = prog.gradient_estimator(D)
    p = {"w": jnp.zeros(4)}
    jaxpr = jax.make_jaxpr(lambda m, q: m.estimate(q, None, jax.random.PRNGKey(0))[0])(est.module, p)
    assert "gather" not in str(jaxpr)
    hlo = jax.jit(lambda m, q: m.estimate(q, None, jax.random.PRNGKey(0))[0]).lower(est.module, p).compile().as_text()
    assert " gather(" not in hlo
    # the sampled path still draws its rows (a gather at the drawn indices) and stays correct in expectation
    sampled = vrlang.compile(src, estimators={"i": "sgd(batch = 3)"}).gradient_estimator(D)
    assert "gather" in str(jax.make_jaxpr(lambda m, q: m.estimate(q, None, jax.random.PRNGKey(0))[0])(
        sampled.module, p))
