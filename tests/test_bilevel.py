"""Decision binders: hypergradients through argmin/argmax and value functions min/max.

Reference: ridge regression, whose solution map has a closed form,
w(lam) = (Xtr'Xtr/n + diag(lam))^-1 Xtr'ytr/n; the validation loss of w(lam) is differentiated by
``jax.grad`` in float64 and compared with ``Program.grad`` (every program compiled with x64=True).
Exact methods (implicit with cg/neumann/direct, inner lbfgs/sgd) agree to 1e-5 relative; unrolling
is biased for a finite number of steps and converges as the steps grow, within its stated bias.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vrlang
from vrlang.estimators import bilevel as B

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "ridge_hyper.vr"

N, M, D = 50, 40, 5
SCALE = np.array([1.0, 1.5, 0.7, 1.2, 0.5])

HEADER = """
data Xtr: real[n, d]
data ytr: real[n]
data Xva: real[m, d]
data yva: real[m]
"""
VALIDATION = "minimize mean(j in 0..m: (dot(Xva[j], w) - yva[j])^2) / 2\n"
RIDGE = HEADER + """param lam: real in positive = 1.0
let w = argmin(v in real[d]: mean(i in 0..n: (dot(Xtr[i], v) - ytr[i])^2) / 2 + lam / 2 * sumsq(v))
""" + VALIDATION


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(3)
    wt = rng.normal(size=D)
    Xtr = rng.normal(size=(N, D)) * SCALE
    Xva = rng.normal(size=(M, D)) * SCALE
    # noisy labels, so that the best penalty is interior (about 0.53)
    return {"Xtr": Xtr, "ytr": Xtr @ wt + 3 * rng.normal(size=N), "Xva": Xva, "yva": Xva @ wt + 3 * rng.normal(size=M)}


def ridge_solution(d, lam):
    n, k = d["Xtr"].shape
    A = d["Xtr"].T @ d["Xtr"] / n + jnp.diag(jnp.broadcast_to(lam, (k,)))
    return jnp.linalg.solve(A, d["Xtr"].T @ d["ytr"] / n)


def validation_loss(d, lam):
    w = ridge_solution(d, lam)
    return jnp.mean((d["Xva"] @ w - d["yva"]) ** 2) / 2


def exact_grad(d, lam):
    with jax.enable_x64(True):
        return np.asarray(jax.grad(lambda l: validation_loss(d, l))(jnp.asarray(lam, jnp.float64)))


def rel_err(got, want):
    return float(np.linalg.norm(np.asarray(got) - want) / np.linalg.norm(want))


def hypergrad(src, data, estimator, params):
    prog = vrlang.compile(src, x64=True, estimators={"v": estimator})
    return prog, prog.grad(params, data)


# --------------------------------------------------------------------------------- exact methods


@pytest.mark.parametrize("estimator", [
    "implicit",  # the default: cg + lbfgs(steps = 100)
    "implicit(linsolve = cg, iters = 20, inner = sgd(lr = auto, steps = 500))",
    "implicit(linsolve = neumann, iters = 150, inner = lbfgs(steps = 50))",
    "implicit(linsolve = neumann, iters = 150, inner = sgd(steps = 500))",
    "implicit(linsolve = direct, inner = lbfgs(steps = 50))",
    "implicit(linsolve = direct, inner = sgd(lr = 0.3, steps = 500))",
])
def test_implicit_hypergradient_matches_closed_form(data, estimator):
    _, g = hypergrad(RIDGE, data, estimator, {"lam": 1.0})
    assert rel_err(g["lam"], exact_grad(data, 1.0)) < 1e-5


def test_unroll_converges_within_its_stated_bias(data):
    want = exact_grad(data, 1.0)
    A = data["Xtr"].T @ data["Xtr"] / N + np.eye(D)
    ev = np.linalg.eigvalsh(A)
    mu, L = ev[0], ev[-1]
    errs = []
    for k in (5, 20, 100):
        prog, g = hypergrad(RIDGE, data, f"unroll(steps = {k})", {"lam": 1.0})
        assert not prog.choices["v"].unbiased and "BIASED" in prog.choices["v"].note
        errs.append(rel_err(g["lam"], want))
        # the stated bias, O(k (1 - lr mu)^k) with lr = 1/L: (k + 1)(1 - mu/L)^(k - 1) (+ rounding)
        assert errs[-1] <= (k + 1) * (1 - mu / L) ** (k - 1) + 1e-10, (k, errs[-1])
    assert errs[0] > errs[1] > errs[2] or errs[2] < 1e-12
    assert errs[0] > 1e-3  # truncation at 5 steps is visible
    assert errs[2] < 1e-10


def test_per_feature_penalties(data):
    src = HEADER + """param lam: real[d] in positive = 1.0
