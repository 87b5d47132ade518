"""`Program.solve` (LANGUAGE.md §5-6): compilation caching, stopping rules, NaN safety,
maximisation, reports, bookkeeping of the history, precision, and the errors it raises."""

from __future__ import annotations

import json
import math
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import expit

import vrlang
from vrlang.solvers import loop

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

LOGREG = """
data X: real[n, d]
data y: real[n]
const lam: real = 1e-3
param w: real[d] = 0
minimize mean(i in 0..n: softplus(-y[i] * dot(X[i], w))) + lam / 2 * sumsq(w)
report acc = mean(j in 0..n: where(y[j] * dot(X[j], w) > 0, 1, 0))
report mean_margin = mean(k in 0..n: y[k] * dot(X[k], w))
"""


def _data(n, d=5, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = np.where(X @ np.arange(1.0, d + 1) + rng.normal(size=n) > 0, 1.0, -1.0)
    return {"X": X, "y": y}


def _f(w, X, y, lam):
    return np.mean(np.logaddexp(0.0, -y * (X @ w))) + 0.5 * lam * (w @ w)


def _g(w, X, y, lam):
    return X.T @ (-y * expit(-y * (X @ w))) / len(y) + lam * w


def _gd(X, y, lam, lr, steps):
    """Plain gradient descent in float64 numpy (what sgd with the `full` estimator does)."""
    w = np.zeros(X.shape[1])
    for _ in range(steps):
        w = w - lr * _g(w, X, y, lam)
    return w


D200 = _data(200)


@pytest.fixture(scope="module")
def full_prog():
    """Logistic regression, every sum exact, float32."""
    return vrlang.compile(LOGREG, solver="sgd(lr = 0.1, epochs = 5)")


# --------------------------------------------------------------- (a) no recompilation


def test_new_consts_and_lr_do_not_recompile(full_prog):
    prog = full_prog
    X, y = D200["X"], D200["y"]
    t0 = loop.TRACE_COUNT[0]
    r1 = prog.solve(D200, solver="sgd(lr = 0.1, epochs = 5)")
    assert loop.TRACE_COUNT[0] - t0 <= 1
    traced, interp = loop.TRACE_COUNT[0], prog.trace_counter[0]
    r2 = prog.solve(D200, consts={"lam": 0.5}, solver="sgd(lr = 0.1, epochs = 5)")
    r3 = prog.solve(D200, solver="sgd(lr = 0.2, epochs = 5)")
    r4 = prog.solve(D200, consts={"lam": 0.5}, solver="sgd(lr = 0.2, epochs = 5)")
    assert loop.TRACE_COUNT[0] == traced, "a new const or learning rate recompiled the solve"
    assert prog.trace_counter[0] == interp, "a new const or learning rate re-traced the objective"
    # ... and the values did take effect: each solve is 5 steps of gradient descent with its lam and lr
    for r, lam, lr in ((r1, 1e-3, 0.1), (r2, 0.5, 0.1), (r3, 1e-3, 0.2), (r4, 0.5, 0.2)):
        w = _gd(X, y, lam, lr, 5)
        np.testing.assert_allclose(r.params["w"], w, rtol=1e-4, atol=1e-6)
        assert r.objective == pytest.approx(_f(w, X, y, lam), rel=1e-5)
        assert r.info["lr"] == lr
    ws = [r.params["w"] for r in (r1, r2, r3, r4)]
    assert all(np.max(np.abs(a - b)) > 1e-3 for i, a in enumerate(ws) for b in ws[i + 1:])
    # the program's own consts are untouched by a per-solve override
    assert float(prog.consts["lam"]) == 1e-3


def test_lr_auto_is_recomputed_without_recompiling(full_prog):
    from vrlang import program

    r1 = full_prog.solve(D200, solver="sgd(lr = auto, epochs = 2)")
    traced, auto = loop.TRACE_COUNT[0], program._AUTO_TRACES[0]
    r2 = full_prog.solve(D200, consts={"lam": 2.0}, solver="sgd(lr = auto, epochs = 2)")
    assert (loop.TRACE_COUNT[0], program._AUTO_TRACES[0]) == (traced, auto)
    # lr = 1/L with L a power-iteration estimate of the top eigenvalue of the Hessian at w = 0,
    # X^T X / (4 n) + lam I: the new lam was used.  (The estimate lies in the spectrum; it is not
    # asserted equal to the top eigenvalue: on this data the fixed start vector of the power
    # iteration is nearly orthogonal to the top eigenvector, see the report.)
    X = D200["X"]
    for r, lam in ((r1, 1e-3), (r2, 2.0)):
        eig = np.linalg.eigvalsh(X.T @ X / (4 * len(X))) + lam
        assert eig[0] * (1 - 1e-5) <= 1.0 / r.info["lr"] <= eig[-1] * (1 + 1e-5)
        assert "lr_auto" in r.info
    assert r2.info["lr"] < 0.5 * r1.info["lr"]


def test_same_shape_new_data_does_not_recompile(full_prog):
    prog = full_prog
    prog.solve(D200, solver="sgd(lr = 0.1, epochs = 5)")
    traced = loop.TRACE_COUNT[0]
    other = _data(200, seed=1)
    r = prog.solve(other, solver="sgd(lr = 0.1, epochs = 5)")
    assert loop.TRACE_COUNT[0] == traced
    np.testing.assert_allclose(r.params["w"], _gd(other["X"], other["y"], 1e-3, 0.1, 5), rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------- (b) nothing unrolled over n


def _count_eqns(jaxpr) -> int:
    """Equations of a jaxpr, recursively through every sub-jaxpr (pjit, while, cond, custom_jvp...)."""
    total = 0
    for eqn in jaxpr.eqns:
        total += 1
        for v in eqn.params.values():
            for s in v if isinstance(v, (tuple, list)) else (v,):
                if isinstance(s, jax.extend.core.ClosedJaxpr):
                    total += _count_eqns(s.jaxpr)
                elif isinstance(s, jax.extend.core.Jaxpr):
                    total += _count_eqns(s)
    return total


def test_compile_size_does_not_grow_with_n(monkeypatch):
    prog = vrlang.compile(LOGREG, estimators={"i": "sgd(batch = 500)"}, solver="sgd(lr = 0.1, epochs = 1)")
    real_solve = loop._solve
    calls = []

    def spy(*args):
        calls.append(args)
        return real_solve(*args)

    monkeypatch.setattr(loop, "_solve", spy)
    sizes = {}
    for n in (1_000, 100_000):
        data = _data(n)
        t0, i0 = loop.TRACE_COUNT[0], prog.trace_counter[0]
        res = prog.solve(data)
        assert res.status == "max_steps" and res.steps == math.ceil(n / 500)
        traces, interp = loop.TRACE_COUNT[0] - t0, prog.trace_counter[0] - i0
        _, fns, jdata, jconsts = prog._bind(data)
        p = {"w": jnp.zeros(5)}
        exact = jax.make_jaxpr(lambda p, d, c: jax.grad(fns["objective"])(p, d, c, None))(p, jdata, jconsts)
        sampled = jax.make_jaxpr(lambda p, d, c, k: jax.grad(fns["objective"])(p, d, c, k))(
            p, jdata, jconsts, jax.random.PRNGKey(0))
        whole = eqx.filter_make_jaxpr(real_solve)(*calls[-1])[0]
        sizes[n] = (traces, interp, _count_eqns(exact.jaxpr), _count_eqns(sampled.jaxpr), _count_eqns(whole.jaxpr))
    small, large = sizes[1_000], sizes[100_000]
    assert small[0] == large[0] == 1  # one trace of the solve per data shape
    assert small == large, f"traced program grows with n: {sizes}"
    assert large[2] < 500 and large[4] < 5_000  # and it is small: O(program), not O(n)


# --------------------------------------------------------------- (c) NaN / inf


def test_nan_stops_with_last_good_params_full():
    # w <- w - 1/w from w = 10 decreases until a step jumps below 0, where log(w) is NaN
    prog = vrlang.compile("param w: real = 10\nminimize log(w)\nsolve by sgd(lr = 1, epochs = 1000)\n", x64=True)
    res = prog.solve()
    assert res.status == "diverged"
    assert "NaN" in res.message and "last good" in res.message
    w, good = 10.0, [10.0]
    while w - 1.0 / w > 0:
        w -= 1.0 / w
        good.append(w)
    assert 10 < len(good) < 1000  # several good epochs, then the bad one
    assert np.all(np.isfinite(res.params["w"]))
    assert float(res.params["w"]) == pytest.approx(good[-1], rel=1e-9)
    h = res.history
    assert len(h["objective"]) == len(good)  # epoch 0 .. last good epoch, the bad one is not recorded
    assert all(np.all(np.isfinite(v)) for v in h.values())
    np.testing.assert_allclose(h["objective"], np.log(good), rtol=1e-9)
    assert h["objective"][-1] == pytest.approx(prog.objective(res.params), rel=1e-12)
    json.dumps(res.to_dict(), allow_nan=False)


@pytest.mark.parametrize("body", ["a[i] * sqrt(w)", "a[i] * log(w)"])
def test_nan_inside_an_epoch_rolls_back(body):
    # minibatch sgd: the iterate turns negative in the middle of an epoch; sqrt's gradient is then NaN
    # (the step is refused), log's is finite (the epoch ends with a NaN objective and is rolled back)
    src = (f"data a: real[n]\nparam w: real = 10\nminimize mean(i in 0..n: {body})\n"
           "estimate i by sgd(batch = 1)\nsolve by sgd(lr = 1, epochs = 1000)\n")
    prog = vrlang.compile(src)
    data = {"a": np.linspace(0.5, 1.5, 20)}
    res = prog.solve(data, key=3)
    assert res.status == "diverged" and res.message
    assert np.all(np.isfinite(res.params["w"])) and float(res.params["w"]) > 0
    h = res.history
    assert len(h["objective"]) >= 2 and all(np.all(np.isfinite(v)) for v in h.values())
    assert h["objective"][-1] == pytest.approx(prog.objective(res.params, data), rel=1e-6)
    assert len(h["objective"]) == res.epochs  # the bad epoch is not recorded
    if "sqrt" in body:
        assert res.steps < res.epochs * 20  # the NaN gradient stopped the last epoch early
    else:
        assert res.steps == res.epochs * 20  # the whole bad epoch ran, then was rolled back


# --------------------------------------------------------------- (d) stopping rules


def test_epochs_rule(full_prog):
    res = full_prog.solve(D200, solver="sgd(lr = 0.1, epochs = 7)")
    assert res.status == "max_steps" and res.epochs == 7 and res.steps == 7
    assert len(res.history["objective"]) == 8
    np.testing.assert_array_equal(res.history["epoch"], np.arange(8))
    assert all(len(v) == 8 for v in res.history.values())


@pytest.fixture(scope="module")
def sgd10_prog():
    """Logistic regression, minibatches of 10 (20 steps per epoch on D200)."""
    return vrlang.compile(LOGREG, estimators={"i": "sgd(batch = 10)"}, solver="sgd(lr = 0.1, steps = 25)")


def test_steps_rule_with_minibatches(sgd10_prog):
    prog = sgd10_prog
    res = prog.solve(D200)  # 20 steps per epoch: 25 steps end inside the second epoch
    assert res.status == "max_steps" and res.steps == 25 and res.epochs == 2
    assert len(res.history["objective"]) == 3
    res = prog.solve(D200, solver="sgd(lr = 0.1, steps = 40)")
    assert res.steps == 40 and res.epochs == 2
    # several rules: the first reached stops
    res = prog.solve(D200, solver="sgd(lr = 0.1, epochs = 1, steps = 35)")
    assert res.steps == 20 and res.epochs == 1
    res = prog.solve(D200, solver="sgd(lr = 0.1, epochs = 5, steps = 35)")
    assert res.steps == 35 and res.epochs == 2


def test_tol_rule(full_prog):
    res = full_prog.solve(D200, solver="sgd(lr = 1, epochs = 100000, tol = 1e-3)")  # same trace as the time test
    gn = res.history["grad_norm"]
    assert res.status == "converged"
    assert "1e-3" in res.message or "0.001" in res.message
    assert gn[-1] <= 1e-3 < gn[-2]  # stops at the first epoch below tol
    assert res.epochs == len(gn) - 1 < 100000


def test_time_rule(full_prog):
    res = full_prog.solve(D200, solver="sgd(lr = 0.01, epochs = 100000, time = 0.5)")
    t = res.history["time"]
    assert res.status == "time_limit"
    assert t[-1] >= 0.5 > t[-2]
    assert t[-1] < 5.0  # the clock excludes compilation
    assert 1 < res.epochs < 100000
    assert np.all(np.diff(t) >= 0)


# --------------------------------------------------------------- (e) maximize


def test_maximize_concave_quadratic():
    prog = vrlang.compile("param w: real[2] = 0\nmaximize 4 - sumsq(w - [3, -1])\nsolve by sgd(lr = 0.1, epochs = 60)\n",
                          x64=True)
    res = prog.solve()
    # w_k - w* = 0.8^k (w_0 - w*): after 60 steps |w - w*| ~ 1.5e-6 |w_0 - w*|
    np.testing.assert_allclose(res.params["w"], [3.0, -1.0], atol=1e-5)
    obj = res.history["objective"]
    assert obj[0] == pytest.approx(4 - 10) and res.objective == pytest.approx(4.0, abs=1e-9)
    np.testing.assert_allclose(obj, 4 - 10 * 0.64 ** np.arange(61), rtol=1e-9, atol=1e-12)
    assert np.all(np.diff(obj) > 0)  # ascent
    assert res.objective == pytest.approx(prog.objective(res.params), rel=1e-12)
    # the tol rule on the (ascent) gradient: met at the start -> stops at once, no step taken
    res = prog.solve(params={"w": [3.0, -1.0]}, solver="sgd(lr = 0.1, epochs = 60, tol = 1e-6)")
    assert res.status == "converged" and res.epochs == 0 and res.steps == 0
    assert len(res.history["objective"]) == 1 and res.objective == 4.0


def test_maximize_log_likelihood_is_descent_on_the_loss():
    """Gradient ascent on -f has exactly the iterates of gradient descent on f."""
    X, y = D200["X"], D200["y"]
    src = ("data X: real[n, d]\ndata y: real[n]\nconst lam: real = 0.01\nparam w: real[d] = 0\n"
           "maximize -mean(i in 0..n: softplus(-y[i] * dot(X[i], w))) - lam / 2 * sumsq(w)\n")
    res = vrlang.compile(src, x64=True, solver="sgd(lr = 0.5, epochs = 8)").solve(D200)
    w = _gd(X, y, 0.01, 0.5, 8)
    np.testing.assert_allclose(res.params["w"], w, rtol=1e-12, atol=1e-15)
    assert res.objective == pytest.approx(-_f(w, X, y, 0.01), rel=1e-12)
    assert res.history["grad_norm"][-1] == pytest.approx(np.linalg.norm(_g(w, X, y, 0.01)), rel=1e-10)
    assert np.all(np.diff(res.history["objective"]) > 0)


# --------------------------------------------------------------- (f) reports, (g) grad_evals


def test_reports_match_numpy(full_prog):
    X, y = D200["X"], D200["y"]
    res = full_prog.solve(D200, solver="sgd(lr = 0.5, epochs = 4)")
    h = res.history
    assert {"acc", "mean_margin"} <= set(h)
    w = res.params["w"]
    assert h["acc"][-1] == pytest.approx(np.mean(y * (X @ w) > 0), abs=1e-6)
    assert h["mean_margin"][-1] == pytest.approx(np.mean(y * (X @ w)), rel=1e-5)
    assert h["acc"][0] == 0.0 and h["mean_margin"][0] == 0.0  # at w = 0 every margin is 0, not > 0
    assert h["objective"][-1] == pytest.approx(_f(w, X, y, 1e-3), rel=1e-5)
    assert h["grad_norm"][-1] == pytest.approx(np.linalg.norm(_g(w, X, y, 1e-3)), rel=1e-4)
    # each recorded epoch, recomputed from the gradient-descent iterates
    for e in range(5):
        we = _gd(X, y, 1e-3, 0.5, e)
        assert h["acc"][e] == pytest.approx(np.mean(y * (X @ we) > 0), abs=1e-6)
        assert h["objective"][e] == pytest.approx(_f(we, X, y, 1e-3), rel=1e-5)


def test_example_logreg_svrg_reports_and_grad_evals():
    """examples/logreg.vr as written (svrg(batch = 16), lr = auto): reports, objective and grad_evals."""
    prog = vrlang.compile(str(EXAMPLES / "logreg.vr"), x64=True, solver="sgd(lr = auto, epochs = 3)")
    res = prog.solve(key=1)
    with np.load(EXAMPLES / "data" / "breast_cancer.npz") as z:
        X, y = z["X"], z["y"]
    n, b = len(y), 16
    w = res.params["w"]
    assert res.history["accuracy"][-1] == pytest.approx(np.mean(y * (X @ w) > 0), abs=1e-12)
    assert res.history["accuracy"][-1] > 0.9
    assert res.objective == pytest.approx(_f(w, X, y, 1e-3), rel=1e-12)
    assert res.objective < _f(np.zeros(X.shape[1]), X, y, 1e-3)
    # svrg: per step 2 b component gradients (at w and at the snapshot) + n / m amortised for the
    # snapshot's full gradient, m = steps per epoch by default -> 2 b m + n per epoch
    m = math.ceil(n / b)
    ge = res.history["grad_evals"]
    np.testing.assert_allclose(ge, (2 * b * m + n) * np.arange(4), rtol=1e-12)
    assert res.steps == 3 * m


def test_grad_evals_full_is_n_per_epoch(full_prog):
    res = full_prog.solve(D200, solver="sgd(lr = 0.1, epochs = 6)")
    np.testing.assert_array_equal(res.history["grad_evals"], 200 * np.arange(7))


def test_grad_evals_minibatch(sgd10_prog):
    res = sgd10_prog.solve(D200, solver="sgd(lr = 0.05, epochs = 3)")
    ge = res.history["grad_evals"]
    np.testing.assert_array_equal(ge, 20 * 10 * np.arange(4))  # 20 steps of 10 per epoch
    assert ge[-1] == res.steps * 10
    res = sgd10_prog.solve(D200, solver="sgd(lr = 0.05, steps = 25)")
    np.testing.assert_array_equal(res.history["grad_evals"], [0, 200, 250])  # cumulative, partial last epoch


# --------------------------------------------------------------- (h) precision, (i) init, (j) JSON


def test_precision(full_prog):
    r32 = full_prog.solve(D200)
    assert r32.params["w"].dtype == np.float32 and r32.history["objective"].dtype == np.float32
    p64 = vrlang.compile(LOGREG, x64=True, solver="sgd(lr = 0.1, epochs = 5)")
    r64 = p64.solve(D200)
    assert r64.params["w"].dtype == np.float64 and r64.history["objective"].dtype == np.float64
    w = _gd(D200["X"], D200["y"], 1e-3, 0.1, 5)
    np.testing.assert_allclose(r64.params["w"], w, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(r32.params["w"], r64.params["w"], rtol=1e-4, atol=1e-6)


def test_params_override_initial_point(full_prog):
    X, y = D200["X"], D200["y"]
    w0 = np.linspace(-1, 1, 5)
    res = full_prog.solve(D200, params={"w": w0}, solver="sgd(lr = 0.1, epochs = 2)")
    assert res.history["objective"][0] == pytest.approx(_f(w0, X, y, 1e-3), rel=1e-5)
    w = w0
    for _ in range(2):
        w = w - 0.1 * _g(w, X, y, 1e-3)
    np.testing.assert_allclose(res.params["w"], w, rtol=1e-4, atol=1e-6)
    with pytest.raises(vrlang.VrError):
        full_prog.solve(D200, params={"v": w0})


def test_params_override_constrained():
    prog = vrlang.compile("param p: real[3] in simplex\nminimize sumsq(p - [0.7, 0.2, 0.1])\n"
                          "solve by sgd(lr = 0.5, epochs = 1)\n", x64=True)
    res = prog.solve(params={"p": [0.5, 0.3, 0.2]})
    assert res.history["objective"][0] == pytest.approx(0.04 + 0.01 + 0.01)
    assert res.params["p"].sum() == pytest.approx(1.0) and np.all(res.params["p"] > 0)


def test_to_dict_is_json(full_prog):
    res = full_prog.solve(D200, solver="sgd(lr = auto, epochs = 3)")
    d = json.loads(json.dumps(res.to_dict(), allow_nan=False))
    assert d["status"] == res.status == "max_steps"
    assert d["epochs"] == 3 and d["objective"] == pytest.approx(res.objective)
    assert d["params"]["w"] == pytest.approx(res.params["w"].tolist())
    assert set(d["history"]) >= {"objective", "grad_norm", "grad_evals", "time", "acc"}
    assert "lr_auto" in d["info"] and d["info"]["lr"] > 0


# --------------------------------------------------------------- (k) errors


def test_lbfgs_refuses_minibatch_estimators():
    prog = vrlang.compile(str(EXAMPLES / "logreg.vr"))  # estimate i by svrg(batch = 16)
    with pytest.raises(vrlang.VrEstimatorError) as e:
        prog.solve(solver="lbfgs(steps = 10)")
    assert "full" in str(e.value)
    sgd = vrlang.compile(LOGREG, estimators={"i": "sgd(batch = 4)"}, solver="lbfgs(steps = 10)")
    with pytest.raises(vrlang.VrEstimatorError):
        sgd.solve(D200)


def test_unknown_const_is_an_error(full_prog):
    with pytest.raises(vrlang.VrError) as e:
        full_prog.solve(D200, consts={"lambda": 0.1})
    assert "lambda" in str(e.value)
    with pytest.raises(vrlang.VrError):
        vrlang.compile(LOGREG, consts={"mu": 1.0})
    with pytest.raises(vrlang.VrError):
        full_prog.solve(D200, consts={"lam": [1.0, 2.0]})  # wrong shape


def test_missing_data_is_an_error(full_prog):
    with pytest.raises(vrlang.VrDataError) as e:
        full_prog.solve()
    assert "X" in str(e.value)
    with pytest.raises(vrlang.VrDataError):
        full_prog.solve({"X": D200["X"]})
    with pytest.raises(vrlang.VrDataError):
        full_prog.solve({"X": D200["X"], "y": D200["y"][:-1]})  # n disagrees
