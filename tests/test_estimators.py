"""The finite-sum gradient estimators (LANGUAGE.md §4, §6: ``prog.gradient_estimator``).

* Statistical unbiasedness of ``sgd(batch = b)`` and ``svrg(batch = b)`` on two problems
  (logistic regression on the bundled data, least squares on random data), float64:
  the mean of N independent draws agrees with the exact gradient ``prog.grad`` within
  5 standard errors in every coordinate.  With d coordinates the chance that an
  unbiased estimator fails is at most d * P(|Z| > 5) ~ d * 5.7e-7 (Bonferroni), and the
  keys are fixed, so the test is deterministic.  The test also shows it has power: a
  bias of 1% of the gradient's norm in any single coordinate would be detected.
* SVRG is checked away from its snapshot (state initialised at ``params0``, draws at
  ``params1``), always from the same, un-advanced state: every draw uses one snapshot.
* Deterministic formulas: with a fixed key, the sgd estimate is the gradient of the
  sampled items' terms (the sampler reproduced by hand), and SVRG at its snapshot is
  the exact full gradient.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import expit

import vrlang
from vrlang.backend.lower import binder_salt

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

N_DRAWS = 100_000  # least squares needs ~17k draws of batch 16 to resolve a 1% bias (logistic ~3k): margin
Z = 5.0

LSQ = """
data X: real[n, d]
data y: real[n]
const lam: real = 0.1
param w: real[d] = 0
param b: real = 0
minimize mean(i in 0..n: (dot(X[i], w) + b - y[i])^2) / 2 + lam / 2 * sumsq(w)
"""


def _logreg_problem():
    with np.load(EXAMPLES / "data" / "breast_cancer.npz") as z:
        X, y = np.asarray(z["X"]), np.asarray(z["y"])
    d = X.shape[1]
    rng = np.random.default_rng(11)
    p0 = {"w": 0.1 * rng.normal(size=d)}
    p1 = {"w": p0["w"] + 0.2 * rng.normal(size=d)}
    lam = 1e-3

    def item_grad(p, i):  # gradient of softplus(-y_i x_i.w) (the i-th term of the mean)
        return {"w": -y[i] * X[i] * expit(-y[i] * (X[i] @ p["w"]))}

    def reg_grad(p):
        return {"w": lam * p["w"]}

    return str(EXAMPLES / "logreg.vr"), {}, p0, p1, item_grad, reg_grad, len(y)


def _lsq_problem():
    rng = np.random.default_rng(5)
    n, d = 300, 6
    X = rng.normal(size=(n, d))
    y = X @ rng.normal(size=d) + 0.3 + 0.5 * rng.normal(size=n)
    p0 = {"w": rng.normal(size=d), "b": np.float64(0.2)}
    p1 = {"w": p0["w"] + 0.3 * rng.normal(size=d), "b": np.float64(-0.1)}
    lam = 0.1

    def item_grad(p, i):
        r = X[i] @ p["w"] + p["b"] - y[i]
        return {"w": r * X[i], "b": r}

    def reg_grad(p):
        return {"w": lam * p["w"], "b": 0.0}

    return LSQ, {"X": X, "y": y}, p0, p1, item_grad, reg_grad, n


PROBLEMS = {"logreg": _logreg_problem, "lsq": _lsq_problem}


def _flat(tree, names):
    return np.concatenate([np.atleast_1d(np.asarray(tree[k], np.float64)) for k in names])


def _draws(est, params, state, n_draws, seed):
    """``n_draws`` estimates at ``params`` from the same ``state``, keys split from ``seed`` (vmapped)."""
    with jax.enable_x64(True):
        p = {k: jnp.asarray(v, jnp.float64) for k, v in params.items()}
        keys = jax.random.split(jax.random.PRNGKey(seed), n_draws)
        draw = jax.jit(jax.vmap(lambda k: est.module.estimate(p, state, k)[0]))
        g = draw(keys)
        return {k: np.asarray(v) for k, v in g.items()}


@pytest.fixture(scope="module", params=sorted(PROBLEMS))
def problem(request):
    return request.param, PROBLEMS[request.param]()


def _check_unbiased(label, G, exact):
    """|mean - exact| <= 5 SE in every coordinate, and the same check would catch a 1% bias."""
    n_draws = G.shape[0]
    mean = G.mean(axis=0)
    se = G.std(axis=0, ddof=1) / np.sqrt(n_draws)
    assert np.all(se > 0), f"{label}: the estimator is not random, the test would prove nothing"
    z = np.abs(mean - exact) / se
    assert np.all(z <= Z), f"{label}: max z-score {z.max():.2f} (coordinate {z.argmax()})"
    # power: had the estimator a bias of 1% of |g| in any one coordinate, the same check would fail
    delta = 0.01 * np.linalg.norm(exact)
    assert np.all(np.abs(mean + delta - exact) > Z * se), \
        f"{label}: N = {n_draws} draws cannot detect a bias of {delta:.3g} (max 5 SE = {Z * se.max():.3g})"
    return se


def test_sgd_and_svrg_are_unbiased(problem):
    name, (src, data, p0, p1, _, _, n) = problem
    batch = 16
    names = sorted(p0)
    var = {}
    for family in ("sgd", "svrg"):
        prog = vrlang.compile(src, x64=True, estimators={"i": f"{family}(batch = {batch})"})
        est = prog.gradient_estimator(data or None)
        assert est.unbiased
        state = est.init(p0, 0)  # svrg: snapshot at p0; every draw below shares this (un-advanced) state
        draws = _draws(est, p1, state, N_DRAWS, seed=123)  # at p1, away from the snapshot
        G = np.concatenate([draws[k].reshape(N_DRAWS, -1) for k in names], axis=1)
        assert G.dtype == np.float64 and np.all(np.isfinite(G))
        exact = _flat(prog.grad(p1, data or None), names)
        se = _check_unbiased(f"{family}(batch = {batch}) on {name}", G, exact)
        var[family] = np.sum(se ** 2) * N_DRAWS
    # variance reduction: near its snapshot the control variate removes most of the minibatch noise
    assert var["svrg"] < 0.5 * var["sgd"], var


def test_sgd_formula_with_the_sampled_items(problem):
    """The minibatch estimate is (1/b) sum_k grad f_{j_k}(w) + grad reg(w), j_k from the documented sampler."""
    name, (src, data, p0, p1, item_grad, reg_grad, n) = problem
    for batch in (1, 3):
        prog = vrlang.compile(src, x64=True, estimators={"i": f"sgd(batch = {batch})"})
        est = prog.gradient_estimator(data or None)
        state = est.init(p1, 0)
        for seed in (0, 42):
            grads, _ = est.estimate(p1, state, seed)  # an int key means PRNGKey(seed)
            with jax.enable_x64(True):
                k = jax.random.fold_in(jax.random.PRNGKey(seed), binder_salt("i"))
                idx = np.asarray(jax.random.randint(k, (batch,), 0, n, dtype=jnp.int32))
            reg = reg_grad(p1)
            for key_name in p1:
                want = np.mean([item_grad(p1, j)[key_name] for j in idx], axis=0) + reg[key_name]
                got = np.asarray(grads[key_name])
                assert got.dtype == np.float64
                np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-13,
                                           err_msg=f"{name}, batch {batch}, key {seed}, items {idx}")
        # a different key draws different items (the estimate is not accidentally exact)
        g0 = _flat(est.estimate(p1, state, 0)[0], sorted(p1))
        g1 = _flat(est.estimate(p1, state, 1)[0], sorted(p1))
        assert not np.allclose(g0, g1)


def test_svrg_at_snapshot_is_the_full_gradient(problem):
    name, (src, data, p0, p1, item_grad, reg_grad, n) = problem
    prog = vrlang.compile(src, x64=True, estimators={"i": "svrg(batch = 2)"})
    est = prog.gradient_estimator(data or None)
    state = est.init(p0, 0)
    exact = prog.grad(p0, data or None)
    # the exact gradient, independently: mean of the item gradients + regulariser
    reg = reg_grad(p0)
    for k in p0:
        by_hand = np.mean([item_grad(p0, i)[k] for i in range(n)], axis=0) + reg[k]
        np.testing.assert_allclose(exact[k], by_hand, rtol=1e-10, atol=1e-12)
    for seed in (0, 1, 2):
        grads, new_state = est.estimate(p0, state, seed)
        for k in p0:
            np.testing.assert_allclose(np.asarray(grads[k]), exact[k], rtol=1e-13, atol=1e-15)
    # away from the snapshot the estimate is random (the control variate is not the whole story)
    g0 = _flat(est.estimate(p1, state, 0)[0], sorted(p1))
    g1 = _flat(est.estimate(p1, state, 1)[0], sorted(p1))
    assert not np.allclose(g0, g1)
