"""``score(baseline = optimal)`` and ``cv(g, mean = m, coef = c | optimal, inner = ...)``.

* unbiasedness, value and gradient: for each program (the Bernoulli toy, the Gaussian
  ``z^2 + z``, the categorical policy of ``examples/policy.vr``) the specs are traced into
  one jitted function and drawn many times with independent keys (float64); per spec, the
  mean of the surrogate's value and of the gradient are within 5 standard errors of the
  exact expectation and of ``jax.grad`` of it (closed form or enumeration), and the number
  of draws is chosen from a pilot chunk so that a bias of 1% of |value| or |gradient|
  would be seen (``0.01 |g| > 5 SE``, asserted);
* the same-sample coefficient ``coef = optimal(loo = false)`` really is biased (> 5 SE
  off, value and gradient) on a case built to show it, and is flagged (W303, explain);
* single-estimate formula tests: the compiled estimate equals the formula written by hand
  at the samples the compiler draws (optimal baseline, cv with estimated and fixed coef);
* variance: a control variate g = z on the Gaussian cuts the measured variance >= 2x
  (measured on the draws of the unbiasedness test);
* refusals with their codes (E300, E307, E314, E315) and a short solve.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as nd
import pytest

import vrlang
from vrlang.backend.lower import binder_salt
from vrlang.estimators.control_variate import optimal_coef
from vrlang.estimators.expectation import loo_sum, optimal_baselines

# the Bernoulli toy and the Gaussian, their exact expectations and helpers: as in test_expectations
from test_expectations import GAUSS, GP, T0, TOY, _flat, _gauss_exact, _toy_exact, _x64

ROOT = Path(__file__).resolve().parent.parent
CHUNK = 1 << 15
MAX_DRAWS = 1 << 22

POLICY = ROOT / "examples" / "policy.vr"
TARGET = [2, 0, 1, 2]
THETA = np.random.default_rng(0).normal(size=(4, 3)) * 0.7
# g = the number of tokens matching the target (the main part of the reward), with its exact mean
POLICY_G = "g = sum(where(a == [2, 0, 1, 2], 1, 0)), mean = sum(softmax(theta) * one_hot([2, 0, 1, 2], 3))"


def reward(a):
    """examples/expectations_demo.py's reward model: one point per matching token, -0.5 for a repeated opening."""
    return jnp.sum(a == jnp.asarray(TARGET)).astype(float) - 0.5 * (a[0] == a[1])


# ----------------------------------------------------------------------------- helpers


@_x64
def _policy_exact(p):
    seqs = jnp.asarray(list(itertools.product(range(3), repeat=4)))
    r = jax.vmap(reward)(seqs)
    logp = jnp.sum(jnp.take_along_axis(jax.nn.log_softmax(p["theta"], -1)[None], seqs[..., None], -1)[..., 0], -1)
    return jnp.sum(jnp.exp(logp) * r)


@_x64
def exact(fn, params):
    """(value, flattened gradient) of a hand-written exact expectation (params in sorted order)."""
    p = {k: jnp.asarray(v, jnp.float64) for k, v in params.items()}
    v, g = jax.value_and_grad(fn)(p)
    return np.asarray(v), np.asarray(_flat(g))


def _compile(src, binder, spec, **kw):
    return vrlang.compile(src, x64=True, estimators={binder: spec}, **kw)


