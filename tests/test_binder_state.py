"""Binder state: warm-started inner solves and blockwise (multi-block) bilevel problems.

Multi-task ridge: task t has its own training split and ridge solution
w_t(lam) = (Xtr_t' Xtr_t / m + lam I)^-1 Xtr_t' ytr_t / m; the objective is the mean over
tasks of the validation loss of w_t(lam).  The closed form, differentiated by ``jax.grad`` in
float64, is the reference.  Blocks are sampled (``estimate t by sgd(batch = 2)``), each
block's inner variable is kept as state and warm-starts its next solve.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vrlang

SRC = """
data Xtr: real[T, m, d]
data ytr: real[T, m]
data Xva: real[T, k, d]
data yva: real[T, k]
param lam: real in positive = 1.0
def val(A: real[k, d], b: real[k], w: real[d]) = mean((A @ w - b)^2) / 2
minimize mean(t in 0..T: val(Xva[t], yva[t],
                             argmin(v in real[d]: mean((Xtr[t] @ v - ytr[t])^2) / 2 + lam / 2 * sumsq(v))))
estimate t by sgd(batch = 2)
"""
T, M, K, D = 6, 30, 20, 5


def multitask_data():
    """T tasks of ridge regression, each with its own true weights (seed 0)."""
    rng = np.random.default_rng(0)
    W = rng.normal(size=(T, D))
    Xtr, Xva = rng.normal(size=(T, M, D)), rng.normal(size=(T, K, D))
    return {"Xtr": Xtr, "ytr": np.einsum("tmd,td->tm", Xtr, W) + 2 * rng.normal(size=(T, M)),
            "Xva": Xva, "yva": np.einsum("tmd,td->tm", Xva, W) + 2 * rng.normal(size=(T, K))}


@pytest.fixture(scope="module")
def data():
    return multitask_data()


def solutions(d, lam):
    A = jnp.einsum("tmi,tmj->tij", d["Xtr"], d["Xtr"]) / M + lam * jnp.eye(D)
    return jnp.linalg.solve(A, jnp.einsum("tmi,tm->ti", d["Xtr"], d["ytr"])[..., None] / M)[..., 0]


def per_task_loss(d, lam):
    w = solutions(d, lam)
    return jnp.mean((jnp.einsum("tki,ti->tk", d["Xva"], w) - d["yva"]) ** 2, axis=1) / 2


def test_multiblock_hypergradient_matches_closed_form(data):
    with jax.enable_x64(True):
        d = {k: jnp.asarray(v) for k, v in data.items()}
        exact = float(jax.grad(lambda l: jnp.mean(per_task_loss(d, l)))(0.7))
    prog = vrlang.compile(SRC, x64=True)
    g = prog.grad({"lam": 0.7}, data)["lam"]
    assert abs(g - exact) <= 1e-6 * abs(exact)


def test_blockwise_estimate_is_the_sampled_blocks_hypergradient_and_unbiased(data):
    """Formula test per draw: with the state at the exact solutions, an estimate is the mean of
    the exact hypergradients of the tasks its minibatch drew (indices reproduced from the key, as
    the sum draws them); the state moves only in the rows of those tasks.  Then a z-test of the
    mean over draws against the exact gradient."""
    from vrlang.backend.lower import binder_salt

    prog = vrlang.compile(SRC, x64=True)
    est = prog.gradient_estimator(data)
    state = est.init({"lam": 0.7})
    with jax.enable_x64(True):
        d = {k: jnp.asarray(v) for k, v in data.items()}
        np.testing.assert_allclose(np.asarray(state["v"]), np.asarray(solutions(d, 0.7)), rtol=1e-6, atol=1e-8)
        task_grads = np.asarray(jax.jacobian(lambda l: per_task_loss(d, l))(0.7))  # d loss_t / d lam
        exact = task_grads.mean()
        module, p = est.module, {"lam": jnp.asarray(0.7)}
        keys = jax.random.split(jax.random.PRNGKey(7), 1000)
        start = {"v": jnp.zeros_like(state["v"])}  # from zero, the drawn rows visibly move
        grads, states = jax.jit(jax.vmap(lambda k: module.estimate(p, start, k)))(keys)
        drawn = np.asarray(jax.vmap(lambda k: jax.random.randint(
            jax.random.fold_in(k, binder_salt("t")), (2,), 0, T, dtype=jnp.int32))(keys))
    g = np.asarray(grads["lam"])
    np.testing.assert_allclose(g, task_grads[drawn].mean(axis=1), rtol=1e-6, atol=1e-9)
    moved = np.any(np.abs(np.asarray(states["v"])) > 0, axis=-1)
    want = np.zeros_like(moved)
    want[np.arange(len(keys))[:, None], drawn] = True
    assert (moved == want).all()
    np.testing.assert_allclose(np.asarray(states["v"])[want], np.asarray(state["v"])[np.nonzero(want)[1]],
                               rtol=1e-5, atol=1e-7)
    z = (g.mean() - exact) / (g.std(ddof=1) / np.sqrt(len(g)))
    assert abs(z) < 4, z
    # power: the estimate without the n/b reweighting (a sum of the drawn tasks) would fail
    assert abs(2 * g.mean() - exact) / (2 * g.std(ddof=1) / np.sqrt(len(g))) > 4


def test_warm_start_lets_a_tiny_inner_budget_reach_the_optimum(data):
    """Three inner gradient steps per outer step: warm-started, the iterates track each block's
    solution and adam reaches the bilevel optimum; cold (warm = false), the truncated inner
    solves are far from the solution and the outer iterate goes elsewhere."""
    lams = np.geomspace(0.01, 1.0, 400)
    with jax.enable_x64(True):
        d = {k: jnp.asarray(v) for k, v in data.items()}
        best = lams[np.argmin([float(jnp.mean(per_task_loss(d, l))) for l in lams])]
    out = {}
    for warm in ("true", "false"):
        prog = vrlang.compile(SRC, estimators={"t": "full", "v": f"implicit(warm = {warm}, inner = sgd(steps = 3, lr = 0.3))"},
                              solver="adam(lr = 0.05, steps = 400)", x64=True)
        out[warm] = float(prog.solve(data, key=1).params["lam"])
    assert abs(out["true"] - best) < 0.1 * best, (out, best)
    assert abs(out["false"] - best) > 0.5 * best, (out, best)
