"""SVRG and L-SVRG on a GLM body: one minibatch draw and the scalar loss derivative.

* selection: a GLM body gets ``SVRGGLMGradient``/``LSVRGGLMGradient``; ``glm = false`` and
  non-GLM bodies keep the generic estimators;
* deterministic: on the same keys, the GLM estimate equals the generic one (float64, to
  round-off) along a run of steps that crosses snapshot refreshes -- for uniform sampling
  (with a regulariser inside the sum, a ``sum`` with an offset range and a coefficient) and
  for importance sampling (regulariser outside the sum);
* unbiasedness z-tests (uniform and importance sampling) against ``prog.grad``, with a power
  check: the same test rejects a variant that forgets the importance weights;
* ``epoch = m`` sets the snapshot period only: an epoch of the history is ceil(n/b) steps.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vrlang
from vrlang.estimators import (LSVRGGLMGradient, LSVRGGradient, SARAHGradient, SVRGGLMGradient, SVRGGradient,
                               UniformSampler)

HEAD = "data X: real[n, d]\ndata y: real[n]\nparam w: real[d] = 0\n"
LOGISTIC = HEAD + "minimize mean(i in 0..n: softplus(-y[i] * dot(X[i], w))) + 0.05 / 2 * sumsq(w)\n"
# the regulariser inside the body, a sum (not a mean) over an offset range, scaled
INSIDE = HEAD + "minimize 0.3 * sum(i in 1..n: softplus(-y[i] * dot(X[i], w)) + 0.02 * sumsq(w))\n"
LSQ_B = HEAD + "param b: real = 0\nminimize mean(i in 0..n: (dot(X[i], w) + b - y[i])^2) / 2\n"
N, D = 40, 3


def _data(seed=0):
    rng = np.random.default_rng(seed)
    scale = np.logspace(0, 1.5, N)  # unequal rows: importance sampling is far from uniform
    rng.shuffle(scale)
    Z = rng.normal(size=(N, D))
    y = np.where(Z @ rng.normal(size=D) + 0.5 * rng.normal(size=N) > 0, 1.0, -1.0)
    return {"X": Z * scale[:, None], "y": y}


DATA = _data()
P0 = {"w": np.array([0.3, -0.2, 0.1])}
P1 = {"w": np.array([0.25, -0.15, 0.12])}


def _j(p):
    return {k: jnp.asarray(v, jnp.float64) for k, v in p.items()}


def _est(src, spec):
    prog = vrlang.compile(src, x64=True, estimators={"i": spec})
    return prog, prog.gradient_estimator(DATA).module


def test_selection():
    for spec, glm_cls, generic_cls in [("svrg(batch = 4)", SVRGGLMGradient, SVRGGradient),
                                       ("lsvrg(batch = 4)", LSVRGGLMGradient, LSVRGGradient)]:
        prog, m = _est(LOGISTIC, spec)
        assert type(m) is glm_cls and "scalar loss derivatives" in prog.choices["i"].note
        _, m = _est(LOGISTIC, spec[:-1] + ", glm = false)")
        assert type(m) is generic_cls
        prog = vrlang.compile(LSQ_B, x64=True, estimators={"i": spec})  # the intercept b: not a GLM
        assert type(prog.gradient_estimator(DATA).module) is generic_cls
    with pytest.raises(vrlang.VrEstimatorError) as e:
        vrlang.compile(LOGISTIC, estimators={"i": "svrg(glm = 2)"})
    assert e.value.code == "E302"


CASES = [(LOGISTIC, "svrg(batch = 4, epoch = 3)"), (LOGISTIC, "lsvrg(batch = 4, p = 0.4)"),
         (INSIDE, "svrg(batch = 5, epoch = 3)"),
         (LOGISTIC, "svrg(batch = 4, epoch = 3, sampling = weights(norm(X[i])))"),
         (LOGISTIC, "lsvrg(batch = 4, p = 0.4, sampling = lipschitz)")]


@pytest.mark.parametrize("src,spec", CASES)
def test_equals_generic_on_the_same_keys(src, spec):
    _, glm = _est(src, spec)
    _, gen = _est(src, spec[:-1] + ", glm = false)")
    assert isinstance(glm, (SVRGGLMGradient, LSVRGGLMGradient)) and not isinstance(gen, type(glm))
    rng = np.random.default_rng(2)
    with jax.enable_x64(True):
        step_glm, step_gen = eqx.filter_jit(glm.estimate), eqx.filter_jit(gen.estimate)
        s_glm, s_gen = glm.init(_j(P0), jax.random.PRNGKey(0)), gen.init(_j(P0), jax.random.PRNGKey(0))
        refreshed = 0
        for t in range(8):  # crosses snapshot refreshes (every 3 steps, or with probability 0.4)
            p = _j({"w": P0["w"] + 0.2 * rng.normal(size=D)})
            k = jax.random.PRNGKey(50 + t)
            g1, s_glm = step_glm(p, s_glm, k)
            g2, s_gen = step_gen(p, s_gen, k)
            np.testing.assert_allclose(np.asarray(g1["w"]), np.asarray(g2["w"]), rtol=1e-11, atol=1e-13,
                                       err_msg=f"step {t}")
            np.testing.assert_array_equal(np.asarray(s_glm.snapshot["w"]), np.asarray(s_gen.snapshot["w"]))
            refreshed += bool(np.array_equal(np.asarray(s_glm.snapshot["w"]), np.asarray(p["w"])))
        assert refreshed >= 1 or "svrg(" in spec  # lsvrg: the coins refreshed at least once in 8 steps
        k1, k2 = jax.random.PRNGKey(1), jax.random.PRNGKey(2)  # and the estimate is random (away from the snapshot)
        q = _j({"w": np.asarray(s_glm.snapshot["w"]) + 0.3})
        assert not np.allclose(np.asarray(step_glm(q, s_glm, k1)[0]["w"]), np.asarray(step_glm(q, s_glm, k2)[0]["w"]))


def _draws(module, n_draws, seed=7):
    @eqx.filter_jit
    def run(m, keys):
        state = m.init(_j(P0), jax.random.PRNGKey(0))
        return jax.vmap(lambda k: m.estimate(_j(P1), state, k)[0]["w"])(keys)

    with jax.enable_x64(True):
        return np.asarray(run(module, jax.random.split(jax.random.PRNGKey(seed), n_draws)))


def _z_ok(draws, g, z=5.0):
    mean = draws.mean(0)
    se = draws.std(0, ddof=1) / np.sqrt(len(draws))
    assert se.max() > 0  # random, not the exact gradient in disguise
    assert 0.01 * np.linalg.norm(g) > z * se.max(), (g, se)  # power: a bias of 1% of |g| would be seen
    return bool(np.all(np.abs(mean - g) <= z * se)), (mean, g, se)


class _Unweighted(eqx.Module):
    """A deliberately biased sampler: the importance-sampled indices with the uniform weights n/b."""

    inner: eqx.Module

    def sample(self, key, n, env=None):
        idx, w = self.inner.sample(key, n)
        return idx, jnp.full_like(w, n / w.shape[0])


@pytest.mark.parametrize("spec", ["svrg(batch = 4, epoch = 1000)", "lsvrg(batch = 4, p = 0.3)",
                                  "svrg(batch = 4, epoch = 1000, sampling = weights(norm(X[i])))",
                                  "lsvrg(batch = 4, p = 0.3, sampling = lipschitz)"])
def test_unbiased(spec):
    prog, m = _est(LOGISTIC, spec)
    assert isinstance(m, (SVRGGLMGradient, LSVRGGLMGradient)) and prog.choices["i"].unbiased
    g = prog.grad(P1, DATA)["w"]
    ok, info = _z_ok(_draws(m, 100_000), g)
    assert ok, info
    if "sampling" in spec:  # power: forgetting the 1/(n p_j) reweighting is caught by the same test
        assert not isinstance(m.control.sampler, UniformSampler)
        biased = eqx.tree_at(lambda e: e.control.sampler, m, _Unweighted(m.control.sampler))
        ok, info = _z_ok(_draws(biased, 100_000), g)
        assert not ok, info


def test_epoch_sets_the_snapshot_period_only():
    n, b, m = N, 4, 3
    spe = math.ceil(n / b)
    prog = vrlang.compile(LOGISTIC, x64=True, estimators={"i": f"svrg(batch = {b}, epoch = {m})"},
                          solver="sgd(lr = 0.05, epochs = 2)")
    est = prog.gradient_estimator(DATA)
    assert est.steps_per_epoch == spe and est.module.epoch == m
    r = prog.solve(DATA)
    assert r.epochs == 2 and r.steps == 2 * spe  # an epoch is ceil(n/b) steps, whatever the period
    np.testing.assert_allclose(r.history["grad_evals"], (2 * b + n / m) * spe * np.arange(3), rtol=1e-12)
    # the snapshot moves every m steps
    with jax.enable_x64(True):
        mod = est.module
        state = mod.init(_j(P0), jax.random.PRNGKey(0))
        step = eqx.filter_jit(mod.estimate)
        for t in range(2 * m + 1):
            p = _j({"w": P0["w"] + 0.01 * (t + 1)})
            _, state = step(p, state, jax.random.PRNGKey(t))
            want = P0["w"] + 0.01 * (m * (t // m) + 1) if t >= m else P0["w"]
            np.testing.assert_allclose(np.asarray(state.snapshot["w"]), want, rtol=1e-14, err_msg=str(t))
    e = vrlang.compile(LOGISTIC, x64=True, estimators={"i": f"sarah(batch = {b}, epoch = {m})"}).gradient_estimator(DATA)
    assert isinstance(e.module, SARAHGradient) and e.module.epoch == m and e.steps_per_epoch == spe