@_x64
def measure(progs, params, want, data=None, seed=0):
    """Mean and SE of (value, gradient...) of each compiled estimator, all in one jitted function.

    ``want`` is the exact (value, gradient) concatenated; after a pilot chunk the number of
    draws is raised until ``5 SE < 1%`` of |value| and of |gradient| for every estimator.
    """
    p = {k: jnp.asarray(v, jnp.float64) for k, v in params.items()}
    mods = []
    for prog in progs:
        est = prog.gradient_estimator(data or {})
        mods.append((est.module, est.init(p, 0)))

    def one(m, s, key):
        return jnp.concatenate([jnp.reshape(m.objective.sample(p, key), (1,)), _flat(m.estimate(p, s, key)[0])])

    @jax.jit
    def chunk(seed):
        keys = jax.random.split(jax.random.PRNGKey(seed), CHUNK)
        out = [jax.vmap(lambda k, m=m, s=s: one(m, s, k))(keys) for m, s in mods]
        return [(jnp.sum(x, 0), jnp.sum(x * x, 0)) for x in out]

    sums = [[np.array(a), np.array(b)] for a, b in chunk(seed * 7919)]
    n = CHUNK
    scale = np.array([abs(want[0])] + [np.linalg.norm(want[1:])] * (len(want) - 1))
    sd = max(float((np.sqrt(np.maximum(s2 / n - (s1 / n) ** 2, 0)) / scale).max()) for s1, s2 in sums)
    total = int(min((5 * sd / 0.01) ** 2 * 1.5, MAX_DRAWS))
    for c in range(1, math.ceil(total / CHUNK)):
        for acc, (a, b) in zip(sums, chunk(seed * 7919 + c)):
            acc[0] += np.asarray(a)
            acc[1] += np.asarray(b)
        n += CHUNK
    out = []
    for s1, s2 in sums:
        mean = s1 / n
        out.append((mean, np.sqrt(np.maximum(s2 / n - mean ** 2, 0) / (n - 1))))
    return out, n, scale


def assert_unbiased(mean, se, want, scale, what):
    assert np.all(0.01 * scale > 5 * se), f"{what}: no power: 5 SE = {5 * se} vs 1% = {0.01 * scale}"
    ok = (np.abs(mean - want) <= 5 * se) | (np.abs(mean - want) < 1e-12)
    assert np.all(ok), f"{what}: mean {mean} vs exact {want} (SE {se}, |z| {np.abs(mean - want) / se})"


def _check_group(src, binder, specs, fn, params, data=None, **kw):
    """Asserts every spec unbiased (value and gradient); returns the per-draw variances, by spec."""
    progs = [_compile(src, binder, s, **kw) for s in specs]
    for s, prog in zip(specs, progs):
        assert prog.choices[binder].unbiased is True, s
    v, g = exact(fn, params)
    want = np.concatenate([[v], g])
    results, n, scale = measure(progs, params, want, data)
    for spec, (mean, se) in zip(specs, results):
        assert_unbiased(mean, se, want, scale, f"{spec} ({n} draws)")
    return {spec: se ** 2 * (n - 1) for spec, (_, se) in zip(specs, results)}


# ------------------------------------------------------------------- unbiasedness


@pytest.mark.slow
def test_bernoulli_toy_unbiased():
    m = "mean = sigmoid(t)"
    _check_group(TOY, "b", [
        "score(samples = 4, baseline = optimal)",
        f"cv(b, {m}, coef = optimal, inner = score(samples = 4, baseline = optimal))",
        f"cv(b, {m}, coef = 0.1, inner = score(samples = 2, baseline = greedy))",
    ], _toy_exact, {"t": T0})


@pytest.mark.slow
def test_gaussian_unbiased_and_control_variate_reduces_variance():
    """Unbiased; and g = z, mean = m cuts the variance of score(samples = 16, baseline = loo).

    f - c (z - m) with c* = Cov(f, z)/Var(z) = 2m + 1 leaves (z - m)^2 + m^2 + m: the value's
    variance falls from (2m+1)^2 s^2 + 2 s^4 to 2 s^4 per sample (4.1x at m = 0.5, s = 0.8).
    """
    plain = "score(samples = 16, baseline = loo)"
    loo_c = "cv(z, mean = m, coef = optimal, inner = score(samples = 16, baseline = loo))"
    fixed_c = "cv(z, mean = m, coef = 2, inner = score(samples = 16, baseline = loo))"
    var = _check_group(GAUSS, "z", [
        plain, loo_c, fixed_c,
        "score(samples = 16, baseline = optimal)",
        "cv(g = z^2, mean = m^2 + s^2, coef = optimal, inner = reparam(samples = 8))",
        "cv(z, mean = m, coef = optimal, inner = importance(proposal = Normal(0, 2), samples = 8))",
    ], _gauss_exact, GP)
    value = {k: v[0] for k, v in var.items()}
    grad = {k: v[1:].sum() for k, v in var.items()}
    assert value[plain] / value[loo_c] >= 2.0, value  # measured 2.9x (estimated coefficient)
    assert value[plain] / value[fixed_c] >= 3.0, value  # measured 4.0x (c = c* = 2m + 1)
    assert grad[plain] / grad[loo_c] >= 1.5, grad  # measured 1.8x
    assert grad[plain] / grad[fixed_c] >= 2.0, grad  # measured 2.2x