let w = argmin(v in real[d]: mean(i in 0..n: (dot(Xtr[i], v) - ytr[i])^2) / 2 + dot(lam, v * v) / 2)
""" + VALIDATION
    lam = np.array([0.5, 1.0, 2.0, 0.1, 3.0])
    _, g = hypergrad(src, data, "implicit(linsolve = cg, inner = sgd(steps = 1000))", {"lam": lam})
    assert g["lam"].shape == (D,)
    assert rel_err(g["lam"], exact_grad(data, lam)) < 1e-5


def test_argmax_of_a_concave_inner_problem(data):
    src = HEADER + """param lam: real in positive = 1.0
let w = argmax(v in real[d] = 1: -mean(i in 0..n: (dot(Xtr[i], v) - ytr[i])^2) / 2 - lam / 2 * sumsq(v))
""" + VALIDATION
    _, g = hypergrad(src, data, "implicit(linsolve = direct, inner = sgd(steps = 500))", {"lam": 0.7})
    assert rel_err(g["lam"], exact_grad(data, 0.7)) < 1e-5


def test_min_value_function_has_the_danskin_gradient(data):
    src = HEADER + """param lam: real in positive = 1.0
minimize min(v in real[d]: mean(i in 0..n: (dot(Xtr[i], v) - ytr[i])^2) / 2 + lam / 2 * sumsq(v)) + lam^2 / 10
"""

    def value(lam):
        w = ridge_solution(data, lam)
        return jnp.mean((data["Xtr"] @ w - data["ytr"]) ** 2) / 2 + lam / 2 * jnp.sum(w * w) + lam ** 2 / 10

    prog, g = hypergrad(src, data, "implicit(inner = sgd(steps = 500))", {"lam": 0.8})
    with jax.enable_x64(True):
        want_v, want_g = jax.value_and_grad(value)(jnp.asarray(0.8, jnp.float64))
    assert "Danskin" in prog.choices["v"].note
    assert rel_err(g["lam"], np.asarray(want_g)) < 1e-6
    assert prog.objective({"lam": 0.8}, data) == pytest.approx(float(want_v), rel=1e-9)


def test_minimize_a_max_value_function():
    # max_y y.(b(a)) - |y|^2/2 = |b(a)|^2/2 with b = [a - 1, 2a - 1]: f(a) = |b|^2/2 + a^2, f'(a) = 7a - 3
    src = """param a: real = 0.5
