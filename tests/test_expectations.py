"""Expectations ``E(z ~ D: f)``: the estimators of LANGUAGE.md §4, tested statistically and by formula.

* unbiasedness: for every estimator and baseline, the mean of many independent draws of
  the compiled gradient estimator (vmapped over keys, float64) is within 5 standard
  errors of the exact gradient -- ``jax.grad`` of the expectation written out by hand
  (closed form or enumeration) -- per coordinate, and the test has the power to see a
  bias of 1% of the gradient (``0.01 |g| > 5 max SE``; the number of draws is chosen from
  a pilot run so that this holds);
* the estimators flagged biased (``mean``, ``group_norm``, self-normalised importance)
  really are: their measured expectation matches the biased value computed exactly and
  is far (> 5 SE) from the true gradient;
* single-draw formula tests: with a fixed key the score estimate equals f(z) grad log q(z)
  (and the RLOO / greedy formulas) computed by hand at the sample the compiler draws;
* refusals (E305, E307, E309, E391), the bias warning W301, and short solves.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as nd
import pytest

import vrlang
from vrlang.backend.lower import binder_salt
from vrlang.errors import VrEstimatorError

CHUNK = 1 << 16          # draws per jitted call
MAX_DRAWS = 1 << 24      # a cap on the draws of one test (the power check fails beyond it)

TOY = """
param t: real = 0.3
minimize E(b ~ Bernoulli(logits = t): (b - 0.45)^2)
"""
T0 = 0.3

GAUSS = """
param m: real = 0.5
param s: real in positive = 0.8
minimize E(z ~ Normal(m, s): z^2 + z)
"""
GP = {"m": 0.5, "s": 0.8}

POLICY = """
data r: real[k]
param theta: real[k] = 0
maximize E(a ~ Categorical(logits = theta): r[a])
"""
POLICY_EXTERN = """
param theta: real[5] = 0
extern reward(a: int) -> real
maximize E(a ~ Categorical(logits = theta): reward(a))
"""
R = np.array([1.0, 0.2, -0.5, 0.8, 0.0])
THETA = np.array([0.4, -0.3, 0.5, 0.0, -0.6])


def reward(a):
    return jnp.sin(1.3 * a) + 0.1 * a


# ----------------------------------------------------------------------------- helpers


def _x64(fn):
    @functools.wraps(fn)
    def wrapped(*a, **k):
        with jax.enable_x64(True):
            return fn(*a, **k)
    return wrapped


def _flat(tree):
    return jnp.concatenate([jnp.ravel(tree[k]) for k in sorted(tree)])


@_x64
def exact_grad(fn, params):
    """The gradient of a hand-written exact expectation, flattened (params in sorted order)."""
    p = {k: jnp.asarray(v, jnp.float64) for k, v in params.items()}
    return np.asarray(_flat(jax.grad(fn)(p)))


@_x64
def measure(prog, params, data=None, exact=None, seed=0, min_draws=CHUNK):
    """Mean and standard error of the compiled estimator over independent keys.

    A pilot chunk estimates the per-draw spread; the total number of draws is then chosen
    so that ``5 max SE < 0.01 |exact|`` with a margin (``exact`` given).
    """
    est = prog.gradient_estimator(data or {})
    p = {k: jnp.asarray(v, jnp.float64) for k, v in params.items()}
    state = est.init(p, 0)
    module = est.module

    @jax.jit
    def chunk(s):
        keys = jax.random.split(jax.random.PRNGKey(s), CHUNK)
        g = jax.vmap(lambda k: _flat(module.estimate(p, state, k)[0]))(keys)
        return jnp.sum(g, 0), jnp.sum(g * g, 0)

    s1, s2 = (np.asarray(x) for x in chunk(seed * 100003))
    n = CHUNK
    total = max(min_draws, CHUNK)
    if exact is not None:
        sd = np.sqrt(np.maximum(s2 / n - (s1 / n) ** 2, 0.0)).max()
        want = (5 * sd / (0.01 * np.linalg.norm(exact))) ** 2 * 1.5
        total = max(total, int(min(want, MAX_DRAWS)))
    for c in range(1, math.ceil(total / CHUNK)):
        a, b = chunk(seed * 100003 + c)
        s1, s2 = s1 + np.asarray(a), s2 + np.asarray(b)
        n += CHUNK
    mean = s1 / n
    se = np.sqrt(np.maximum(s2 / n - mean ** 2, 0.0) / (n - 1))
    return mean, se, n


def assert_unbiased(mean, se, exact, what=""):
    exact = np.asarray(exact)
    assert 0.01 * np.linalg.norm(exact) > 5 * se.max(), \
        f"{what}: no power: 5 SE = {5 * se.max():.3g} vs 1% of |g| = {0.01 * np.linalg.norm(exact):.3g}"
    z = np.abs(mean - exact) / np.maximum(se, 1e-300)
    assert np.all((np.abs(mean - exact) <= 5 * se) | (np.abs(mean - exact) < 1e-12)), \
        f"{what}: mean {mean} vs exact {exact} (SE {se}, |z| {z})"


def _toy_exact(p):
    q = jax.nn.sigmoid(p["t"])
    return (1 - q) * 0.45 ** 2 + q * 0.55 ** 2


def _gauss_exact(p):
    return p["m"] ** 2 + p["s"] ** 2 + p["m"]


def _policy_exact(r):
    return lambda p: jnp.sum(jax.nn.softmax(p["theta"]) * r)


# ------------------------------------------------------------------- unbiasedness


TOY_UNBIASED = [
    "score(samples = 1, baseline = none)",
    "score(samples = 4, baseline = loo)",
    "score(samples = 2, baseline = greedy)",
    "score(samples = 1, baseline = ema(0.9))",
    "enum",
    "importance(proposal = Bernoulli(probs = 0.5), samples = 1)",
    "importance(proposal = Bernoulli(probs = 0.3), samples = 3)",
]


@pytest.mark.parametrize("spec", TOY_UNBIASED)
def test_bernoulli_toy_unbiased(spec):
    prog = vrlang.compile(TOY, x64=True, estimators={"b": spec})
    assert prog.choices["b"].unbiased is True
    g = exact_grad(_toy_exact, {"t": T0})
    mean, se, n = measure(prog, {"t": T0}, exact=g)
    assert_unbiased(mean, se, g, f"{spec} ({n} draws)")


GAUSS_UNBIASED = [
    "reparam",
    "reparam(samples = 3)",
    "score(samples = 1)",
    "score(samples = 4, baseline = loo)",
    "score(samples = 2, baseline = greedy)",
    "score(samples = 2, baseline = ema(decay = 0.5))",
    "importance(proposal = Normal(0, 2), samples = 1)",
]


@pytest.mark.parametrize("spec", GAUSS_UNBIASED)
def test_gaussian_unbiased(spec):
    prog = vrlang.compile(GAUSS, x64=True, estimators={"z": spec})
    assert prog.choices["z"].unbiased is True
    g = exact_grad(_gauss_exact, GP)
    np.testing.assert_allclose(g, [2 * GP["m"] + 1, 2 * GP["s"]])  # (m, s): the closed form
    mean, se, n = measure(prog, GP, exact=g)
    assert_unbiased(mean, se, g, f"{spec} ({n} draws)")


def test_defaults():
    """reparam where the distribution allows it, else score(samples = 1, baseline = none)."""
    c = vrlang.compile(GAUSS).choices["z"]
    assert c.spec.name == "reparam" and c.plan.samples == 1
    c = vrlang.compile(TOY).choices["b"]
    assert c.spec.name == "score" and c.unbiased and (c.plan.samples, c.plan.baseline) == (1, "none")


POLICY_UNBIASED = [
    ("table", "score(samples = 1)"),
    ("table", "score(samples = 4, baseline = loo)"),
    ("table", "score(samples = 2, baseline = greedy)"),
    ("table", "enum"),
    ("table", "importance(proposal = Categorical(probs = [0.2, 0.2, 0.2, 0.2, 0.2]), samples = 2)"),
    ("extern", "score(samples = 4, baseline = loo)"),
    ("extern", "enum"),
]


@pytest.mark.parametrize("reward_from,spec", POLICY_UNBIASED)
def test_categorical_policy_unbiased(reward_from, spec):
    if reward_from == "table":
        prog = vrlang.compile(POLICY, x64=True, estimators={"a": spec})
        data, r = {"r": R}, R
    else:
        prog = vrlang.compile(POLICY_EXTERN, x64=True, estimators={"a": spec},
                              externs={"reward": reward})
        data = {}
        with jax.enable_x64(True):
            r = np.asarray(reward(jnp.arange(5.0)))
    assert prog.choices["a"].unbiased is True
    g = exact_grad(_policy_exact(r), {"theta": THETA})
    mean, se, n = measure(prog, {"theta": THETA}, data, exact=g)
    assert_unbiased(mean, se, g, f"{reward_from} {spec} ({n} draws)")


# ----------------------------------------------------------------- composition


PER_DATUM = """
data X: real[n]
data y: real[n]
param w: real = 0.3
minimize mean(i in 0..n: E(z ~ Normal(X[i] * w, 1): (z - y[i])^2))
"""


@pytest.mark.parametrize("specs", [
    {"z": "reparam"},
    {"z": "score(samples = 4, baseline = loo)", "i": "sgd(batch = 2)"},
])
def test_expectation_inside_finite_sum(specs):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=7), rng.normal(size=7)
    prog = vrlang.compile(PER_DATUM, x64=True, estimators=specs)
    # E (z - y)^2 = (X w - y)^2 + 1, so the gradient is mean 2 X (X w - y)
    g = exact_grad(lambda p: jnp.mean((X * p["w"] - y) ** 2 + 1), {"w": 0.3})
    np.testing.assert_allclose(g, [np.mean(2 * X * (X * 0.3 - y))])
    mean, se, n = measure(prog, {"w": 0.3}, {"X": X, "y": y}, exact=g)
    assert_unbiased(mean, se, g, f"{specs} ({n} draws)")


NESTED_SCORE_OUTER = """
param t: real = 0.3
param m: real = 0.2
minimize E(b ~ Bernoulli(logits = t): E(z ~ Normal(m + b, 1): z^2))
"""
NESTED_ENUM_INNER = """
param t: real = -0.4
param m: real = 0.2
minimize E(z ~ Normal(m, 1): E(b ~ Bernoulli(logits = t): (b - z)^2))
"""


def _nested1(p):  # E_b[(m + b)^2 + 1]
    q = jax.nn.sigmoid(p["t"])
    return (1 - q) * (p["m"] ** 2 + 1) + q * ((p["m"] + 1) ** 2 + 1)


def _nested2(p):  # E_z[q (1 - z)^2 + (1 - q) z^2]
    q = jax.nn.sigmoid(p["t"])
    return q * ((1 - p["m"]) ** 2 + 1) + (1 - q) * (p["m"] ** 2 + 1)


@pytest.mark.parametrize("src,specs,exact,params", [
    (NESTED_SCORE_OUTER, {"b": "score(samples = 4, baseline = loo)", "z": "reparam"}, _nested1,
     {"t": 0.3, "m": 0.2}),
    (NESTED_ENUM_INNER, {"z": "reparam(samples = 2)", "b": "enum"}, _nested2, {"t": -0.4, "m": -1.0}),
    (NESTED_ENUM_INNER, {"z": "reparam(samples = 2)", "b": "score(samples = 2, baseline = greedy)"},
     _nested2, {"t": -0.4, "m": -1.0}),
])
def test_nested_expectations(src, specs, exact, params):
    prog = vrlang.compile(src, x64=True, estimators=specs)
    g = exact_grad(exact, params)
    mean, se, n = measure(prog, params, exact=g)
    assert_unbiased(mean, se, g, f"{specs} ({n} draws)")


@_x64
def test_nested_samples_are_independent():
    """Each outer sample gets its own inner noise: the variance falls like 1/K in the outer samples.

    E_z E_w w^2 with z ~ N(m, 1), w ~ N(z, 1), both pathwise, K outer samples and one inner:
    the gradient 2 mean_k (z_k + eps_k) has variance 4 * 2 / K (it would be 4 (1/K + 1) if
    the K outer samples shared one inner draw).
    """
    src = "param m: real = 0.5\nminimize E(z ~ Normal(m, 1): E(w ~ Normal(z, 1): w^2))"
    prog = vrlang.compile(src, x64=True, estimators={"z": "reparam(samples = 16)"})
    est = prog.gradient_estimator({})
    p = {"m": jnp.asarray(0.5)}
    state = est.init(p, 0)
    keys = jax.random.split(jax.random.PRNGKey(3), 20000)
    g = np.asarray(jax.jit(jax.vmap(lambda k: est.module.estimate(p, state, k)[0]["m"]))(keys))
    assert abs(g.mean() - 1.0) < 5 * g.std() / np.sqrt(len(g))
    assert abs(g.var() - 0.5) < 0.05


TWO = """
param t: real = 0.3
param m: real = 0.5
param s: real in positive = 0.8
minimize E(b ~ Bernoulli(logits = t): (b - 0.45)^2) + E(z ~ Normal(m, s): z^2 + z)
"""


@pytest.mark.parametrize("specs", [
    {"b": "score(samples = 3, baseline = loo)", "z": "reparam(samples = 3)"},
    {"b": "enum", "z": "score(samples = 2, baseline = greedy)"},
])
def test_two_expectations_with_different_estimators(specs):
    params = {"t": T0, **GP}
    prog = vrlang.compile(TWO, x64=True, estimators=specs)
    g = exact_grad(lambda p: _toy_exact(p) + _gauss_exact(p), params)
    mean, se, n = measure(prog, params, exact=g)
    assert_unbiased(mean, se, g, f"{specs} ({n} draws)")


# ------------------------------------------------------------ biased, and honest


def _biased_checks(prog, binder):
    c = prog.choices[binder]
    assert c.unbiased is False
    text = prog.explain()
    assert "unbiased  : NO" in text and "BIASED" in text


def _assert_biased(mean, se, expected, true):
    """The measured mean matches the (biased) expectation and is far from the true gradient."""
    assert np.all(np.abs(mean - expected) <= 5 * se), (mean, expected, se)
    assert np.all(np.abs(mean - true) > 5 * se), (mean, true, se)


def test_mean_baseline_is_biased_by_k_minus_1_over_k():
    k = 4
    prog = vrlang.compile(TOY, x64=True, estimators={"b": f"score(samples = {k}, baseline = mean)"})
    _biased_checks(prog, "b")
    assert "(k-1)/k = 0.75" in prog.explain()
    g = exact_grad(_toy_exact, {"t": T0})
    mean, se, _ = measure(prog, {"t": T0}, exact=g)
    assert 0.01 * abs(g[0]) > 5 * se.max()
    _assert_biased(mean, se, (k - 1) / k * g, g)


@_x64
def _score_expectation_k2(adv_fn, t):
    """E over (b1, b2) ~ Bernoulli(sigmoid t)^2 of mean_k adv_k (b_k - sigmoid t), by enumeration."""
    q = float(jax.nn.sigmoid(t))
    total = 0.0
    for b1 in (0, 1):
        for b2 in (0, 1):
            b = np.array([b1, b2], float)
            f = (b - 0.45) ** 2
            prob = (q if b1 else 1 - q) * (q if b2 else 1 - q)
            total += prob * np.mean(adv_fn(f) * (b - q))
    return np.array([total])


def test_group_norm_baseline_is_biased():
    prog = vrlang.compile(TOY, x64=True, estimators={"b": "score(samples = 2, baseline = group_norm)"})
    _biased_checks(prog, "b")
    g = exact_grad(_toy_exact, {"t": T0})
    expected = _score_expectation_k2(lambda f: (f - f.mean()) / (f.std() + 1e-8), T0)
    # sanity of the enumeration: with the leave-one-out baseline it gives the true gradient
    np.testing.assert_allclose(_score_expectation_k2(lambda f: f - f[::-1], T0), g, rtol=1e-12)
    mean, se, _ = measure(prog, {"t": T0})
    _assert_biased(mean, se, expected, g)


def test_self_normalized_importance_is_biased():
    prog = vrlang.compile(TOY, x64=True, estimators={
        "b": "importance(proposal = Bernoulli(probs = 0.5), samples = 2, self_normalized = true)"})
    _biased_checks(prog, "b")
    g = exact_grad(_toy_exact, {"t": T0})

    # the expected self-normalised gradient, by enumeration of the two proposal draws
    def sn(t, z):
        q = jax.nn.sigmoid(t)
        w = jnp.where(z == 1, q, 1 - q) / 0.5
        return jnp.sum(w * (z - 0.45) ** 2) / jnp.sum(w)

    with jax.enable_x64(True):
        expected = sum(0.25 * jax.grad(sn)(jnp.float64(T0), jnp.array(z, jnp.float64))
                       for z in ([0, 0], [0, 1], [1, 0], [1, 1]))
    mean, se, _ = measure(prog, {"t": T0})
    _assert_biased(mean, se, np.array([float(expected)]), g)


# ------------------------------------------------------------- formula tests


def _step_keys(n=24):
    return jax.random.split(jax.random.PRNGKey(11), n)


@_x64
def test_score_single_sample_formula_bernoulli():
    """samples = 1: the estimate is f(b) * d/dt log q(b) = (b - 0.45)^2 (b - sigmoid t) at the drawn b."""
    prog = vrlang.compile(TOY, x64=True, estimators={"b": "score(samples = 1)"})
    est = prog.gradient_estimator({})
    t = jnp.float64(T0)
    seen = set()
    for key in _step_keys():
        g, _ = est.estimate({"t": t}, None, key)
        kb = jax.random.fold_in(key, binder_salt("b"))
        b = nd.Bernoulli(logits=t).sample(kb, (1,))[0].astype(jnp.float64)
        seen.add(int(b))
        want = (b - 0.45) ** 2 * (b - jax.nn.sigmoid(t))
        np.testing.assert_allclose(float(g["t"]), float(want), rtol=1e-12, atol=1e-15)
    assert seen == {0, 1}


@_x64
def test_score_single_sample_formula_gaussian():
    """d/dm log q = (z - m)/s^2, d/ds log q = (z - m)^2/s^3 - 1/s; f = z^2 + z has no direct dependence."""
    prog = vrlang.compile(GAUSS, x64=True, estimators={"z": "score(samples = 1)"})
    est = prog.gradient_estimator({})
    m, s = jnp.float64(GP["m"]), jnp.float64(GP["s"])
    for key in _step_keys(8):
        g, _ = est.estimate({"m": m, "s": s}, None, key)
        z = nd.Normal(m, s).sample(jax.random.fold_in(key, binder_salt("z")), (1,))[0]
        f = z ** 2 + z
        np.testing.assert_allclose([float(g["m"]), float(g["s"])],
                                   [f * (z - m) / s ** 2, f * ((z - m) ** 2 / s ** 3 - 1 / s)], rtol=1e-10)


@_x64
def test_rloo_k2_formula():
    """k = 2, leave-one-out: (1/2) [(f1 - f2) grad log q(z1) + (f2 - f1) grad log q(z2)] = (f1 - f2)(s1 - s2)/2."""
    prog = vrlang.compile(GAUSS, x64=True, estimators={"z": "score(samples = 2, baseline = loo)"})
    est = prog.gradient_estimator({})
    m, s = jnp.float64(GP["m"]), jnp.float64(GP["s"])
    for key in _step_keys(8):
        g, _ = est.estimate({"m": m, "s": s}, None, key)
        z = nd.Normal(m, s).sample(jax.random.fold_in(key, binder_salt("z")), (2,))
        f = z ** 2 + z
        sm, ss = (z - m) / s ** 2, (z - m) ** 2 / s ** 3 - 1 / s
        want = [(f[0] - f[1]) * (sm[0] - sm[1]) / 2, (f[0] - f[1]) * (ss[0] - ss[1]) / 2]
        np.testing.assert_allclose([float(g["m"]), float(g["s"])], want, rtol=1e-10)


@_x64
def test_rloo_k2_and_greedy_formula_bernoulli():
    t = jnp.float64(T0)
    q = jax.nn.sigmoid(t)
    ests = {b: vrlang.compile(TOY, x64=True, estimators={"b": f"score(samples = 2, baseline = {b})"})
            .gradient_estimator({}) for b in ("loo", "greedy")}
    nonzero = 0
    for key in _step_keys():
        b = nd.Bernoulli(logits=t).sample(jax.random.fold_in(key, binder_salt("b")), (2,)).astype(jnp.float64)
        f, sc = (b - 0.45) ** 2, b - q
        g, _ = ests["loo"].estimate({"t": t}, None, key)
        np.testing.assert_allclose(float(g["t"]), float((f[0] - f[1]) * (sc[0] - sc[1]) / 2), atol=1e-15)
        nonzero += bool(b[0] != b[1])
        g, _ = ests["greedy"].estimate({"t": t}, None, key)
        fmode = (1.0 - 0.45) ** 2  # sigmoid(0.3) > 1/2: the mode is b = 1
        np.testing.assert_allclose(float(g["t"]), float(jnp.mean((f - fmode) * sc)), atol=1e-15)
    assert nonzero > 0


# ------------------------------------------------------------- refusals and warnings


def _err(src, specs):
    with pytest.raises(VrEstimatorError) as e:
        vrlang.compile(src, estimators=specs)
    return e.value


def test_refusals():
    e = _err(TOY, {"b": "reparam"})
    assert e.code == "E305" and "pathwise" in str(e) and e.hint and "score" in e.hint and "enum" in e.hint
    assert _err(GAUSS, {"z": "enum"}).code == "E309"
    e = _err(TOY, {"b": "score(samples = 1, baseline = loo)"})
    assert e.code == "E307" and "samples = 4" in e.hint
    assert _err(TOY, {"b": "score(samples = 4, baseline = ema(1.5))"}).code == "E306"
    assert _err(TOY, {"b": "score(samples = 4, baseline = ema(rate = 0.9))"}).code == "E306"
    assert _err(TOY, {"b": "score(samples = 4, baseline = loo(2))"}).code == "E306"
    assert _err(TOY, {"b": "score(samples = 4, baseline = median)"}).code == "E306"
    assert _err(TOY, {"b": "importance(proposal = Normal(0, 1))"}).code == "E313"


def test_bias_warning_for_sampled_expectation_inside_log():
    src = TOY.replace("minimize E(", "minimize log(E(").rstrip() + ")\n"
    w = vrlang.compile(src, estimators={"b": "score(samples = 2)"}).warnings
    assert [x.code for x in w] == ["W301"]
    assert "`b`" in str(w[0]) and "log" in str(w[0]) and "enum" in w[0].hint
    assert vrlang.compile(src, estimators={"b": "enum"}).warnings == []
    # linear uses of a sampled expectation are fine
    assert vrlang.compile(TOY.replace("minimize E(", "minimize 3 * E("), estimators={"b": "score"}).warnings == []


# ------------------------------------------------------------------------ solve


@_x64
def test_ema_baseline_state_formula_and_refusal():
    """The ema state starts at the exact evaluation's mean of f and moves by b <- d b + (1 - d) mean_k f;
    the single-draw gradient is (f(z) - b) d/dt log q(z).  With svrg on a surrounding sum: E398."""
    prog = vrlang.compile(TOY, x64=True, estimators={"b": "score(samples = 1, baseline = ema(decay = 0.75))"})
    est = prog.gradient_estimator()
    p = {"t": jnp.asarray(T0)}
    state = est.init(p, 0)
    q = float(jax.nn.sigmoid(T0))
    # 256 fixed-key evaluation samples: their mean of f lies between f(0) and f(1)
    assert 0.45 ** 2 < float(state["b"]) < 0.55 ** 2
    state = {"b": jnp.asarray(0.25)}
    for seed in range(6):
        key = jax.random.PRNGKey(seed)
        g, new = est.module.estimate(p, state, key)
        z = float(jax.random.bernoulli(jax.random.fold_in(key, binder_salt("b")), q, (1,))[0])
        f = (z - 0.45) ** 2
        dlogq = (1 - q) if z == 1 else -q
        np.testing.assert_allclose(float(g["t"]), (f - 0.25) * dlogq, rtol=1e-10)
        np.testing.assert_allclose(float(new["b"]), 0.75 * 0.25 + 0.25 * f, rtol=1e-12)
    src = "data x: real[n]\nparam t: real = 0\nminimize mean(i in 0..n: E(b ~ Bernoulli(logits = t + x[i]): b))\n"
    with pytest.raises(VrEstimatorError) as e:
        vrlang.compile(src, estimators={"b": "score(baseline = ema)", "i": "svrg(batch = 2)"}).solve(
            {"x": np.zeros(4)})
    assert e.value.code == "E398"


@pytest.mark.parametrize("spec", ["enum", "score(samples = 4, baseline = loo)", "score(baseline = ema(0.9))"])
def test_solve_bernoulli_toy(spec):
    """f(1) = 0.3025 > f(0) = 0.2025: minimising drives p(b = 1) to 0; maximising, to 1."""
    src = TOY.replace("= 0.3", "= 0")
    res = vrlang.compile(src, estimators={"b": spec}, solver="adam(lr = 0.1, steps = 300)").solve(key=0)
    assert res.params["t"] < -3 and 1 / (1 + np.exp(-res.params["t"])) < 0.05
    if spec == "enum":
        res = vrlang.compile(src.replace("minimize", "maximize"), estimators={"b": spec},
                             solver="adam(lr = 0.1, steps = 300)").solve(key=0)
        assert res.params["t"] > 3


@_x64
def test_bernoulli_logits_at_zero():
    """The default initial value 0 is where numpyro's BernoulliLogits.log_prob has a wrong derivative
    (kinks of clip/abs); the estimators use a smooth log-probability."""
    g0 = 0.1 * 0.25  # 0.1 sigmoid'(0)
    prog = vrlang.compile(TOY, x64=True, estimators={"b": "enum"})
    np.testing.assert_allclose(prog.grad({"t": 0.0})["t"], g0, rtol=1e-12)
    est = vrlang.compile(TOY, x64=True, estimators={"b": "score(samples = 1)"}).gradient_estimator({})
    for key in _step_keys(8):
        g, _ = est.estimate({"t": 0.0}, None, key)
        b = nd.Bernoulli(logits=0.0).sample(jax.random.fold_in(key, binder_salt("b")), (1,))[0]
        np.testing.assert_allclose(float(g["t"]), (b - 0.45) ** 2 * (b - 0.5), rtol=1e-12)
    est = vrlang.compile(TOY, x64=True, estimators={
        "b": "importance(proposal = Bernoulli(probs = 0.5), samples = 1)"}).gradient_estimator({})
    for key in _step_keys(8):
        g, _ = est.estimate({"t": 0.0}, None, key)
        b = nd.Bernoulli(probs=0.5).sample(jax.random.fold_in(key, binder_salt("b")), (1,))[0]
        np.testing.assert_allclose(float(g["t"]), (b - 0.45) ** 2 * (b - 0.5), rtol=1e-12)  # w = 1 at t = 0