@pytest.mark.slow
def test_categorical_policy_unbiased():
    """examples/policy.vr: a sequence of 4 tokens, per-position logits theta[4, 3], an extern reward."""
    _check_group(str(POLICY), "a", [
        "score(samples = 4, baseline = optimal)",
        f"cv({POLICY_G}, coef = optimal, inner = score(samples = 4, baseline = loo))",
    ], _policy_exact, {"theta": THETA}, externs={"reward": reward})


# ------------------------------------------------------------ biased, and honest


SAME = "cv(z, mean = m, coef = optimal(loo = false), inner = score(samples = 4, baseline = loo))"


def test_same_sample_coefficient_is_biased_and_flagged():
    prog = _compile(GAUSS, "z", SAME)
    assert prog.choices["z"].unbiased is False
    assert [w.code for w in prog.warnings] == ["W303"]
    assert "optimal(loo = false)" in str(prog.warnings[0]) and "coef = optimal" in prog.warnings[0].hint
    text = prog.explain()
    assert "unbiased  : NO" in text and "BIASED" in text and "same 4 samples" in text
    v, g = exact(_gauss_exact, GP)
    want = np.concatenate([[v], g])
    [(mean, se)], n, _ = measure([prog], GP, want)
    # the value and the gradient in s are far off (measured: about -12% and -50%)
    assert abs(mean[0] - want[0]) > 10 * se[0], (mean, want, se)
    assert abs(mean[2] - want[2]) > 10 * se[2], (mean, want, se)
    assert abs(mean[2] - want[2]) > 0.2 * abs(want[2])


# ------------------------------------------------------------- formula tests


def _keys(n=6):
    return jax.random.split(jax.random.PRNGKey(5), n)


@_x64
def test_optimal_baseline_formula_bernoulli():
    """b_k = sum_{j!=k} f_j s_j^2 / sum_{j!=k} s_j^2, s = d/dt log q(b) = b - sigmoid(t); grad = mean (f - b) s."""
    est = _compile(TOY, "b", "score(samples = 3, baseline = optimal)").gradient_estimator({})
    t = jnp.float64(T0)
    q = jax.nn.sigmoid(t)
    seen = set()
    for key in _keys(8):
        g, _ = est.estimate({"t": t}, None, key)
        b = nd.Bernoulli(logits=t).sample(jax.random.fold_in(key, binder_salt("b")), (3,)).astype(jnp.float64)
        seen.add(tuple(np.asarray(b)))
        f, s = (b - 0.45) ** 2, b - q
        base = [sum(f[j] * s[j] ** 2 for j in range(3) if j != k) / sum(s[j] ** 2 for j in range(3) if j != k)
                for k in range(3)]
        want = np.mean([(f[k] - base[k]) * s[k] for k in range(3)])
        np.testing.assert_allclose(float(g["t"]), float(want), rtol=1e-10, atol=1e-15)
    assert len(seen) > 2


@_x64
def test_optimal_baseline_formula_gaussian():
    """Per coordinate of (loc, scale): s_loc = (z - m)/s^2, s_scale = (z - m)^2/s^3 - 1/s, one baseline each."""
    est = _compile(GAUSS, "z", "score(samples = 3, baseline = optimal)").gradient_estimator({})
    m, s = jnp.float64(GP["m"]), jnp.float64(GP["s"])
    for key in _keys():
        g, _ = est.estimate({"m": m, "s": s}, None, key)
        z = np.asarray(nd.Normal(m, s).sample(jax.random.fold_in(key, binder_salt("z")), (3,)))
        f = z ** 2 + z
        want = []
        for sc in ((z - m) / s ** 2, (z - m) ** 2 / s ** 3 - 1 / s):
            base = [sum(f[j] * sc[j] ** 2 for j in range(3) if j != k) / sum(sc[j] ** 2 for j in range(3) if j != k)
                    for k in range(3)]
            want.append(np.mean([(f[k] - base[k]) * sc[k] for k in range(3)]))
        np.testing.assert_allclose([float(g["m"]), float(g["s"])], want, rtol=1e-10)


