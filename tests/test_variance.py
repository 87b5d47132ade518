"""``Program.estimator_variance`` / ``vrlang variance``: the reported variances, means and costs.

* Bernoulli toy ``E(b ~ Bernoulli(logits = t): (b - 0.45)^2)``: the ``enum`` row's mean is
  the exact gradient (``jax.grad`` of the expectation written by hand) with variance 0;
  the ``score`` rows reproduce, to rounding, an independent hand-written JAX computation
  of the same estimators on the same keys (the program's key scheme); the plain
  REINFORCE variance matches its closed form within 5 standard deviations of the sample
  variance (computed exactly from the estimator's distribution); ``loo`` beats ``none``;
  a flagged-biased baseline is reported biased and its |z| against the exact gradient is
  large (the z column has power), while the unbiased rows stay below 5.
* Gaussian ``E(z ~ Normal(m, s): z^2 + z)``: the pathwise variance per param matches the
  closed form (4 s^2 for m, (2m + 1)^2 + 8 s^2 for s); ``enum`` is skipped with the reason.
* A sampled sum: the minibatch variance (batch 1, uniform and importance sampling)
  matches the finite-population formula.
* The CLI: the table, ``--json``, and errors (no random/sampled binder, unknown binder,
  bad --draws) reported without a traceback.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as nd
import pytest

import vrlang
from vrlang import cli
from vrlang.backend.lower import binder_salt
from vrlang.errors import VrEstimatorError
from vrlang.variance import chunking

ROOT = Path(__file__).resolve().parent.parent
TOY_FILE = str(ROOT / "examples" / "bernoulli_toy.vr")

T0 = 0.3
K = 4
TOY = f"""
param t: real = {T0}
minimize E(b ~ Bernoulli(logits = t): (b - 0.45)^2)
estimate b by score(samples = {K})
"""
F1, F0 = 0.55 ** 2, 0.45 ** 2
DRAWS = 8192


@pytest.fixture(scope="module")
def toy():
    prog = vrlang.compile(TOY, x64=True)
    return prog.estimator_variance(draws=DRAWS, key=3, extra={"b": [f"score(samples = {K}, baseline = mean)"]})


def _exact_toy_grad(t):
    with jax.enable_x64(True):
        f = lambda t: (1 - jax.nn.sigmoid(t)) * F0 + jax.nn.sigmoid(t) * F1  # noqa: E731
        return float(jax.grad(f)(jnp.float64(t)))


def _reinforce_moments(k: int, q: float):
    """Variance and 4th central moment of the k-sample REINFORCE estimate on the toy (exact, by enumeration)."""
    a, c = F1 * (1 - q), -F0 * q  # f(b) d/dt log q(b) at b = 1 and b = 0
    vals = np.array([(j * a + (k - j) * c) / k for j in range(k + 1)])
    probs = np.array([math.comb(k, j) * q ** j * (1 - q) ** (k - j) for j in range(k + 1)])
    mu = probs @ vals
    return probs @ (vals - mu) ** 2, probs @ (vals - mu) ** 4


def _sd_of_sample_variance(sigma2, mu4, n):
    return math.sqrt(mu4 / n - sigma2 ** 2 * (n - 3) / (n * (n - 1)))


def _hand_scores(t: float, n: int, key: int, baseline: str) -> np.ndarray:
    """The k-sample score estimates on the program's keys, written independently of the compiler."""
    with jax.enable_x64(True):
        keys = jax.random.split(jax.random.PRNGKey(key), n)
        t = jnp.float64(t)

        def one(kk):
            z = nd.Bernoulli(logits=t).sample(jax.random.fold_in(kk, binder_salt("b")), (K,))
            f = (z - 0.45) ** 2
            dlogq = z - jax.nn.sigmoid(t)  # d/dt log Bernoulli(z; sigmoid t)
            b = (jnp.sum(f) - f) / (K - 1) if baseline == "loo" else 0.0
            return jnp.mean((f - b) * dlogq)

        return np.asarray(jax.vmap(one)(keys))


# ----------------------------------------------------------------------------- Bernoulli toy


def test_toy_rows_and_skips(toy):
    ests = [r.estimator for r in toy.binder_rows("b")]
    assert ests[0] == f"score(samples = {K})" and toy.rows[0].chosen
    for want in (f"score(samples = {K}, baseline = loo)", f"score(samples = {K}, baseline = greedy)", "enum",
                 f"score(samples = {K}, baseline = mean)"):
        assert want in ests
    reparam = toy.row("b", f"reparam(samples = {K})")
    assert reparam.status == "skipped" and "no reparameterised" in reparam.reason
    assert toy.row("b", "enum").cost == 2 and toy.row("b").cost == K
    assert toy.row("b", f"score(samples = {K}, baseline = greedy)").cost == K + 1
    C, m = chunking(DRAWS, 1)
    assert toy.draws == C * m >= DRAWS


