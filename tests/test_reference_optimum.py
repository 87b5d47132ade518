"""The bundled examples reach the optimum of their objective, computed independently.

``examples/logreg.vr`` is solved with ``lbfgs`` (every sum exact) in float64 and compared
with scipy's L-BFGS-B on a hand-written numpy objective and gradient, and with
scikit-learn's ``LogisticRegression`` (same objective: ``C = 1/(n lam)``, no intercept).
``examples/ridge.vr`` is compared with the closed-form solution of the normal equations
(intercept ``b`` unpenalised).  The acceptance criterion is the relative suboptimality
``(f_vrlang - f*) / |f*| < 1e-6``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.optimize
from scipy.special import expit

import vrlang

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
LBFGS = "lbfgs(steps = 500, tol = 1e-9)"


# ------------------------------------------------------------------ logistic regression


def _logreg_data():
    with np.load(EXAMPLES / "data" / "breast_cancer.npz") as z:
        return np.asarray(z["X"], np.float64), np.asarray(z["y"], np.float64)


def _logreg_f(w, X, y, lam):
    """mean softplus(-y x.w) + lam/2 |w|^2 and its gradient (float64, numerically stable)."""
    m = -y * (X @ w)
    value = np.mean(np.logaddexp(0.0, m)) + 0.5 * lam * (w @ w)
    grad = X.T @ (-y * expit(m)) / len(y) + lam * w
    return value, grad


@pytest.fixture(scope="module")
def logreg():
    X, y = _logreg_data()
    lam = 1e-3
    prog = vrlang.compile(str(EXAMPLES / "logreg.vr"), x64=True, solver=LBFGS, estimators={"i": "full"})
    res = prog.solve(key=0)
    ref = scipy.optimize.minimize(_logreg_f, np.zeros(X.shape[1]), args=(X, y, lam), jac=True, method="L-BFGS-B",
                                  options={"gtol": 1e-13, "ftol": 1e-16, "maxiter": 20000, "maxcor": 30})
    return prog, res, ref, X, y, lam


def test_logreg_objective_is_the_documented_one(logreg):
    """vrlang's exact objective is the numpy one (so the comparison below is like for like)."""
    prog, _, ref, X, y, lam = logreg
    w = np.random.default_rng(0).normal(size=X.shape[1])
    f, g = _logreg_f(w, X, y, lam)
    assert prog.objective({"w": w}) == pytest.approx(f, rel=1e-13)
    np.testing.assert_allclose(prog.grad({"w": w})["w"], g, rtol=1e-10, atol=1e-13)
    assert prog.objective({"w": ref.x}) == pytest.approx(ref.fun, rel=1e-13)


def test_logreg_lbfgs_reaches_scipy_optimum(logreg):
    prog, res, ref, X, y, lam = logreg
    assert ref.success, ref.message
    f_star = ref.fun
    assert np.max(np.abs(ref.jac)) < 1e-6  # the reference is itself an optimum
    assert res.status == "converged", res.message
    assert res.params["w"].dtype == np.float64
    f_vr = _logreg_f(res.params["w"], X, y, lam)[0]  # evaluated independently of vrlang
    assert (f_vr - f_star) / abs(f_star) < 1e-6
    assert (res.objective - f_star) / abs(f_star) < 1e-6
    assert res.objective == pytest.approx(f_vr, rel=1e-12)
    assert res.history["grad_norm"][-1] <= 1e-9
    # strongly convex (lam > 0): a tiny gradient pins the minimiser, |w - w*| <= |g| / lam
    np.testing.assert_allclose(res.params["w"], ref.x, atol=1e-4)