def test_optimal_baseline_helpers():
    x = np.arange(1.0, 6.0)
    np.testing.assert_allclose(loo_sum(x), x.sum() - x)
    # no other sample moves the coordinate: fall back to the mean of the other f (still leave-one-out)
    fs = np.array([1.0, 2.0, 4.0])
    s = np.array([[0.0, 1.0], [0.0, 2.0], [3.0, 0.0]])
    b = np.asarray(jax.jit(optimal_baselines)(fs, s))
    np.testing.assert_allclose(b[:, 0], [4.0, 4.0, 1.5])
    np.testing.assert_allclose(b[:, 1], [2.0, 1.0, (1 * 1 + 2 * 4) / 5], rtol=1e-6)
    # the leave-one-out coefficient ignores the sample itself
    h, v = np.array([1.0, 3.0, 2.0, 7.0]), np.array([0.5, -1.0, 1.0, 2.0])
    c = np.asarray(jax.jit(optimal_coef)(h, v))
    for k in range(4):
        o = [j for j in range(4) if j != k]
        hb = np.mean(h[o])
        np.testing.assert_allclose(c[k], np.sum((h[o] - hb) * v[o]) / np.sum(v[o] ** 2), rtol=1e-6)


@_x64
def test_cv_formula_score_loo_coefficient():
    """cv(z, mean = m, coef = optimal, inner = score(samples = 3)) at the drawn z, written out by hand:
    value mean_k f_k - c_k (z_k - m); gradient mean_k [c_k (dm/dm) + (f_k - c_k (z_k - m)) grad log q(z_k)]."""
    prog = _compile(GAUSS, "z", "cv(z, mean = m, coef = optimal, inner = score(samples = 3))")
    module = prog.gradient_estimator({}).module
    m, s = jnp.float64(GP["m"]), jnp.float64(GP["s"])
    both = jax.jit(lambda p, k: (module.objective.sample(p, k), module.estimate(p, None, k)[0]))
    for key in _keys():
        value, g = both({"m": m, "s": s}, key)
        z = np.asarray(nd.Normal(m, s).sample(jax.random.fold_in(key, binder_salt("z")), (3,)))
        f, u = z ** 2 + z, z - float(m)
        c = []
        for k in range(3):
            o = [j for j in range(3) if j != k]
            c.append(np.sum((f[o] - f[o].mean()) * u[o]) / np.sum(u[o] ** 2))
        c = np.array(c)
        fp = f - c * u
        sm, ss = (z - m) / s ** 2, (z - m) ** 2 / s ** 3 - 1 / s
        np.testing.assert_allclose(float(value), fp.mean(), rtol=1e-12)
        np.testing.assert_allclose([float(g["m"]), float(g["s"])],
                                   [np.mean(c + fp * sm), np.mean(fp * ss)], rtol=1e-10)


@_x64
def test_cv_formula_reparam_fixed_coefficient():
    """cv(z, mean = m, coef = 1.5, inner = reparam(samples = 2)): z = m + s eps, f' = z^2 + z - 1.5 (z - m):
    d/dm = mean(2z + 1 - 1.5 (1 - 1)), d/ds = mean((2z + 1 - 1.5) eps)."""
    est = _compile(GAUSS, "z", "cv(z, mean = m, coef = 1.5, inner = reparam(samples = 2))").gradient_estimator({})
    m, s = jnp.float64(GP["m"]), jnp.float64(GP["s"])
    for key in _keys():
        g, _ = est.estimate({"m": m, "s": s}, None, key)
        z = np.asarray(nd.Normal(m, s).rsample(jax.random.fold_in(key, binder_salt("z")), (2,)))
        eps = (z - m) / s
        np.testing.assert_allclose([float(g["m"]), float(g["s"])],
                                   [np.mean(2 * z + 1), np.mean((2 * z + 1 - 1.5) * eps)], rtol=1e-10)


# ------------------------------------------------------------- refusals and warnings


def _err(src, spec, binder="z"):
    with pytest.raises(vrlang.VrError) as e:
        vrlang.compile(src, estimators={binder: spec})
    return e.value