minimize max(y in real[2]: dot(y, [a, 2 * a] - 1) - sumsq(y) / 2) + a^2
estimate y by implicit(inner = sgd(steps = 200))
solve by sgd(lr = 0.1, steps = 60)
"""
    prog = vrlang.compile(src, x64=True)
    assert prog.grad({"a": 0.5})["a"] == pytest.approx(0.5, rel=1e-8)
    res = prog.solve()
    assert res.params["a"] == pytest.approx(3 / 7, abs=1e-8)


# --------------------------------------------------------------------------------- solving for the penalty


def test_adam_tunes_the_penalty(data):
    """adam on lam (in softplus coordinates) reaches the closed-form best penalty."""
    prog = vrlang.compile(RIDGE, x64=True, solver="adam(lr = 0.05, steps = 100)",
                          estimators={"v": "implicit(linsolve = direct, inner = sgd(steps = 300))"})
    res = prog.solve(data)
    with jax.enable_x64(True):
        lams = np.exp(np.linspace(-5, 2, 4001))
        vals = np.asarray(jax.vmap(lambda l: validation_loss(data, l))(jnp.asarray(lams)))
        start = float(validation_loss(data, 1.0))
    best = lams[np.argmin(vals)]
    h = res.history["objective"]
    assert h[0] == pytest.approx(start, rel=1e-10)
    assert h[-1] < h[10] < h[0]  # adam oscillates a little around the optimum at the end
    assert h[-1] == pytest.approx(vals.min(), rel=1e-5)
    assert res.params["lam"] == pytest.approx(best, rel=0.05)


def test_example_ridge_hyper_hypergradient():
    """examples/ridge_hyper.vr as written (implicit, cg, lbfgs inner) against the closed form on its data."""
    z = np.load(ROOT / "examples" / "data" / "diabetes_split.npz")
    d = {k: z[k] for k in z.files}
    prog = vrlang.compile(EXAMPLE, x64=True)
    assert rel_err(prog.grad({"lam": 0.3})["lam"], exact_grad(d, 0.3)) < 1e-5


# --------------------------------------------------------------------------------- runtime without the DSL


def test_runtime_modules_without_the_dsl(data):
    with jax.enable_x64(True):
        X, y = jnp.asarray(data["Xtr"]), jnp.asarray(data["ytr"])

        def outer(lam, method):
            w = B.argmin(lambda v: jnp.mean((X @ v - y) ** 2) / 2 + lam / 2 * jnp.sum(v * v), jnp.zeros(D), method)
            return jnp.mean((data["Xva"] @ w - data["yva"]) ** 2) / 2

        method = B.Implicit(B.GradientDescent(steps=400, lr=0.3), B.Direct())
        g = jax.grad(outer)(jnp.asarray(1.3), method)
    assert rel_err(g, exact_grad(data, 1.3)) < 1e-6


# --------------------------------------------------------------------------------- explain and refusals


def test_explain_reports_method_bias_and_cost():
    prog = vrlang.compile(RIDGE, estimators={"v": "implicit(linsolve = cg, iters = 30, inner = sgd(steps = 50))"})
    text = prog.explain()
    assert "implicit differentiation" in text and "<= 30 HVPs" in text and "<= 50 gradients" in text
    assert "warm start" in text and "previous step's solution" in text
    cold = vrlang.compile(RIDGE, estimators={"v": "implicit(warm = false)"})
    assert "from its `= init` value" in cold.explain() and not cold.choices["v"].plan.stateful
    c = prog.choices["v"]
    assert c.unbiased and "exact up to the inner and linear-solve tolerances" in c.note
    text = vrlang.compile(RIDGE, estimators={"v": "unroll(steps = 7, lr = 0.1)"}).explain()
    assert "unbiased  : NO" in text and "truncated" in text and "7 copies of v" in text


@pytest.mark.parametrize("estimator, code, words", [
    ("penalty(sigma = 0)", "E302", "positive"),
    ("borep(period = 0)", "E302", "positive"),
    ("implicit(linsolve = foo)", "E302", "cg, neumann, direct"),
    ("implicit(inner = adam(lr = auto))", "E302", "must be a number"),
    ("implicit(inner = newton)", "E302", "sgd, lbfgs"),
    ("implicit(linsolve = direct, iters = 5)", "E302", "does not apply to linsolve = direct"),
    ("implicit(inner = sgd(steps = 10, memory = 3))", "E301", "memory"),
    ("unroll(steps = 0)", "E302", "positive"),
])
def test_refused_specs(estimator, code, words):
    with pytest.raises(vrlang.VrError) as info:
        vrlang.compile(RIDGE, estimators={"v": estimator})
    assert info.value.code == code and words in info.value.render(), info.value.render()


def test_stochastic_inner_problems_are_refused():
    with pytest.raises(vrlang.VrError) as info:
        vrlang.compile(RIDGE, estimators={"i": "sgd(batch = 8)"})
    assert info.value.code == "E391"
    assert "minibatched sum `i`" in str(info.value) and "argmin" in str(info.value)
    assert "estimate i by full" in info.value.render()
    # a sampled expectation in the inner objective (reparam, the default for Normal) too
    src = "param a: real = 0\nminimize sumsq(argmin(v in real[2]: E(z ~ Normal(a, 1): sumsq(v - z))))\n"
    with pytest.raises(vrlang.VrError) as info:
        vrlang.compile(src)
    assert info.value.code == "E391" and "sampled expectation `z`" in str(info.value)
    # minibatching the *outer* sum is fine (the inner problem stays exact)
    vrlang.compile(RIDGE, estimators={"j": "sgd(batch = 8)"})