def test_toy_enum_is_exact_with_zero_variance(toy):
    g = _exact_toy_grad(T0)
    np.testing.assert_allclose(toy.exact["t"], g, rtol=1e-12)
    r = toy.row("b", "enum")
    assert r.unbiased and r.variance == 0.0 and r.variance_se == 0.0
    np.testing.assert_allclose(r.mean["t"], g, rtol=1e-12)
    assert r.bias_z == 0.0


def test_toy_score_matches_hand_written_jax_on_the_same_keys(toy):
    for baseline, est in (("none", f"score(samples = {K})"), ("loo", f"score(samples = {K}, baseline = loo)")):
        g = _hand_scores(T0, toy.draws, 3, baseline)
        r = toy.row("b", est)
        np.testing.assert_allclose(r.mean["t"], g.mean(), rtol=1e-9, err_msg=baseline)
        np.testing.assert_allclose(r.variance, g.var(ddof=1), rtol=1e-9, err_msg=baseline)


def test_toy_reinforce_variance_matches_closed_form(toy):
    q = 1 / (1 + math.exp(-T0))
    sigma2, mu4 = _reinforce_moments(K, q)
    sd = _sd_of_sample_variance(sigma2, mu4, toy.draws)
    r = toy.row("b", f"score(samples = {K})")
    assert abs(r.variance - sigma2) < 5 * sd, (r.variance, sigma2, sd)
    # power: the single-sample variance (K times larger) would be rejected
    s1, _ = _reinforce_moments(1, q)
    assert abs(r.variance - s1) > 20 * sd
    # the batch-means standard error is of the right size (its own spread is ~20% with 16 chunks)
    assert 0.4 * sd < r.variance_se < 2.5 * sd


def test_toy_loo_beats_none_and_bias_is_visible(toy):
    none, loo = toy.row("b", f"score(samples = {K})"), toy.row("b", f"score(samples = {K}, baseline = loo)")
    assert loo.variance + 5 * math.hypot(loo.variance_se, none.variance_se) < none.variance
    for r in toy.binder_rows("b"):
        if r.measured and r.unbiased:
            assert r.bias_z < 5, (r.estimator, r.bias_z)
    biased = toy.row("b", f"score(samples = {K}, baseline = mean)")
    assert biased.unbiased is False
    assert biased.bias_z > 10  # expected gradient (K-1)/K of the true one: the z column sees it


def test_toy_json_is_strict(toy):
    d = json.loads(json.dumps(toy.to_dict(), allow_nan=False))
    assert d["draws"] == toy.draws and d["exact_grad"]["t"] == pytest.approx(_exact_toy_grad(T0))
    row = next(r for r in d["rows"] if r["estimator"] == "enum")
    assert row["variance"] == 0 and row["cost"] == 2 and row["unbiased"] is True
    skipped = next(r for r in d["rows"] if r["status"] == "skipped")
    assert "reason" in skipped and "variance" not in skipped


def test_nonlinear_composition_is_reported_biased():
    prog = vrlang.compile("param t: real = 0.3\nminimize log(E(b ~ Bernoulli(logits = t): (b - 0.45)^2 + 1))\n"
                          "estimate b by enum")
    rep = prog.estimator_variance(draws=64, alternatives=False, extra={"b": ["score(samples = 4, baseline = loo)"]})
    assert rep.row("b").unbiased is True
    loo = rep.row("b", "score(samples = 4, baseline = loo)")
    assert loo.unbiased is False and "nonlinear `log`" in loo.note


# ----------------------------------------------------------------------------- Gaussian


def test_gaussian_reparam_variance_per_param():
    m, s = 0.5, 0.8
    prog = vrlang.compile("param m: real = 0\nparam s: real in positive = 1\nminimize E(z ~ Normal(m, s): z^2 + z)\n"
                          "estimate z by reparam(samples = 1)", x64=True)
    rep = prog.estimator_variance(params={"m": m, "s": s}, draws=4096, alternatives=False,
                                  extra={"z": ["enum", "score(samples = 2, baseline = loo)"]})
    r = rep.row("z")
    assert r.chosen and r.estimator == "reparam(samples = 1)"
    want = {"m": 4 * s ** 2, "s": (2 * m + 1) ** 2 + 8 * s ** 2}
    for k, v in want.items():
        assert abs(r.param_variance[k] - v) < 5 * r.param_variance_se[k], (k, r.param_variance[k], v)
    assert r.variance == pytest.approx(sum(r.param_variance.values()))
    assert rep.exact is None and r.bias_z is None  # no enum for a Normal: no exact reference
    enum = rep.row("z", "enum")
    assert enum.status == "skipped" and "finite support" in enum.reason
    assert rep.row("z", "score(samples = 2, baseline = loo)").measured


# ----------------------------------------------------------------------------- sampled sum