def test_refusals():
    e = _err(TOY, "score(samples = 1, baseline = optimal)", "b")
    assert e.code == "E307" and "leave-one-out" in str(e) and "samples = 4" in e.hint
    e = _err(GAUSS, "cv(mean = m)")
    assert e.code == "E314" and "`g`" in str(e)
    e = _err(GAUSS, "cv(z)")
    assert e.code == "E314" and "mean = m" in str(e)
    e = _err(GAUSS, "cv(z, mean = m, inner = score(samples = 2))")
    assert e.code == "E314" and "samples >= 3" in str(e) and "samples = 4" in e.hint
    assert _err(GAUSS, "cv(z, mean = m)").code == "E314"  # default inner: reparam(samples = 1)
    e = _err(TOY, "cv(b, mean = sigmoid(t), coef = 1, inner = enum)", "b")
    assert e.code == "E314" and "exact" in str(e)
    assert _err(GAUSS, "cv(z, mean = m, coef = optimal(foo = 1), inner = reparam(samples = 4))").code == "E314"
    assert _err(GAUSS, "cv(z, m)").code == "E300"
    assert _err(GAUSS, "cv(z, g = z, mean = m)").code == "E300"
    assert _err(GAUSS, "cv(z, mean = m, coef = 1, alpha = 2)").code == "E301"
    # the expressions: real scalars, no binders; mean and coef must not depend on the binder
    e = _err(GAUSS, "cv(z, mean = m + z, coef = 1)")
    assert e.code == "E315" and "must not depend on `z`" in str(e) and "known mean" in str(e)
    assert (e.line, e.column) == (1, 14)  # points at `m + z` in the spec
    assert _err(GAUSS, "cv(z, mean = m, coef = z)").code == "E315"
    assert _err(GAUSS, "cv([z, z], mean = m, coef = 1)").code == "E315"
    assert _err(GAUSS, "cv(z > 0, mean = 0.5, coef = 1)").code == "E315"
    assert _err(GAUSS, "cv(E(w ~ Normal(z, 1): w), mean = m, coef = 1)").code == "E315"
    e = _err(GAUSS, "cv(z + q, mean = m, coef = 1)")
    assert e.code == "E264"  # an unknown name: the checker's own error
    vec = "param m: real[2] = 0\nminimize sum(E(z ~ Normal(m, 1): [z[0], z[1]]))"
    assert _err(vec, "score(samples = 4, baseline = optimal)").code == "E314"


def test_in_file_estimate_statement_and_explain_and_solve():
    src = (TOY.replace("= 0.3", "= 0") + "estimate b by cv(b, mean = sigmoid(t), coef = optimal, "
           "inner = score(samples = 4, baseline = optimal))\n")
    prog = vrlang.compile(src, solver="adam(lr = 0.1, steps = 300)")
    c = prog.choices["b"]
    assert c.unbiased and c.spec.name == "cv" and prog.warnings == []
    text = prog.explain()
    for piece in ("control variate", "g = b", "m = sigmoid(t)", "leave-one-out", "optimal baseline",
                  "unbiased  : yes"):
        assert piece in text, piece
    res = prog.solve(key=0)
    assert 1 / (1 + np.exp(-res.params["t"])) < 0.05  # f(1) > f(0): p(b = 1) -> 0


# ------------------------------------------------------------ array-valued bodies


VEC = """
param m: real = 0.5
param s: real in positive = 0.8
const a: real[2] = [1, 0]
const b: real[2] = [0, 0]
const c: real[2] = [0, 0]
minimize dot(a, E(x ~ Normal(m, s): [x^2 + x, exp(x / 2)])) + dot(b, E(y ~ Normal(m, s): [y^2 + y, exp(y / 2)]))
    + dot(c, E(w ~ Normal(m, s): [w^2 + w, exp(w / 2)]))
"""
SCALAR = """
param m: real = 0.5
param s: real in positive = 0.8
const ea: real = 1
const eb: real = 0
const ec: real = 0
const pa: int = 0
const pb: int = 0
const pc: int = 0
minimize ea * E(x ~ Normal(m, s): where(pa == 0, x^2 + x, exp(x / 2)))
    + eb * E(y ~ Normal(m, s): where(pb == 0, y^2 + y, exp(y / 2)))
    + ec * E(w ~ Normal(m, s): where(pc == 0, w^2 + w, exp(w / 2)))
"""
VEC_SPECS = {"x": "cv(x, mean = m, coef = optimal, inner = score(samples = 4, baseline = loo))",
             "y": "cv(y, mean = m, coef = optimal, inner = importance(proposal = Normal(0, 2), samples = 4))",
             "w": "cv(w, mean = m, coef = optimal, inner = score(samples = 4, baseline = group_norm))"}


