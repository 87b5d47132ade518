"""``implicit(inner = svrg(steps, batch, lr, epoch))``: SVRG on the inner finite sum, implicit hypergradient.

Reference: the ridge closed form of tests/test_bilevel.py, w(lam) = (Xtr'Xtr/n + lam I)^-1 Xtr'ytr/n,
differentiated by ``jax.grad`` in float64.  The inner solution is approximate (a fixed number of SVRG
steps on minibatches of 8 of the n = 50 rows, snapshot every 10 steps, lr = auto), so the hypergradient
error is that of the inner solution.  Measured relative errors of ``Program.grad`` (float64, this data,
the fixed exact-evaluation key): 10 steps 0.80, 20 steps 3.2e-2, 40 steps 7.1e-3, 80 steps 3.2e-6,
160 steps 9.3e-11; the bounds asserted below are a few times larger.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vrlang
from vrlang.estimators.inner_finite_sum import InnerSVRG
from test_bilevel import RIDGE, data, exact_grad, rel_err, ridge_solution, validation_loss  # noqa: F401


def svrg(steps, **kw):
    extra = "".join(f", {k} = {v}" for k, v in kw.items())
    return f"implicit(inner = svrg(steps = {steps}, batch = 8{extra}))"


def test_ridge_hypergradient_matches_closed_form_and_improves_with_steps(data):
    want = exact_grad(data, 1.0)
    errs = {}
    for steps in (10, 40, 80, 160):
        prog = vrlang.compile(RIDGE, x64=True, estimators={"v": svrg(steps)})
        g = prog.grad({"lam": 1.0}, data)["lam"]
        assert prog.grad({"lam": 1.0}, data)["lam"] == g  # exact evaluations draw with a fixed key
        errs[steps] = rel_err(g, want)
    e = [errs[s] for s in sorted(errs)]
    assert all(a > b for a, b in zip(e, e[1:])), errs  # measured 0.80, 7.1e-3, 3.2e-6, 9.3e-11
    assert errs[40] < 3e-2 and errs[80] < 2e-5 and errs[160] < 5e-10, errs


def test_inner_svrg_solver_against_a_hand_written_minibatch_objective():
    """The solver alone, on ridge written by hand in JAX: fn(v, t) the mean over the minibatch of draw t."""
    rng = np.random.default_rng(0)
    X, y, lam = jnp.asarray(rng.normal(size=(40, 4))), jnp.asarray(rng.normal(size=40)), 0.5

    def fn(v, t=None):
        if t is None:
            r = X @ v - y
        else:
            idx = jax.random.randint(jax.random.fold_in(jax.random.PRNGKey(7), t), (8,), 0, 40)
            r = X[idx] @ v - y[idx]
        return jnp.mean(r ** 2) / 2 + lam / 2 * jnp.sum(v ** 2)

    with jax.enable_x64(True):
        X, y = X.astype(jnp.float64), y.astype(jnp.float64)
        star = jnp.linalg.solve(X.T @ X / 40 + lam * jnp.eye(4), X.T @ y / 40)
        x0 = jnp.zeros(4, jnp.float64)
        def err(solver):
            return float(jnp.linalg.norm(jax.jit(lambda x: solver.minimize(fn, x))(x0) - star) / jnp.linalg.norm(star))

        errs = [err(InnerSVRG(k, 8, None, 10)) for k in (20, 60, 120)]
        drift = err(InnerSVRG(120, 8, None, 10**6))  # one snapshot, at x0: its correction keeps its variance
    assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-8, errs  # linear convergence of SVRG
    assert drift > 100 * errs[2], (drift, errs)  # a stale snapshot does not converge to v*


# the end-to-end solve: tests/test_inner_solvers.py (svrg, saga, lsvrg)


def test_explain_describes_the_inner_svrg():
    prog = vrlang.compile(RIDGE, estimators={"v": "implicit(inner = svrg(steps = 30, batch = 4, epoch = 6))"})
    text = prog.explain()
    assert "SVRG" in text and "minibatches of 4" in text and "every 6 steps" in text
    assert "60 minibatch gradients (batch 4) + 5 full gradients" in text
    assert "unbiased  : NO" in text and "inexact inner solution" in text
    assert prog.choices["v"].plan.inner == InnerSVRG(30, 4, None, 6)


@pytest.mark.parametrize("estimator, estimators, code, words", [
    ("penalty(inner = svrg(steps = 10))", {}, "E391", "available with `implicit` only"),
    ("borep(inner = svrg(steps = 10))", {}, "E391", "available with `implicit` only"),
    ("implicit(inner = svrg(steps = 10, memory = 3))", {}, "E301", "memory"),
    ("implicit(inner = svrg(batch = 0))", {}, "E302", "positive"),
    ("implicit(linsolve = neumann, inner = svrg(steps = 10))", {"i": "sgd(batch = 5)"}, "E391",
     "estimated by full"),
])
def test_refusals(estimator, estimators, code, words):
    with pytest.raises(vrlang.VrError) as info:
        vrlang.compile(RIDGE, estimators={"v": estimator, **estimators})
    assert info.value.code == code and words in info.value.render(), info.value.render()
