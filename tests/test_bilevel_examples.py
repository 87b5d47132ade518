"""The bilevel examples' hypergradients against hand-written JAX references.

Each example program (examples/hyperclean.vr, logreg_feature_penalty.vr, multitask_prior.vr)
is compiled as written and its gradient ``Program.grad`` is compared, on a subsample of its
bundled data, with implicit differentiation done by hand in float64: the inner problem solved
by Newton's method with the dense Hessian to machine precision, then
``dF/dx = d_x f - (d_x grad_v g)^T [grad^2_vv g]^-1 grad_v f`` with dense matrices.
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vrlang
from vrlang.estimators import bilevel as B

ROOT = Path(__file__).resolve().parent.parent
EX = ROOT / "examples"


def _load(name):
    with np.load(EX / "data" / name) as z:
        return {k: z[k] for k in z.files}


@functools.lru_cache(maxsize=None)
def _jitted(g):
    return tuple(jax.jit(fn) for fn in (jax.grad(g), jax.hessian(g), g))


def newton(g, v0, x, data=(), steps: int = 50):
    """argmin_v g(v, x, *data) by damped Newton with the dense Hessian (float64); returns v and the gradient norm."""
    grad, hess, val = _jitted(g)
    v = v0
    for _ in range(steps):
        gv = grad(v, x, *data)
        if float(jnp.linalg.norm(gv)) < 1e-13:
            break
        step = jnp.linalg.solve(hess(v, x, *data), gv)
        t, now = 1.0, float(val(v, x, *data))
        while float(val(v - t * step, x, *data)) > now and t > 1e-8:  # backtracking keeps it monotone
            t /= 2
        v = v - t * step
    return v, float(jnp.linalg.norm(grad(v, x, *data)))


@functools.partial(jax.jit, static_argnums=(0, 1))
def implicit_hypergradient(g, f, v, x, data_g=(), data_f=()):
    """d/dx f(v*(x), x) at the inner solution v (flat vectors), by the implicit function theorem."""
    H = jax.hessian(g)(v, x, *data_g)
    J = jax.jacobian(jax.grad(g), argnums=1)(v, x, *data_g)  # d/dx grad_v g: (dim v, dim x)
    fv, fx = jax.grad(f, argnums=(0, 1))(v, x, *data_f)
    return fx - J.T @ jnp.linalg.solve(H, fv)


def rel_err(got, want):
    return float(np.linalg.norm(np.asarray(got) - np.asarray(want)) / np.linalg.norm(want))


# ------------------------------------------------------------------------------------------ hyper-cleaning


@pytest.fixture(scope="module")
def hyperclean():
    z = _load("digits_hyperclean.npz")
    px = [0, 1, 2, 3, 4, 5, 6, 7, 19, 20, 27, 28, 35, 36, 43, 44]  # 16 of the 64 pixels: the top row and centre
    d = {"Xtr": z["Xtr"][:40, px], "ytr": z["ytr"][:40], "Xva": z["Xva"][:30, px], "yva": z["yva"][:30],
         "Xte": z["Xte"][:5, px], "yte": z["yte"][:5]}
    p = np.random.default_rng(0).dirichlet(np.ones(40))
    with jax.enable_x64(True):
        Ytr, Yva = jax.nn.one_hot(d["ytr"], 10), jax.nn.one_hot(d["yva"], 10)
        Xtr, Xva = jnp.asarray(d["Xtr"]), jnp.asarray(d["Xva"])

        def xent(V, X, Y):
            S = X @ V.reshape(10, -1).T
            return jax.nn.logsumexp(S, axis=1) - jnp.sum(Y * S, axis=1)

        def g(v, p):
            return jnp.sum(p * xent(v, Xtr, Ytr)) + 1e-3 / 2 * jnp.sum(v * v)

        def f(v, p):
            return jnp.mean(xent(v, Xva, Yva))

        v, gnorm = newton(g, jnp.zeros(10 * len(px)), jnp.asarray(p))
        assert gnorm < 1e-12
        want = np.asarray(implicit_hypergradient(g, f, v, jnp.asarray(p)))
    # corner pixels are zero on every image: the right-hand side of the linear solve has exact zeros
    assert np.sum(np.all(d["Xtr"] == 0, axis=0)) > 0
    return d, p, want


def test_hyperclean_hypergradient_float64(hyperclean):
    d, p, want = hyperclean
    # as written the example stops at 100 L-BFGS and 100 CG steps (relative error ~2e-5 here, condition
    # number ~1e3); with more steps the compiled hypergradient matches the reference to ~1e-10
    prog = vrlang.compile(EX / "hyperclean.vr", x64=True,
                          estimators={"V": "implicit(linsolve = cg, iters = 1000, inner = lbfgs(steps = 1000))"})
    assert rel_err(prog.grad({"p": p}, d)["p"], want) < 1e-8


def test_hyperclean_hypergradient_float32(hyperclean):
    """The program as `vrlang run` compiles it (float32): catches a linear solve that stops early or breaks down."""
    d, p, want = hyperclean
    prog = vrlang.compile(EX / "hyperclean.vr")
    got = prog.grad({"p": p}, d)["p"]
    assert np.all(np.isfinite(got))
    assert rel_err(got, want) < 2e-3  # 7e-5 measured (with lineax.CG: 0.80)


# ------------------------------------------------------------------------------------------ per-feature penalties


def test_feature_penalty_hypergradient():
    z = _load("breast_cancer_split.npz")
    d = {"Xtr": z["Xtr"][:30], "ytr": z["ytr"][:30], "Xva": z["Xva"][:40], "yva": z["yva"][:40],
         "Xte": z["Xte"][:5], "yte": z["yte"][:5]}
    lam = np.random.default_rng(1).uniform(0.01, 1.0, size=30)
    with jax.enable_x64(True):
        Xtr, ytr, Xva, yva = (jnp.asarray(d[k]) for k in ("Xtr", "ytr", "Xva", "yva"))

        def g(v, lam):
            return jnp.mean(jax.nn.softplus(-ytr * (Xtr @ v))) + jnp.dot(lam, v * v) / 2

        def f(v, lam):
            return jnp.mean(jax.nn.softplus(-yva * (Xva @ v)))

        v, gnorm = newton(g, jnp.zeros(30), jnp.asarray(lam))
        assert gnorm < 1e-12
        want = np.asarray(implicit_hypergradient(g, f, v, jnp.asarray(lam)))
    prog = vrlang.compile(EX / "logreg_feature_penalty.vr", x64=True)
    assert rel_err(prog.grad({"lam": lam}, d)["lam"], want) < 1e-6


# ------------------------------------------------------------------------------------------ multi-block


def test_multitask_prior_hypergradient():
    """argmin inside the mean over blocks: the mean of the blocks' implicit hypergradients (w0 and lam)."""
    z = _load("breast_cancer_shards.npz")
    T, n, m = 3, 8, 10
    d = {"Xtr": z["Xtr"][:T, :n], "ytr": z["ytr"][:T, :n], "Xva": z["Xva"][:T, :m], "yva": z["yva"][:T, :m]}
    w0 = np.random.default_rng(2).normal(size=30) * 0.3
    lam = 0.4
    with jax.enable_x64(True):
        x = jnp.concatenate([jnp.asarray(w0), jnp.asarray([lam])])

        def g(v, x, Xtr, ytr):
            return jnp.mean(jax.nn.softplus(-ytr * (Xtr @ v))) + x[30] / 2 * jnp.sum((v - x[:30]) ** 2)

        def f(v, x, Xva, yva):
            return jnp.mean(jax.nn.softplus(-yva * (Xva @ v)))

        total = jnp.zeros(31)
        for t in range(T):
            tr, va = (d["Xtr"][t], d["ytr"][t]), (d["Xva"][t], d["yva"][t])
            v, gnorm = newton(g, jnp.zeros(30), x, tr)
            assert gnorm < 1e-12
            total = total + implicit_hypergradient(g, f, v, x, tr, va) / T
        want = np.asarray(total)
    prog = vrlang.compile(EX / "multitask_prior.vr", x64=True)
    got = prog.grad({"w0": w0, "lam": lam}, d)
    assert rel_err(np.concatenate([got["w0"], np.atleast_1d(got["lam"])]), want) < 1e-6