@_x64
def test_array_body_gets_one_coefficient_per_component():
    """E(x ~ D: [f1, f2]) with cv equals, component by component, the scalar programs E(x ~ D: f_i):
    same samples (same binder names and keys), each component with its own coefficient --
    for the score (linear baseline), importance and group_norm (per-sample body) paths."""
    specs = {b: sp for b, sp in VEC_SPECS.items()}
    vec = vrlang.compile(VEC, x64=True, estimators=specs).gradient_estimator({}).module.objective
    sca = vrlang.compile(SCALAR, x64=True, estimators=specs).gradient_estimator({}).module.objective
    p = {k: jnp.float64(v) for k, v in GP.items()}

    def run(obj, consts):
        def one(cs, key):
            v, g = jax.value_and_grad(lambda q: obj.fn(q, obj.data, cs, key))(p)
            return jnp.concatenate([v[None], _flat(g)])
        keys = jax.random.split(jax.random.PRNGKey(9), 4)
        return jax.jit(jax.vmap(lambda cs: jax.vmap(lambda k: one(cs, k))(keys)))(consts)

    eye = jnp.eye(2)
    pick = [(i, j) for i in range(3) for j in range(2)]  # (binder, component)
    vc = {n: jnp.stack([eye[j] if i == bi else 0 * eye[0] for i, j in pick]) for bi, n in enumerate("abc")}
    sc = {**{f"e{n}": jnp.asarray([float(i == bi) for i, _ in pick]) for bi, n in enumerate("abc")},
          **{f"p{n}": jnp.asarray([j for _, j in pick], jnp.int32) for n in "abc"}}
    got, want = run(vec, vc), run(sca, sc)
    assert np.all(np.isfinite(got)) and np.abs(got).min() > 0
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.slow
@_x64
def test_several_expectations_example_unbiased():
    """examples/several_expectations.vr: four expectations from the same 64 importance samples with cv g = z."""
    obj = vrlang.compile(ROOT / "examples" / "several_expectations.vr", x64=True).gradient_estimator().module.objective
    reps = 1 << 15

    @jax.jit
    def run(key):
        def one(k):
            return jax.vmap(lambda s: obj.fn({}, obj.data, {**obj.consts, "sel": s}, k))(jnp.eye(4))
        return jax.vmap(one)(jax.random.split(key, reps))

    d = np.asarray(run(jax.random.PRNGKey(4)))
    mean, se = d.mean(0), d.std(0, ddof=1) / np.sqrt(reps)
    want = np.array([2.0, math.exp(0.625), 0.5 * math.erfc(1 / math.sqrt(2))])  # mu = sigma = 1
    assert np.all(0.01 * want > 5 * se[:3]), (se, want)
    assert np.all(np.abs(mean[:3] - want) <= 5 * se[:3]), (mean, want, se)


@_x64
def test_runtime_without_the_dsl():
    """The runtime Modules on a plain JAX body: ``body(z, j, expr)`` evaluates the handles ``g`` and ``mean``;
    the gradient of the surrogate equals the compiled estimator's at the same key."""
    from vrlang.estimators.control_variate import CVEstimate
    from vrlang.estimators.expectation import ScoreEstimate

    plan = CVEstimate(ScoreEstimate(4, "optimal"), "loo", g="g", mean="m")

    def estimate(p, key):
        def surrogate(q):
            def body(z, j=None, expr=None):
                return {None: z ** 2 + z, "g": z, "m": q["m"]}[expr] + 0 * z
            return plan.surrogate("Normal", nd.Normal(q["m"], q["s"]), body, key, lambda z: z)
        return jax.grad(surrogate)(p)

    prog = _compile(GAUSS, "z", "cv(z, mean = m, coef = optimal, inner = score(samples = 4, baseline = optimal))")
    est = prog.gradient_estimator({})
    p = {k: jnp.float64(v) for k, v in GP.items()}
    for key in _keys(3):
        got = jax.jit(estimate)(p, jax.random.fold_in(key, binder_salt("z")))
        want, _ = est.estimate(p, None, key)
        np.testing.assert_allclose([got["m"], got["s"]], [want["m"], want["s"]], rtol=1e-10)