def test_logreg_lbfgs_matches_sklearn(logreg):
    from sklearn.linear_model import LogisticRegression

    prog, res, ref, X, y, lam = logreg
    n = len(y)
    # sklearn: C * sum_i log(1 + exp(-y_i x_i.w)) + |w|^2 / 2 == C n * (our objective) when C = 1/(n lam)
    clf = LogisticRegression(C=1.0 / (n * lam), fit_intercept=False, tol=1e-12, max_iter=100_000)
    clf.fit(X, y)
    w_sk = clf.coef_.ravel()
    f_sk = _logreg_f(w_sk, X, y, lam)[0]
    f_star = min(f_sk, ref.fun)
    assert (res.objective - f_star) / abs(f_star) < 1e-6
    np.testing.assert_allclose(res.params["w"], w_sk, atol=1e-4)


# ------------------------------------------------------------------ ridge regression


def _ridge_data():
    with np.load(EXAMPLES / "data" / "diabetes.npz") as z:
        return np.asarray(z["X"], np.float64), np.asarray(z["y"], np.float64)


def _ridge_f(w, b, X, y, lam):
    r = X @ w + b - y
    return 0.5 * np.mean(r * r) + 0.5 * lam * (w @ w)


def _ridge_closed_form(X, y, lam):
    """argmin mean((Xw + b - y)^2)/2 + lam/2 |w|^2: (A^T A / n + diag(lam, .., lam, 0)) theta = A^T y / n."""
    n, d = X.shape
    A = np.hstack([X, np.ones((n, 1))])
    P = np.diag(np.r_[np.full(d, lam), 0.0])
    theta = np.linalg.solve(A.T @ A / n + P, A.T @ y / n)
    return theta[:d], theta[d]


@pytest.fixture(scope="module")
def ridge():
    X, y = _ridge_data()
    lam = 1e-2
    prog = vrlang.compile(str(EXAMPLES / "ridge.vr"), x64=True, solver=LBFGS)
    res = prog.solve(key=0)
    return prog, res, X, y, lam


def test_ridge_lbfgs_reaches_closed_form(ridge):
    prog, res, X, y, lam = ridge
    w_star, b_star = _ridge_closed_form(X, y, lam)
    f_star = _ridge_f(w_star, b_star, X, y, lam)
    assert prog.objective({"w": w_star, "b": b_star}) == pytest.approx(f_star, rel=1e-13)
    assert res.status == "converged", res.message
    assert res.params["w"].dtype == np.float64 and res.params["b"].shape == ()
    f_vr = _ridge_f(res.params["w"], float(res.params["b"]), X, y, lam)
    assert (f_vr - f_star) / abs(f_star) < 1e-6
    assert (res.objective - f_star) / abs(f_star) < 1e-6
    np.testing.assert_allclose(res.params["w"], w_star, atol=1e-6)
    assert float(res.params["b"]) == pytest.approx(b_star, abs=1e-6)


def test_ridge_report_r2(ridge):
    """The `report r2` line of ridge.vr equals an independent computation at the solution."""
    _, res, X, y, _ = ridge
    r = X @ res.params["w"] + res.params["b"] - y
    r2 = 1.0 - np.mean(r * r) / np.mean((y - y.mean()) ** 2)
    assert res.history["r2"][-1] == pytest.approx(r2, rel=1e-10)
    assert res.history["r2"][0] == pytest.approx(1.0 - np.mean(y * y) / np.var(y), abs=1e-12)  # w = 0, b = 0


def test_cli_acceptance_command_reaches_the_optimum(logreg, tmp_path):
    """The issue's acceptance command, as a user types it (float32, the file's own `estimate` statement):
    `vrlang run examples/logreg.vr --solve "lbfgs(steps = 500)"` -- lbfgs takes every sum exactly (W502)."""
    import json

    from vrlang.cli import main

    _, _, ref, X, y, lam = logreg
    out = tmp_path / "out"
    assert main(["run", str(EXAMPLES / "logreg.vr"), "--solve", "lbfgs(steps = 500)", "--out", str(out),
                 "--quiet"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["info"]["estimators"]["i"] == "full"
    with np.load(out / "params.npz") as z:
        w = np.asarray(z["w"], np.float64)
    f_vr = _logreg_f(w, X, y, lam)[0]  # the float32 solution evaluated in float64
    assert (f_vr - ref.fun) / abs(ref.fun) < 1e-6