def test_minibatch_variance_matches_finite_population_formula():
    rng = np.random.default_rng(0)
    n, d = 12, 3
    X = rng.normal(size=(n, d)) * rng.uniform(0.2, 3.0, size=(n, 1))
    y = rng.normal(size=n)
    w = rng.normal(size=d)
    src = ("data X: real[n, d]\ndata y: real[n]\nparam w: real[d] = 0\n"
           "minimize mean(i in 0..n: (dot(X[i], w) - y[i])^2) / 2 + 0.1 * sumsq(w)\n"
           "estimate i by sgd(batch = 1, sampling = weights(norm(X[i])))")
    rep = vrlang.compile(src, x64=True).estimator_variance(data={"X": X, "y": y}, params={"w": w}, draws=4096,
                                                           extra={"i": ["sgd(batch = 2)"]})
    G = (X @ w - y)[:, None] * X + 0.2 * w  # per-item gradients h_i
    g = G.mean(0)
    np.testing.assert_allclose(rep.exact["w"], g, rtol=1e-10)
    wts = np.linalg.norm(X, axis=1)
    p = 0.9 * wts / wts.sum() + 0.1 / n
    reg = 0.2 * w
    want = {"sgd(batch = 1)": np.mean(np.sum((G - g) ** 2, 1)),
            "sgd(batch = 2)": np.mean(np.sum((G - g) ** 2, 1)) / 2,
            "sgd(batch = 1, sampling = weights(norm(X[i])))":
                np.sum(p * np.sum(((G - reg) / (n * p[:, None]) + reg - g) ** 2, 1))}
    assert want["sgd(batch = 1, sampling = weights(norm(X[i])))"] < want["sgd(batch = 1)"]
    for est, v in want.items():
        r = rep.row("i", est)
        assert r.cost == (2 if "batch = 2" in est else 1) and r.unbiased and r.bias_z < 5
        assert abs(r.variance - v) < 5 * r.variance_se, (est, r.variance, v, r.variance_se)
    assert rep.row("i").estimator.startswith("sgd(batch = 1, sampling")


# ----------------------------------------------------------------------------- errors


def test_errors():
    with pytest.raises(VrEstimatorError) as e:
        vrlang.compile("param w: real = 0\nminimize (w - 1)^2").estimator_variance(draws=8)
    assert e.value.code == "E397" and "nothing to measure" in e.value.message
    full = vrlang.compile("data x: real[n]\nparam w: real = 0\nminimize mean(i in 0..n: (x[i] - w)^2)")
    with pytest.raises(VrEstimatorError) as e:
        full.estimator_variance(data={"x": np.arange(4.0)}, draws=8)
    assert e.value.code == "E397" and "sgd(batch = 16)" in e.value.hint
    rep = full.estimator_variance(data={"x": np.arange(4.0)}, draws=8, extra={"i": ["sgd(batch = 1)"]})
    assert [r.estimator for r in rep.rows] == ["sgd(batch = 1)"] and rep.rows[0].variance > 0
    prog = vrlang.compile(TOY)
    with pytest.raises(VrEstimatorError) as e:
        prog.estimator_variance(draws=8, binders=["nope"])
    assert e.value.code == "E250"
    with pytest.raises(ValueError):
        prog.estimator_variance(draws=2)
    rep = prog.estimator_variance(draws=8, alternatives=False, extra={"b": ["score(samples = 1, baseline = loo)",
                                                                            "bogus(x = 1)"]})
    assert [r.status for r in rep.rows] == ["measured", "skipped", "skipped"]
    assert "samples >= 2" in rep.rows[1].reason and "unknown estimator" in rep.rows[2].reason


# ----------------------------------------------------------------------------- CLI


def test_cli_table_and_json(capsys):
    assert cli.main(["variance", TOY_FILE, "--draws", "64", "--no-alternatives", "--alt", "b=reparam"]) == 0
    out = capsys.readouterr().out
    for word in ("score(samples = 4, baseline = loo) *", "variance", "skipped", "reparameterised"):
        assert word in out, word
    assert cli.main(["variance", TOY_FILE, "--draws", "32", "--json", "--no-alternatives", "--alt",
                     "b=enum", "--seed", "5"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert [r["estimator"] for r in d["rows"]] == ["score(samples = 4, baseline = loo)", "enum"]
    assert d["key"] == 5 and d["settings"]["draws"] == 32 and d["rows"][1]["variance"] == 0


def test_cli_errors_are_not_tracebacks(tmp_path, capsys):
    f = tmp_path / "det.vr"
    f.write_text("param w: real = 0\nminimize (w - 1)^2\n")
    assert cli.main(["variance", str(f), "--draws", "8"]) == 1
    err = capsys.readouterr().err
    assert "error[E397]" in err and "Traceback" not in err
    assert cli.main(["variance", TOY_FILE, "--binder", "zz", "--draws", "8"]) == 1
    assert "error[E250]" in capsys.readouterr().err
    assert cli.main(["variance", TOY_FILE, "--draws", "2"]) == 2
    assert "at least 4" in capsys.readouterr().err
