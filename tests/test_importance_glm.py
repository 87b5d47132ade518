"""Importance sampling (``sampling = weights(expr) | lipschitz``) and GLM structure.

* unbiasedness: for sgd, svrg and saga with each importance-sampling scheme, the mean of
  many draws (with a fixed, non-trivial estimator state) matches ``prog.grad`` within 5
  standard errors per coordinate, on logistic regression whose rows have norms spanning
  100x and on least squares; the sample is large enough that a bias of 1% of the gradient
  norm would fail;
* importance sampling visibly reduces the variance of the minibatch gradient on such data;
* GLM detection on the IR (detected / not detected, with the regulariser and the reason);
* SAGA's GLM table: shape (n,), same estimates as the generic SAGA for the same keys;
* ``lr = auto`` for SAGA/SVRG/L-SVRG on a GLM (the minibatch step): ``tests/test_lr_auto.py``;
* refusals: weights depending on params, lipschitz on a non-GLM body, zero weights with mix = 0.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vrlang
from vrlang.check.structure import analyse_body, glm_structure
from vrlang.errors import VrDataError, VrEstimatorError
from vrlang.estimators import SAGAGLMGradient, SAGAGradient
from vrlang.estimators.sampling import BOUND, ImportanceSampler
from vrlang.program import front_end
from vrlang.solvers import loop

LAM = 0.05
HEAD = """data X: real[n, d]
data y: real[n]
param w: real[d] = 0
"""
LOGISTIC = HEAD + f"minimize mean(i in 0..n: softplus(-y[i] * dot(X[i], w))) + {LAM} / 2 * sumsq(w)\n"
LSQ = HEAD + f"minimize mean(i in 0..n: (dot(X[i], w) - y[i])^2) / 2 + {LAM} / 2 * sumsq(w)\n"
SRC = {"logistic": LOGISTIC, "lsq": LSQ}
N_DRAWS = 40000


def _data(kind, n=40, d=3, seed=0):
    """Rows scaled by factors spanning 100x (log-uniform), so that items differ a lot."""
    rng = np.random.default_rng(seed)
    scale = np.logspace(0, 2, n)
    rng.shuffle(scale)
    Z = rng.normal(size=(n, d))
    X = Z * scale[:, None]
    wt = rng.normal(size=d)
    if kind == "logistic":
        y = np.where(Z @ wt + 0.5 * rng.normal(size=n) > 0, 1.0, -1.0)
    else:
        y = X @ wt + 0.3 * scale * rng.normal(size=n)
    return {"X": X, "y": y}


DATA = {k: _data(k) for k in SRC}
P0 = {"w": np.array([0.08, -0.05, 0.03])}  # the state (snapshot / table) is built here ...
P1 = {"w": np.array([0.05, -0.03, 0.02])}  # ... and the draws are made here


def _j(p):
    return {k: jnp.asarray(v, jnp.float64) for k, v in p.items()}


def _draws(module, n_draws):
    """``n_draws`` estimates at P1 from the state built at P0 (SVRG's snapshot, SAGA's table), one jit."""

    @eqx.filter_jit
    def run(m, keys):
        state = m.init(_j(P0), jax.random.PRNGKey(0))
        return jax.vmap(lambda k: m.estimate(_j(P1), state, k)[0]["w"])(keys)

    with jax.enable_x64(True):
        return np.asarray(run(module, jax.random.split(jax.random.PRNGKey(7), n_draws)))


def _assert_unbiased(draws, g):
    mean = draws.mean(0)
    se = draws.std(0, ddof=1) / np.sqrt(len(draws))
    assert se.max() > 0  # random, not the exact gradient in disguise
    assert 0.01 * np.linalg.norm(g) > 5 * se.max(), (g, se)  # power: a 1% bias would be seen
    assert np.all(np.abs(mean - g) <= 5 * se), (mean, g, se)


# ------------------------------------------------------------------------ unbiasedness

CASES = [(kind, est, samp) for kind in ("logistic", "lsq") for est in ("sgd", "svrg", "saga")
         for samp in ("weights(norm(X[i]))", "lipschitz")]


@pytest.mark.parametrize("kind,est,sampling", CASES)
def test_importance_sampling_is_unbiased(kind, est, sampling):
    batch = 16 if est == "sgd" else 4
    extra = ", epoch = 50" if est == "svrg" else ""  # no snapshot refresh during the test
    spec = f"{est}(batch = {batch}, sampling = {sampling}{extra})"
    prog = vrlang.compile(SRC[kind], x64=True, estimators={"i": spec})
    assert prog.choices["i"].unbiased
    est_ = prog.gradient_estimator(DATA[kind])
    sampler = est_.module.objective.data[BOUND]["i"]
    assert isinstance(sampler, ImportanceSampler) and sampler.probs.shape == (40,)
    p = np.asarray(sampler.probs)
    assert abs(p.sum() - 1) < 1e-12 and p.min() >= 0.1 / 40 * 0.999  # the uniform share keeps every item
    assert p.max() / p.min() > 10  # really non-uniform on these data
    if est == "saga":
        assert isinstance(est_.module, SAGAGLMGradient)  # both problems are GLMs
    _assert_unbiased(_draws(est_.module, N_DRAWS), prog.grad(P1, DATA[kind])["w"])


def test_zero_weights_are_mixed_with_uniform_and_stay_unbiased():
    """Weights that vanish on some items: the uniform share (mix = 0.1) keeps them, unbiased."""
    data = DATA["logistic"]
    spec = "sgd(batch = 16, sampling = weights(where(i < 4, 0, norm(X[i]))))"
    prog = vrlang.compile(LOGISTIC, x64=True, estimators={"i": spec})
    est = prog.gradient_estimator(data)
    p = np.asarray(est.module.objective.data[BOUND]["i"].probs)
    assert np.allclose(p[:4], 0.1 / 40, rtol=1e-6) and np.all(p[4:] > 0.1 / 40)
    _assert_unbiased(_draws(est.module, N_DRAWS), prog.grad(P1, data)["w"])
    # with mix = 0 the same weights would never draw those items: refused when the data arrive
    prog0 = vrlang.compile(LOGISTIC, x64=True, estimators={
        "i": "sgd(batch = 16, sampling = weights(where(i < 4, 0, norm(X[i])), mix = 0))"})
    with pytest.raises(VrDataError, match="`i`.*zero at item") as e:
        prog0.gradient_estimator(data)
    assert e.value.code == "E430"


def test_importance_sampling_reduces_variance():
    """On rows with norms spanning 100x, p ~ ||x_i|| cuts the minibatch-gradient variance."""
    data = DATA["lsq"]
    total = {}
    for samp in ("uniform", "weights(norm(X[i]))", "lipschitz"):
        prog = vrlang.compile(LSQ, x64=True, estimators={"i": f"sgd(batch = 1, sampling = {samp})"})
        d = _draws(prog.gradient_estimator(data).module, 20000)
        total[samp] = d.var(0).sum()
    assert total["weights(norm(X[i]))"] < 0.5 * total["uniform"], total
    assert total["lipschitz"] < 0.5 * total["uniform"], total


# ------------------------------------------------------------------------ GLM detection


def _sum_node(obj):
    _, _, _, cp = front_end(HEAD + "param b: real = 0\nconst lam = 0.1\n" + f"minimize {obj}\n")
    return cp, cp.binders["i"]


@pytest.mark.parametrize("obj,regulariser", [
    ("mean(i in 0..n: softplus(-y[i] * dot(X[i], w)) + sumsq(w))", "sumsq(w)"),
    ("mean(i in 0..n: (X[i] @ w - y[i])^2) / 2 + lam / 2 * sumsq(w)", None),
    ("sum(i in 0..n: log1pexp(dot(w, X[i])) - y[i] * dot(X[i], w)) + b^2", None),  # same margin twice
])
def test_glm_detected(obj, regulariser):
    cp, info = _sum_node(obj)
    g = glm_structure(cp.objective, info)
    assert g, g
    assert g.param == "w" and g.binder == "i"
    if regulariser:
        assert [str(r.op) for r in g.regularizer] == ["sumsq"]
        assert "regulariser" in g.describe() and regulariser in g.describe()
    else:
        assert not g.regularizer


@pytest.mark.parametrize("obj,why", [
    ("mean(i in 0..n: dot(X[i], w)^2 * sumsq(w))", "depends both on `i` and on the param `w`"),
    ("mean(i in 0..n: (dot(X[i], w) + b - y[i])^2)", "param `b`"),
    ("mean(i in 0..n: y[i] * sumsq(w))", "linear form"),
    ("log(mean(i in 0..n: softplus(dot(X[i], w))))", "not affine in the sum"),
    ("sumsq(w) * mean(i in 0..n: softplus(dot(X[i], w)))", "not affine in the sum"),
])
def test_glm_not_detected(obj, why):
    cp, info = _sum_node(obj)
    g = glm_structure(cp.objective, info)
    assert not g and why in g.reason, g
    if "affine" not in why:
        assert not analyse_body(info.nodes[0])


# ------------------------------------------------------------------------ SAGA's scalar table


@pytest.mark.parametrize("reg,sampling", [(False, "uniform"), (True, "lipschitz")])
def test_saga_glm_table_matches_generic_saga(reg, sampling):
    src = HEAD + "minimize mean(i in 0..n: softplus(-y[i] * dot(X[i], w)))" + (" + 0.3 * sumsq(w)" if reg else "")
    data = DATA["logistic"]
    prog = vrlang.compile(src, x64=True, estimators={"i": f"saga(batch = 3, sampling = {sampling})"})
    assert "n scalars (GLM)" in prog.explain()
    glm = prog.gradient_estimator(data).module
    assert isinstance(glm, SAGAGLMGradient)
    generic = SAGAGradient(glm.objective, glm.n, glm.batch, glm.evals_per_step, glm.steps_per_epoch,
                           sampler=glm.sampler)
    points = 0.05 * np.random.default_rng(3).normal(size=(5, 3))

    @eqx.filter_jit
    def run(m):
        ws = jnp.asarray(points, jnp.float64)
        s = m.init({"w": ws[0]}, jax.random.PRNGKey(0))

        def step(s, x):
            w, k = x
            g, s = m.estimate({"w": w}, s, k)
            return s, g["w"]

        s, gs = jax.lax.scan(step, s, (ws, jax.random.split(jax.random.PRNGKey(10), len(ws))))
        return gs, s

    with jax.enable_x64(True):
        a, sa = run(glm)
        b, _ = run(generic)
    assert sa.table.shape == (40,)  # one scalar per item
    if reg:  # the regulariser's gradient is exact in the GLM table, stale in the generic one: equal at step 1
        np.testing.assert_allclose(a[0], b[0], rtol=1e-10, atol=1e-12)
        assert np.abs(a[1:] - b[1:]).max() > 1e-8
    else:
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_new_data_do_not_recompile():
    prog = vrlang.compile(LSQ, estimators={"i": "saga(batch = 4, sampling = weights(norm(X[i])))"},
                          solver="sgd(lr = 0.001, epochs = 1)")
    prog.solve(DATA["lsq"])
    traced = loop.TRACE_COUNT[0]
    r = prog.solve(_data("lsq", seed=5))
    assert loop.TRACE_COUNT[0] == traced and np.isfinite(r.objective)


# ------------------------------------------------------------------------ refusals


def test_refusals():
    with pytest.raises(VrEstimatorError, match="must not depend on the params") as e:
        vrlang.compile(LSQ, estimators={"i": "sgd(sampling = weights(abs(dot(X[i], w))))"})
    assert e.value.code == "E395"
    with pytest.raises(VrEstimatorError, match="one number per item") as e:
        vrlang.compile(LSQ, estimators={"i": "sgd(sampling = weights(X[i]))"})
    assert e.value.code == "E395"
    with pytest.raises(VrEstimatorError, match="unknown sampling") as e:
        vrlang.compile(LSQ, estimators={"i": "sgd(sampling = norm)"})
    assert e.value.code == "E395"
    nonglm = HEAD + "minimize mean(i in 0..n: dot(X[i], w)^2 * sumsq(w))\n"
    with pytest.raises(VrEstimatorError, match="generalised linear model") as e:
        vrlang.compile(nonglm, estimators={"i": "saga(sampling = lipschitz)"})
    assert e.value.code == "E396" and "weights(" in e.value.hint
    # the same body is fine with explicit weights, and saga keeps its generic table there
    prog = vrlang.compile(nonglm, estimators={"i": "saga(sampling = weights(sumsq(X[i])))"})
    assert "copies of the params" in prog.choices["i"].memory
    assert "not a generalised linear model" in prog.explain()
    # on a GLM body, saga(glm = false) keeps the table of gradients
    assert "scalars (GLM)" in vrlang.compile(LSQ, estimators={"i": "saga"}).choices["i"].memory
    assert "copies" in vrlang.compile(LSQ, estimators={"i": "saga(glm = false)"}).choices["i"].memory