# ------------------------------------------------------------------------------------------ the CG fix


def test_cg_with_zero_rhs_entries_and_small_eigenvalues_float32():
    """Regression: a right-hand side with exact zeros and a float32 Hessian with eigenvalues down to 1e-3.

    (lineax.CG 0.1.1 stopped after one step here -- its per-coordinate test |r_i| <= rtol |b_i| is 0/0 --
    or returned NaN from its breakdown test.)
    """
    rng = np.random.default_rng(4)
    k, zeros = 60, 12
    Q, _ = np.linalg.qr(rng.normal(size=(k, k)))
    A = np.zeros((k + zeros, k + zeros))
    A[:k, :k] = Q @ np.diag(np.logspace(-3, 0, k)) @ Q.T
    A[k:, k:] = 1e-3 * np.eye(zeros)  # decoupled coordinates, as zero pixels under an L2 penalty of 1e-3
    b = np.concatenate([rng.normal(size=k), np.zeros(zeros)])
    want = np.linalg.solve(A, b)
    A32, b32 = jnp.asarray(A, jnp.float32), jnp.asarray(b, jnp.float32)
    got = np.asarray(jax.jit(lambda b: B.CG(iters=500)(lambda u: A32 @ u, b))(b32))
    assert np.all(np.isfinite(got))
    assert rel_err(got, want) < 1e-3  # condition number 1e3 in float32: 2e-5 measured (lineax.CG: 0.99)
    # and its derivative (the transposed solve reuses it): d/db of sum(H^-1 b) = H^-1 1
    gb = np.asarray(jax.grad(lambda b: jnp.sum(B.CG(iters=500)(lambda u: A32 @ u, b)))(b32))
    assert rel_err(gb, np.linalg.solve(A, np.ones(k + zeros))) < 1e-2
